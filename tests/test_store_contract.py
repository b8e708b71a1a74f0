"""The `Store` contract, checked on the SQLite store and on the unit layer's MemoryStore.

The unit layer's controller tests are only worth what the MemoryStore is worth: these
checks run the same calls on both and expect the same answers (idempotent writes, the
last good spec kept, conflicts, suspension, the outbox, copies handed out, transactions
that land whole or not at all), so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.domain.model import Batch, BatchStatus, Item, Report
from reconciler.domain.states import BatchState, JobState
from reconciler.store.backends import local_db_path
from reconciler.store.base import (
    ConflictError,
    Delivery,
    Event,
    JobSpec,
    RecipientState,
    Store,
    SyncState,
)
from reconciler.store.local.sqlite import SqliteStore
from tests.unit.memory_store import MemoryStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(
        local_db_path(tmp_path))
    yield s
    s.close()


def spec(*ids: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"profile": "p", "depositor": {"name": "D", "email": "d@example.org"},
                            "manifest": {"items": [{"id": i, "url": f"http://h/{i}"}
                                                   for i in ids]}}
    body.update(extra)
    return body


def apply(store: Store, name: str, body: dict[str, Any] | None, rev: str = "r1",
          error: str = "") -> Batch:
    return store.apply_spec(name, body, source_path=f"batches/{name}.yaml", revision=rev,
                            committed_at=1000.0, error=error)


def stored(store: Store, name: str) -> Batch:
    b = store.get_batch(name)
    assert b is not None, f"no batch {name}"
    return b


def job(batch: str, item: str, attempt: int = 1, *, suspended: bool = False) -> JobSpec:
    return JobSpec(name=f"{batch}-{item}-{attempt}", batch=batch, item=item, attempt=attempt,
                   command=("true",), env={}, suspended=suspended)


def report(batch: str, round_: int, *, emailed: bool) -> Report:
    return Report(f"{batch}:{round_}", batch, "initial", 1000.0 + round_, "Ingest: OK", ("d@x",),
                  "body", (), {"a": "Completed"}, emailed, b"Subject: s\r\n\r\nbody")


def test_a_spec_is_versioned_by_generation_and_a_broken_one_keeps_the_last_good(
        store: Store) -> None:
    first = apply(store, "b", spec("a"))
    assert (first.generation, first.status.state, first.spec_error) == (1, BatchState.PENDING, "")
    writes = store.writes
    assert apply(store, "b", spec("a"), rev="r2").generation == 1  # same spec: same version
    assert store.writes == writes and stored(store, "b").source_revision == "r1"
    second = apply(store, "b", spec("a", priority=1), rev="r3")
    assert (second.generation, second.source_revision) == (2, "r3")
    assert second.spec is not None and second.spec.priority == 1
    broken = apply(store, "b", None, rev="r4", error="batches/b.yaml:1:1: broken")
    assert broken.generation == 2 and broken.spec is not None and broken.spec.priority == 1
    assert (broken.spec_error, broken.source_revision) == ("batches/b.yaml:1:1: broken", "r4")
    never = apply(store, "n", None, error="bad")
    assert never.spec is None and never.generation == 1


def test_a_batch_made_again_under_its_old_name_reads_its_new_spec(
        store: Store, tmp_path: Path) -> None:
    """Specs are read once per version: a batch removed and made again (generation 1
    again), or changed by another store of the same file, is read with its new spec."""
    def item_ids(batch: Batch) -> list[str]:
        assert batch.spec is not None and batch.spec.items is not None
        return [i.id for i in batch.spec.items]

    apply(store, "b", spec("a"))
    assert item_ids(stored(store, "b")) == item_ids(stored(store, "b")) == ["a"]
    store.remove_batch("b")
    again = apply(store, "b", spec("z"))
    assert again.generation == 1 and item_ids(again) == item_ids(stored(store, "b")) == ["z"]
    if isinstance(store, SqliteStore):  # another store of the file moves it on
        other = SqliteStore(local_db_path(tmp_path))
        try:
            apply(other, "b", spec("y"))
        finally:
            other.close()
        newest = stored(store, "b")
        assert (newest.generation, item_ids(newest)) == (2, ["y"])


def test_a_status_write_based_on_a_stale_read_is_a_conflict(store: Store) -> None:
    b = apply(store, "b", spec("a"))
    writes = store.writes
    store.update_status("b", b.status, dataclasses.replace(b.status))  # no change: no write
    assert store.writes == writes
    mine = dataclasses.replace(b.status, state=BatchState.PROCESSING, message="admitted")
    store.update_status("b", b.status, mine)
    assert store.writes == writes + 1
    theirs = dataclasses.replace(b.status, state=BatchState.HELD)
    with pytest.raises(ConflictError):
        store.update_status("b", b.status, theirs)  # based on what was there before mine
    now = store.get_batch("b")
    assert now is not None and now.status == mine
    assert store.count_batches() == {"Processing": 1}


def test_the_guard_is_the_status_as_read_though_another_store_wrote_since(
        tmp_path: Path) -> None:
    """SQLite keeps the text of the status it read or wrote last (so as not to encode it
    again): a write by another store of the file in between (another process) is still a
    conflict, and after its own write the store guards on what it wrote."""
    store = SqliteStore(local_db_path(tmp_path))
    other = SqliteStore(local_db_path(tmp_path))
    try:
        b = apply(store, "b", spec("a"))
        held = dataclasses.replace(b.status, state=BatchState.HELD)
        other.update_status("b", stored(other, "b").status, held)
        with pytest.raises(ConflictError):
            store.update_status("b", b.status, dataclasses.replace(b.status, message="x"))
        now = stored(store, "b")
        mine = dataclasses.replace(now.status, message="released")
        store.update_status("b", now.status, mine)
        later = dataclasses.replace(mine, message="released again")
        store.update_status("b", mine, later)  # guarded on the text it wrote
        with pytest.raises(ConflictError):
            store.update_status("b", now.status, later)  # older than its own last write
        assert stored(other, "b").status == later
    finally:
        store.close()
        other.close()


def test_a_status_text_is_kept_only_while_its_status_object_lives(tmp_path: Path) -> None:
    """What the SQLite store keeps for `update_status` lives and dies with the status
    objects it handed out: a full pass over thousands of settled batches keeps nothing
    once their statuses are dropped."""
    store = SqliteStore(local_db_path(tmp_path))
    try:
        for n in range(50):
            apply(store, f"b{n}", spec("a"))
        held = store.list_batches()
        assert len(store._stored_status) == 50
        first = held[0]
        name = first.name
        del held
        assert list(store._stored_status) == [name]  # the one still referenced
        mine = dataclasses.replace(first.status, message="x")
        store.update_status(name, first.status, mine)  # guarded on the kept text
        del first
        assert list(store._stored_status) == [name]  # now the text written for `mine`
        del mine
        assert store._stored_status == {}
    finally:
        store.close()


def test_items_are_recorded_once_filtered_and_paged(store: Store) -> None:
    apply(store, "b", spec("a", "b", "c"))
    items = [Item("a", "http://h/a", title="Map of Oakland"), Item("b", "http://h/b"),
             Item("c", "http://h/c")]
    store.set_items("b", items)
    store.set_items("b", items)  # again: nothing new
    assert [s.item.id for s in store.list_items("b")] == ["a", "b", "c"]
    assert [s.seq for s in store.list_items("b")] == [0, 1, 2]
    rows = store.list_items("b")
    rows[1].state, rows[1].attempts, rows[1].message = JobState.FAILED, 1, "digest mismatch"
    rows[0].state = JobState.COMPLETED  # changed, but not written back: not stored
    store.update_items("b", [rows[1]])
    assert store.count_items("b") == {"Pending": 2, "Failed": 1}
    assert [s.item.id for s in store.list_items("b", state="Failed")] == ["b"]
    assert store.list_items("b", state="Failed")[0].message == "digest mismatch"
    assert [s.item.id for s in store.list_items("b", offset=1, limit=1)] == ["b"]
    assert [s.item.id for s in store.list_items("b", query="OAKLAND")] == ["a"]
    assert store.total_items("b", state="Pending") == 2
    assert store.total_items("b", query="nothing like it") == 0


def test_several_jobs_at_once_count_one_already_there_as_made(store: Store) -> None:
    apply(store, "b", spec("a", "b", "c"))
    store.create_job(job("b", "a"))
    result = store.create_jobs([job("b", "a"), job("b", "b"), job("b", "c")])
    assert result.error is None
    assert result.made == {"b-a-1", "b-b-1", "b-c-1"}
    assert sorted(j.name for j in store.list_jobs("b")) == ["b-a-1", "b-b-1", "b-c-1"]
    assert store.create_jobs([]).made == frozenset()


def test_jobs_are_created_once_and_suspension_moves_only_unstarted_ones(store: Store) -> None:
    apply(store, "b", spec("a", "b", "c"))
    assert store.create_job(job("b", "a")) is True
    assert store.create_job(job("b", "a")) is False
    store.create_job(job("b", "b"))
    store.create_job(job("b", "c", suspended=True))
    assert {j.name: j.state for j in store.list_jobs("b")} == {
        "b-a-1": JobState.PENDING, "b-b-1": JobState.PENDING, "b-c-1": JobState.HELD}
    assert store.count_active_jobs() == 2
    store.set_suspended("b", True)
    assert {j.name: (j.state, j.suspended) for j in store.list_jobs("b")} == {
        "b-a-1": (JobState.HELD, True), "b-b-1": (JobState.HELD, True),
        "b-c-1": (JobState.HELD, True)}
    assert store.count_active_jobs() == 0
    store.set_suspended("b", False)
    assert {j.state for j in store.list_jobs("b")} == {JobState.PENDING}
    assert store.count_active_jobs() == 3
    store.delete_jobs("b")
    assert store.list_jobs() == [] and store.count_active_jobs() == 0


def test_reports_are_saved_once_and_only_emailed_ones_queue(store: Store) -> None:
    apply(store, "b", spec("a"))
    assert store.save_report(report("b", 1, emailed=True)) is True
    assert store.save_report(report("b", 1, emailed=True)) is False
    assert store.save_report(report("b", 2, emailed=False)) is True
    assert [r.id for r in store.list_reports("b")] == ["b:1", "b:2"]
    assert [e.report_id for e in store.pending_outbox(time.time())] == ["b:1"]
    deferred = RecipientState("jane@example.org", Delivery.DEFERRED, 0, "connection refused",
                              1, time.time())
    store.record_delivery("b:1", [deferred], error="connection refused",
                          retry_at=time.time() + 60)
    assert store.pending_outbox(time.time()) == []
    waiting = store.pending_outbox(time.time() + 61)
    assert [(e.attempts, e.last_error, e.recipients) for e in waiting] == [
        (1, "connection refused", (deferred,))]
    assert store.outbox_stats() == {"delivered": 0, "failed": 1, "waiting": 1}
    accepted = dataclasses.replace(deferred, state=Delivery.DELIVERED, code=250, detail="ok",
                                   attempts=2)
    store.record_delivery("b:1", [accepted], error="", retry_at=None)
    assert store.delivered("b:1") and not store.delivered("b:2")
    assert store.recipient_states("b:1") == [accepted]
    assert store.outbox_stats() == {"delivered": 1, "failed": 1, "waiting": 0}
    assert store.pending_outbox(time.time() + 3600) == []


def test_removing_a_batch_removes_everything_it_owns(store: Store) -> None:
    apply(store, "b", spec("a"))
    apply(store, "other", spec("a"))
    for name in ("b", "other"):
        store.set_items(name, [Item("a", "http://h/a")])
        store.create_job(job(name, "a"))
        store.save_report(report(name, 1, emailed=True))
        store.add_event(Event(name, 1.0, "Processing", "admitted", "r1"))
    store.remove_batch("b")
    assert store.get_batch("b") is None
    assert (store.list_items("b"), store.list_jobs("b"), store.list_reports("b"),
            store.list_events("b")) == ([], [], [], [])
    # an email still waiting goes out although its batch is gone
    assert [e.report_id for e in store.pending_outbox(time.time())] == ["b:1", "other:1"]
    assert len(store.list_events("other")) == 1 and store.get_batch("other") is not None


def changed(store: Store, batch: str) -> list[str]:
    return [j.name for j in store.changed_jobs(batch).jobs]


def test_changed_jobs_are_those_not_observed_since_they_changed(store: Store) -> None:
    """What a step reads of a batch's jobs (issue 13): each change once it is observed,
    again only when it changes again; an observation rolled back is not kept."""
    apply(store, "b", spec("a", "b", "c"))
    store.set_items("b", [Item(i, f"http://h/{i}") for i in "abc"])
    store.create_jobs([job("b", "a"), job("b", "b")])
    first = store.changed_jobs("b")
    assert [j.name for j in first.jobs] == ["b-a-1", "b-b-1"]
    assert changed(store, "b") == ["b-a-1", "b-b-1"]  # not observed yet: still there
    store.observed("b", first)
    assert changed(store, "b") == []
    store.observed("b", store.changed_jobs("b"))  # nothing new: observing it moves nothing
    store.create_job(job("b", "c"))
    assert changed(store, "b") == ["b-c-1"]
    with pytest.raises(RuntimeError), store.transaction():
        store.observed("b", store.changed_jobs("b"))
        raise RuntimeError("killed before the step's commit")
    assert changed(store, "b") == ["b-c-1"]
    store.observed("b", store.changed_jobs("b"))
    store.set_suspended("b", True)  # every unstarted job moves
    assert changed(store, "b") == ["b-a-1", "b-b-1", "b-c-1"]
    store.observed("b", store.changed_jobs("b"))
    store.set_suspended("b", True)  # again: nothing moves
    assert changed(store, "b") == []
    store.remove_batch("b")
    apply(store, "b", spec("a"))
    store.create_job(job("b", "a"))
    assert changed(store, "b") == ["b-a-1"]  # a new batch of the name starts afresh


def test_items_needing_a_job_and_items_by_id(store: Store) -> None:
    """Unfinished items whose current attempt has no Job (none made, or it vanished), in
    seq order and at most `limit`; items by id in seq order, unknown ids left out."""
    apply(store, "b", spec(*"abcde"))
    store.set_items("b", [Item(i, f"http://h/{i}") for i in "abcde"])
    assert [s.item.id for s in store.items_needing_jobs("b", 2)] == ["a", "b"]
    assert [s.item.id for s in store.items_needing_jobs("b", None)] == list("abcde")
    a, b, c = store.items_of("b", ["c", "zz", "a", "b"])
    assert [a.item.id, b.item.id, c.item.id] == ["a", "b", "c"]
    store.create_job(job("b", "a"))
    a.attempts, a.job_name = 1, "b-a-1"  # has its job
    b.attempts, b.job_name, b.state = 1, "b-b-1", JobState.COMPLETED  # finished
    c.attempts, c.job_name = 1, "b-c-1"  # its job vanished before it finished
    store.update_items("b", [a, b, c])
    assert [s.item.id for s in store.items_needing_jobs("b", None)] == ["c", "d", "e"]
    assert [s.item.id for s in store.items_needing_jobs("b", 1)] == ["c"]
    assert store.count_items("b") == {"Completed": 1, "Pending": 4}
    writes = store.writes
    store.update_items("b", [a, b, c])  # as stored: nothing is written
    assert store.writes == writes


def test_a_transaction_lands_whole_or_not_at_all(store: Store) -> None:
    b = apply(store, "b", spec("a"))
    with pytest.raises(RuntimeError), store.transaction():
        store.create_job(job("b", "a"))
        store.update_status("b", b.status, BatchStatus(state=BatchState.PROCESSING))
        raise RuntimeError("killed half-way")
    assert store.list_jobs() == []
    assert stored(store, "b").status.state == BatchState.PENDING
    with store.transaction():
        store.create_job(job("b", "a"))
        store.add_event(Event("b", 1.0, "Processing", "admitted", "r1"))
    assert [j.name for j in store.list_jobs()] == ["b-a-1"] and store.list_events("b")


def test_the_list_pages_newest_activity_first_and_meta_is_kept(store: Store) -> None:
    for name in ("a", "b", "c"):
        apply(store, name, spec("x"))
    b = store.get_batch("b")
    assert b is not None
    store.update_status("b", b.status, BatchStatus(state=BatchState.HELD))
    newest_first = sorted(store.list_batches(), key=lambda x: (-x.updated_at, x.name))
    assert newest_first[0].name == "b"  # its status was written last
    page = store.page_batches(limit=2)
    assert page.total == 3 and [x.name for x in page.rows] == [x.name for x in newest_first[:2]]
    held = store.page_batches(state="Held")
    assert held.total == 1 and [x.name for x in held.rows] == ["b"]
    assert [x.name for x in store.list_batches()] == ["a", "b", "c"]
    assert store.load_sync_state().synced_commit is None
    state = store.load_sync_state()
    state.synced_commit = "abc"
    store.save_sync_state(state)
    writes = store.writes
    store.save_sync_state(state)
    assert store.load_sync_state().synced_commit == "abc" and store.writes == writes


def test_batches_are_found_by_their_file(store: Store) -> None:
    """What a diff sync looks up: the batches (Deleted ones too) of the files it changed,
    by name, with no listing of the others."""
    for name in ("c", "a", "b"):
        apply(store, name, spec("x"))
    store.apply_spec("z", spec("x"), source_path="batches/a.yaml", revision="r2",
                     committed_at=1001.0, error="")  # the file now names another batch
    a = stored(store, "a")
    store.update_status("a", a.status, BatchStatus(state=BatchState.DELETED))
    found = store.batches_at(["batches/a.yaml", "batches/c.yaml", "batches/gone.yaml"])
    assert [(b.name, b.status.state) for b in found] == [
        ("a", BatchState.DELETED), ("c", BatchState.PENDING), ("z", BatchState.PENDING)]
    assert store.batches_at([]) == [] and store.batches_at(["batches/gone.yaml"]) == []
    many = [f"batches/{n}.yaml" for n in range(1500)] + ["batches/b.yaml"]
    assert [b.name for b in store.batches_at(many)] == ["b"]  # more than one query's worth


def test_the_batches_that_may_act_are_the_active_ones_but_those_waiting_on_jobs(
        store: Store) -> None:
    """What a pass reads (`batches_that_may_act`): the batches of the states asked for,
    but no Processing one with its items loaded (only its Jobs, or room, can move it),
    whatever else its status says (a message that quotes the loaded flag included)."""
    shown: dict[str, BatchStatus] = {
        "pending": BatchStatus(state=BatchState.PENDING),
        "loading": BatchStatus(state=BatchState.PROCESSING),
        "loaded": BatchStatus(state=BatchState.PROCESSING, items_loaded=True),
        "quoting": BatchStatus(state=BatchState.PROCESSING,
                               message='status text: {"items_loaded":true}'),
        "reporting": BatchStatus(state=BatchState.REPORTING, items_loaded=True),
        "done": BatchStatus(state=BatchState.COMPLETED, items_loaded=True),
    }
    for name, status in shown.items():
        b = apply(store, name, spec("x"))
        store.update_status(name, b.status, status)
    active = [str(s) for s in (BatchState.PROCESSING, BatchState.REPORTING,
                               BatchState.UPDATE_REPORTING)]
    assert sorted(b.name for b in store.batches_that_may_act(active)) == [
        "loading", "quoting", "reporting"]
    assert [b.name for b in store.batches_that_may_act([str(BatchState.PENDING)])] == [
        "pending"]
    assert store.batches_that_may_act([]) == []


def test_sync_state_round_trips_field_by_field_and_writes_only_what_changed(
        store: Store) -> None:
    assert store.load_sync_state() == SyncState()
    writes = store.writes
    store.save_sync_state(SyncState())  # defaults where nothing is stored: nothing to write
    assert store.writes == writes
    full = SyncState(
        synced_commit="c1", sync_error="fetch failed", storage_error="disk full",
        message_id_domain="x.batchq.invalid",
        profiles={"p": {"command": ["true"], "allowedUrlPrefixes": ["http://127.0.0.1:"]}},
        queue={"paused": True}, profile_paths={"profiles/p.yaml": "p"},
        renamed_batches={"old": {"path": "batches/a.yaml", "to": "new"}},
        file_errors={"batches/x.yaml": "batches/x.yaml:1:1: bad"},
        deletion_refused="refused to delete 3 batches", deletions={"gone": "c1"},
    )
    store.save_sync_state(full)
    assert store.writes == writes + 11  # one write per field, as one meta key each
    assert store.load_sync_state() == full
    again = store.load_sync_state()
    again.file_errors.pop("batches/x.yaml")
    again.sync_error = ""
    writes = store.writes
    store.save_sync_state(again)
    assert store.writes == writes + 2
    assert store.load_sync_state() == again
    loaded = store.load_sync_state()
    loaded.profiles["p"]["queue"] = "changed"  # a copy: changing it changes nothing stored
    assert store.load_sync_state() == again


def levels_in_force(statements: list[str], level: int) -> list[tuple[str, int]]:
    """Replay SQLite's trace from `level`: the synchronous level in force at each COMMIT
    and at each write made outside a transaction (which commits on its own)."""
    seen: list[tuple[str, int]] = []
    in_tx = False
    for sql in statements:
        word = sql.split(None, 1)[0].upper()
        if sql.startswith("PRAGMA synchronous="):
            level = {"FULL": 2, "NORMAL": 1}[sql.rpartition("=")[2]]
        elif word == "BEGIN":
            in_tx = True
        elif word in ("COMMIT", "ROLLBACK"):
            if word == "COMMIT":
                seen.append(("commit", level))
            in_tx = False
        elif word in ("INSERT", "UPDATE", "DELETE") and not in_tx:
            seen.append(("autocommit", level))
    return seen


def test_the_runners_transactions_skip_only_their_own_fsync(tmp_path: Path) -> None:
    """A rebuildable transaction (the local runner's starts and exits) commits at
    synchronous=NORMAL, and every other commit, before and after, even after one that
    failed, keeps FULL, as does a write outside any transaction; nested in a transaction
    it joins it (one commit, at FULL). The level is switched only when it changes: a run of
    rebuildable transactions switches it once, the next durable write switches it back."""
    store = SqliteStore(local_db_path(tmp_path))
    try:
        def level() -> int:
            return int(store.db.execute("PRAGMA synchronous").fetchone()[0])

        full, normal = 2, 1
        apply(store, "b", spec("a", "c"))
        store.create_job(job("b", "a"))
        store.create_job(job("b", "c"))
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        seen: list[int] = []
        with store.rebuildable_transaction():
            seen.append(level())
            store.mark_job_started(job("b", "a").name, 1)
        with store.rebuildable_transaction():
            store.mark_job_started(job("b", "c").name, 2)
        with pytest.raises(RuntimeError), store.rebuildable_transaction():
            raise RuntimeError("a start that failed")
        store.set_meta("probe", "1")  # a write of its own, after them
        with store.rebuildable_transaction():
            store.mark_job_finished(job("b", "a").name, 0, "")
        with store.transaction(), store.rebuildable_transaction():
            seen.append(level())
            store.set_meta("probe", "2")
        with store.rebuildable_transaction():
            store.mark_job_finished(job("b", "c").name, 0, "")
        with store.transaction():
            seen.append(level())
            store.set_meta("probe", "3")
        store.db.set_trace_callback(None)
        assert seen == [normal, full, full]
        assert levels_in_force(statements, full) == [
            ("commit", normal), ("commit", normal), ("autocommit", full),
            ("commit", normal), ("commit", full), ("commit", normal), ("commit", full)]
        switches = [s for s in statements if s.startswith("PRAGMA synchronous=")]
        assert switches == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"] * 3
        assert [j.state for j in store.list_jobs("b")] == [JobState.COMPLETED] * 2
    finally:
        store.close()


def test_the_jobs_to_start_fill_only_the_slots_the_running_ones_leave(tmp_path: Path) -> None:
    """The runner's one query a round: the Pending jobs first in line (by creation), as
    many as the slots that the running ones leave free; a held one is never among them,
    nor does it take a slot."""
    store = SqliteStore(local_db_path(tmp_path))
    try:
        apply(store, "b", spec("a", "c", "d", "e", "h"))
        for item in ("a", "c", "d", "e"):
            store.create_job(job("b", item))
        store.create_job(job("b", "h", suspended=True))
        store.mark_job_started(job("b", "a").name, 1)

        def first_in_line(slots: int) -> list[str]:
            return [row["item"] for row in store.jobs_to_start(slots)]

        assert first_in_line(1) == []  # the one running fills it
        assert first_in_line(3) == ["c", "d"]
        assert first_in_line(8) == ["c", "d", "e"]
        store.mark_job_started(job("b", "c").name, 2)
        assert first_in_line(3) == ["d"]
        assert first_in_line(0) == []
        # read in the order of an index up to the free slots, never sorted: a sort would
        # read every Pending job, each round, however many are made ahead
        trace: list[str] = []
        store.db.set_trace_callback(trace.append)
        first_in_line(3)
        store.db.set_trace_callback(None)
        (query,) = trace  # with its values in place
        plan = [row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + query)]
        assert not [step for step in plan if "TEMP B-TREE" in step], plan
        assert [step for step in plan if "jobs_in_line" in step], plan
    finally:
        store.close()


def test_jobs_a_step_made_and_recorded_are_observed_by_it(tmp_path: Path) -> None:
    """SQLite: the Jobs a step made, with their items recorded, move the batch's mark past
    them, and the batch is not among the changed ones for them; while any change past the
    mark is one its item does not say (made but not recorded, or started since), the mark
    stays and the next step observes every change."""
    store = SqliteStore(local_db_path(tmp_path))
    try:
        apply(store, "b", spec("a", "c", "d"))
        store.set_items("b", [Item(i, f"http://h/{i}") for i in "acd"])
        assert store.take_changed_batches() is None  # the first call walks every batch

        def made(*ids: str) -> None:  # as a step: the Jobs, then their items
            store.create_jobs([job("b", i) for i in ids])
            items = store.items_of("b", list(ids))
            for s in items:
                s.attempts, s.job_name = 1, f"b-{s.item.id}-1"
            store.update_items("b", items)

        made("a")
        store.create_job(job("b", "c"))  # made, its item not recorded
        store.observed_made_jobs("b")
        assert changed(store, "b") == ["b-a-1", "b-c-1"]
        assert store.take_changed_batches() == {"b"}
        store.observed("b", store.changed_jobs("b"))
        made("d")
        store.observed_made_jobs("b")
        assert changed(store, "b") == [] and store.take_changed_batches() == set()
        store.mark_job_started(job("b", "d").name, 1)  # a change its item does not say
        store.observed_made_jobs("b")
        assert changed(store, "b") == ["b-d-1"]
        assert store.take_changed_batches() == {"b"}
    finally:
        store.close()
