"""A batch's step costs what changed, not the batch's size (issue 13 goals 1 and 3), and
the counts and failures it shows stay exactly right: real Git repositories, a real SQLite
store, real worker processes and real `batchq reconcile` processes killed mid-batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.domain.model import ItemStatus
from reconciler.domain.states import JobState
from reconciler.store.backends import local_db_path
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness

MAX_FAILURES_IN_STATUS = 20  # what the controller shows (reconciler/control/controller.py)


def queue_doc(max_active_jobs: int) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue",
            "spec": {"maxActiveJobs": max_active_jobs}}


@pytest.fixture
def h(git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> Iterator[Harness]:
    # one Job made ahead per slot (the default is three): the counts below stay short
    harness = Harness(git_repo, tmp_path / "state", smtp.hostport, jobs_ahead=1)
    yield harness
    harness.close()


# --- the cost of one step ------------------------------------------------------------------

def one_step_after_one_job_finished(tmp: Path, smtp: SmtpServer, payloads: PayloadServer,
                                    name: str, size: int) -> tuple[int, int, int]:
    """Rows read, rows written and SQLite VM instructions of the step that records one
    finished job of a batch of `size` items (4 job slots, and 4 Jobs made ahead of them),
    once the batch is running."""
    h = Harness(GitRepo(tmp / f"repo-{name}"), tmp / f"state-{name}", smtp.hostport,
                jobs_ahead=1)
    try:
        return _one_step(h, payloads, name, size)
    finally:
        h.close()


def _one_step(h: Harness, payloads: PayloadServer, name: str,
              size: int) -> tuple[int, int, int]:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue_doc(4))
    items = [{"id": f"item-{i:04d}", "url": f"{payloads.base}{name}/{i}"} for i in range(size)]
    h.repo.write(f"batches/{name}.yaml", {**batch_doc(items), "metadata": {"name": name}})
    h.repo.commit(f"{name}: {size} items")
    h.sync()
    h.reconcile()  # admitted
    h.reconcile()  # items stored, the first 8 jobs made: 4 for the slots, 4 ahead of them
    store = h.store
    assert isinstance(store, SqliteStore)
    # the step that made the 8 recorded them: a pass then has nothing to observe, and
    # steps no batch and reads no job or item (it used to step the batch to observe those
    # 8 Jobs, reading them and their items)
    before = store.reads
    assert not h.reconcile()
    assert (h.rec.controller.last_pass.steps, store.reads - before) == (0, 0)
    pending = [j for j in store.list_jobs(name) if j.state == JobState.PENDING]
    assert len(pending) == 8, pending
    # the local runner's own moves of one job (what a worker process exiting 0 records)
    store.mark_job_started(pending[0].name, os.getpid())
    store.mark_job_finished(pending[0].name, 0, "")
    store.reads = store.writes = 0
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.db.set_progress_handler(count, 1)
    try:
        assert h.reconcile()
    finally:
        store.db.set_progress_handler(None, 1)
    cost = store.reads, store.writes, steps[0]
    batch = h.batch(name)
    assert batch.status.counts == {"Completed": 1, "Pending": size - 1}, batch.status.counts
    assert len(store.list_jobs(name)) == 9  # the freed room got the next item's job
    return cost


def test_a_step_reads_and_writes_as_much_for_300_items_as_for_30(
        tmp_path: Path, smtp: SmtpServer, payloads: PayloadServer) -> None:
    """After one of its jobs finished, a step of a 300-item batch reads the same rows,
    writes the same rows and runs the same number of SQLite instructions as the step of
    a 30-item batch: it reads the job that changed, its item and the one item that gets
    the freed slot, and counts from counters, never every item or every job."""
    small = one_step_after_one_job_finished(tmp_path, smtp, payloads, "small", 30)
    large = one_step_after_one_job_finished(tmp_path, smtp, payloads, "large", 300)
    assert large == small, {"30 items": small, "300 items": large}
    reads, writes, _ = small
    assert reads == 3 and writes <= 6, small  # the job, its item, the next item


# --- counts and failures through restarts, holds, UpdateReporting and kills ---------------

def truth(items: list[ItemStatus]) -> tuple[dict[str, int], list[dict[str, str]]]:
    """The counts and failures a status must show, from every item (seq order)."""
    counts = dict(Counter(str(s.state) for s in items))
    failures = [{"item": s.item.id, "message": s.message} for s in items
                if s.state == JobState.FAILED][:MAX_FAILURES_IN_STATUS]
    return counts, failures


def assert_status_right(state: Path, name: str) -> dict[str, int]:
    store = SqliteStore(local_db_path(state))
    try:
        batch = store.get_batch(name)
        assert batch is not None
        counts, failures = truth(store.list_items(name))
        assert batch.status.counts == counts, (batch.status.counts, counts)
        assert batch.status.failures == failures, (batch.status.failures, failures)
        assert batch.status.item_count == sum(counts.values())
        return counts
    finally:
        store.close()


def reconcile(repo: GitRepo, state: Path, smtp: SmtpServer, failpoint: str = "") -> int:
    """A `batchq reconcile --until-idle` process; with `failpoint`, killed where it says."""
    env = dict(os.environ, BATCHQ_FAILPOINTS=failpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "reconcile", "--repo", str(repo.path),
         "--state", str(state), "--smtp", smtp.hostport, "--until-idle", "--timeout", "90"],
        env=env, capture_output=True, text=True, timeout=150)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"reconciler failed ({proc.returncode}): {proc.stderr}")
    return proc.returncode


def test_counts_and_failures_stay_right_through_kills_restarts_and_update_reporting(
        git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer, tmp_path: Path) -> None:
    """30 items, 22 of them missing (more failures than the status lists), 4 job slots:
    reconcilers killed inside a step (after its status write, before its commit) and
    after a job was made; then restarts of 3 failed items that now succeed, then an
    UpdateReporting. After each, the status shows exactly the counts and the first 20
    failures that every item says, and no finished job was missed."""
    state = tmp_path / "state"
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(4))
    items = [payloads.add(f"m-{i:02d}", f"payload {i}\n".encode()) for i in range(30)]
    missing = {f"m-{i:02d}": payloads.files.pop(f"m-{i:02d}") for i in range(8, 30)}
    git_repo.write("batches/b.yaml", {**batch_doc(items), "metadata": {"name": "big"}})
    git_repo.commit("submit")

    assert reconcile(git_repo, state, smtp, "after-status:4") == -signal.SIGKILL
    assert reconcile(git_repo, state, smtp, "after-job-created:9") == -signal.SIGKILL
    assert reconcile(git_repo, state, smtp) == 0
    counts = assert_status_right(state, "big")
    assert counts == {"Completed": 8, "Failed": 22}
    assert len(smtp.mailbox.messages) == 1

    restarted = ["m-08", "m-09", "m-20"]
    for item in restarted:
        payloads.files[item] = missing[item]
    git_repo.edit_batch("batches/b.yaml", who=ADMIN, restarts=dict.fromkeys(restarted, 1))
    assert reconcile(git_repo, state, smtp, "after-status:2") == -signal.SIGKILL
    assert reconcile(git_repo, state, smtp) == 0
    assert assert_status_right(state, "big") == {"Completed": 11, "Failed": 19}

    git_repo.edit_batch("batches/b.yaml", who=ADMIN, state="UpdateReporting")
    assert reconcile(git_repo, state, smtp) == 0
    assert assert_status_right(state, "big") == {"Completed": 11, "Failed": 19}
    assert len(smtp.mailbox.messages) == 2  # the update lists the three that changed


def test_counts_stay_right_through_a_hold_and_its_release(
        h: Harness, payloads: PayloadServer) -> None:
    """Held while its first jobs wait to run: their items show Held, none starts; released,
    every item completes and the counts say so at each step."""
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue_doc(3))
    items = [payloads.add(f"h-{i}", f"payload {i}\n".encode()) for i in range(7)]
    h.repo.write("batches/h.yaml", {**batch_doc(items), "metadata": {"name": "held"}})
    h.repo.commit("submit")
    h.sync()
    h.reconcile()  # admitted
    h.reconcile()  # items stored, 6 jobs made: 3 for the slots, 3 ahead of them
    assert len(h.store.list_jobs("held")) == 6
    assert h.batch("held").status.counts == {"Pending": 7}
    h.repo.edit_batch("batches/h.yaml", who=ADMIN, state="Held")
    h.sync()
    h.reconcile()
    h.reconcile()
    assert h.state("held") == "Held"
    store = h.store
    assert_status_matches(h, "held")
    assert h.batch("held").status.counts == {"Held": 6, "Pending": 1}
    h.rec.tick_jobs()
    assert all(j.state == JobState.HELD for j in store.list_jobs("held"))
    h.repo.edit_batch("batches/h.yaml", who=ADMIN, state="Active")
    h.sync()
    h.until(lambda: h.state("held") == "Completed", "the released batch completes")
    assert_status_matches(h, "held")
    assert h.batch("held").status.counts == {"Completed": 7}


def assert_status_matches(h: Harness, name: str) -> None:
    counts, failures = truth(h.store.list_items(name))
    status = h.batch(name).status
    assert (status.counts, status.failures) == (counts, failures)


def test_a_state_dir_written_before_the_change_numbers_is_observed_in_full(
        h: Harness, payloads: PayloadServer) -> None:
    """A state file from a release without the change numbers, item counters and their
    triggers, left mid-batch with a job that finished unobserved: opened again, the first
    step observes every job, the counts are those of the items, and the batch completes."""
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue_doc(2))
    items = [payloads.add(f"u-{i}", f"payload {i}\n".encode()) for i in range(5)]
    h.repo.write("batches/u.yaml", {**batch_doc(items), "metadata": {"name": "upgraded"}})
    h.repo.commit("submit")
    h.sync()
    h.reconcile()
    h.reconcile()
    first = h.store.list_jobs("upgraded")[0].name
    h.close()
    db = sqlite3.connect(local_db_path(h.settings.state_dir))
    for statement in (
            "DROP TRIGGER jobs_inserted", "DROP TRIGGER jobs_updated",
            "DROP TRIGGER items_inserted", "DROP TRIGGER items_deleted",
            "DROP TRIGGER items_moved", "DROP TABLE item_counts", "DROP TABLE sequences",
            "DROP INDEX jobs_by_change", "DROP INDEX jobs_by_any_change",
            "DROP INDEX items_by_state",
            "DROP INDEX items_unfinished", "ALTER TABLE jobs DROP COLUMN changed",
            "ALTER TABLE batches DROP COLUMN observed_job_change",
            # that release found a state's jobs and a batch's by an index on each
            "DROP INDEX jobs_in_line", "CREATE INDEX jobs_by_state ON jobs (state)",
            "CREATE INDEX jobs_by_batch ON jobs (batch)"):
        db.execute(statement)
    # the old runner's record of a finished job, which no step has observed yet
    db.execute("UPDATE jobs SET state='Completed', started_at=1, finished_at=2, exit_code=0"
               " WHERE name=?", (first,))
    db.commit()
    db.close()
    h.restart()
    h.reconcile()
    assert_status_matches(h, "upgraded")
    assert h.batch("upgraded").status.counts == {"Completed": 1, "Pending": 4}
    db = sqlite3.connect(local_db_path(h.settings.state_dir))
    indexes = {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='jobs'"
        " AND sql IS NOT NULL")}
    db.close()
    assert indexes == {"jobs_by_change", "jobs_by_any_change", "jobs_in_line"}
    h.until(lambda: h.state("upgraded") == "Completed", "the upgraded batch completes")
    assert_status_matches(h, "upgraded")
    assert h.batch("upgraded").status.counts == {"Completed": 5}
