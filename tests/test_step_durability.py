"""Which of a pass's steps commit with an fsync of their own (SQLite synchronous=FULL).

Most steps at 1,000 batches of 10 are a Processing batch observing its Jobs and making the
next ones, or a Pending one admitted or waiting in the queue; their fsync was a sixth of the
loop's wall time. Those commit at NORMAL (a kill loses nothing; a power loss can undo only
the last commits, which the next steps make again, adopting the Jobs by their fixed
names). The steps that save a report, hold a batch or delete one keep their fsync: the
report and the delivered mark are never lost (issue 13 goal 2). Observed through a real
reconciler over a real Git repository: the synchronous level SQLite reports at the moment
each write is made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import GitRepo, PayloadServer, batch_doc, profile_doc, wait_for

FULL, NORMAL = 2, 1


def record_levels(store: SqliteStore, names: list[str]) -> dict[str, list[int]]:
    """The synchronous level in force at each call of the store's methods `names`."""
    seen: dict[str, list[int]] = {name: [] for name in names}

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            # in the step's transaction: the level its commit is made at (it is set only
            # between transactions, so what stands outside one says nothing)
            assert store.db.in_transaction, f"{name} called outside a step's transaction"
            seen[name].append(int(store.db.execute("PRAGMA synchronous").fetchone()[0]))
            return method(*args, **kwargs)
        return call

    for name in names:
        setattr(store, name, watched(name, getattr(store, name)))
    return seen


def test_only_the_steps_that_make_and_observe_jobs_skip_their_fsync(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/a.yaml", {**batch_doc([payloads.add(f"a{i}", b"x\n")
                                                   for i in range(3)]),
                                      "metadata": {"name": "a"}})
    git_repo.commit("a batch of three")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state"))
    try:
        assert isinstance(rec.store, SqliteStore)
        seen = record_levels(rec.store, ["create_jobs", "update_items", "save_report",
                                         "set_suspended"])
        rec.run_until_idle(timeout=120)
        assert str(rec.store.get_batch("a").status.state) == "Completed"  # type: ignore[union-attr]
        assert seen["create_jobs"] and set(seen["create_jobs"]) == {NORMAL}, seen
        assert seen["update_items"] and set(seen["update_items"]) == {NORMAL}, seen
        assert seen["save_report"] == [FULL], seen  # the report: its own fsync
        assert set(seen["set_suspended"]) == {NORMAL}, seen  # the admission step
        with rec.store.transaction():  # the next durable one is at FULL again
            assert int(rec.store.db.execute("PRAGMA synchronous").fetchone()[0]) == FULL
        # a batch held while it runs: the step that suspends its Jobs keeps its fsync
        items = [payloads.add(f"b{i}", b"y\n", gated=True) for i in range(2)]
        doc = {**batch_doc(items), "metadata": {"name": "b"}}
        git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                      "spec": {"maxActiveJobs": 1}})
        git_repo.write("batches/b.yaml", doc)
        git_repo.commit("b, one job at a time, its payloads held back")
        wait_for(lambda: (rec.run_pass() or True) and any(
            j.state == JobState.PROCESSING for j in rec.store.list_jobs("b")),
            timeout=60, what="b's first job running")
        git_repo.write("batches/b.yaml", {**doc, "spec": {**doc["spec"], "state": "Held"}})
        git_repo.commit("hold b")
        seen["set_suspended"].clear()
        wait_for(lambda: (rec.run_pass() or True) and str(
            rec.store.get_batch("b").status.state) == "Held",  # type: ignore[union-attr]
            timeout=60, what="b held")
        assert seen["set_suspended"] and set(seen["set_suspended"]) == {FULL}, seen
        payloads.release("b0", "b1")
    finally:
        rec.close()
