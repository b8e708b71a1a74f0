"""The embedded backend makes Jobs ahead of its slots (issue 13 goal 2; three per slot by
default, one in most tests here, which makes the counts short): they wait, Pending, for a
slot, and the local runner starts one the moment a job ends, without waiting for the pass
that would have made it; never more than maxActiveJobs run at once.

Real parts: a Git repository committed by the test, the real worker as the job, a payload
server on loopback that holds each item's payload until the test releases it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.app.service import Reconciler, Settings
from reconciler.control.controller import JOBS_AHEAD_PER_SLOT
from reconciler.domain.states import JobState
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import GitRepo, PayloadServer, profile_doc, queue_doc, wait_for
from tests.test_pass_scope import state_of, submit


def running(rec: Reconciler) -> list[str]:
    """The items whose job the local runner runs now."""
    assert isinstance(rec.store, SqliteStore)
    return sorted(r["item"] for r in rec.store.jobs_in_state(JobState.PROCESSING))


def made(rec: Reconciler, batch: str) -> dict[str, str]:
    """Item -> the state of its Job, for the batch's Jobs made so far."""
    return {j.item: str(j.state) for j in rec.store.list_jobs(batch)}


def gated(git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path, *, items: int = 5,
          jobs_ahead: int = 1) -> Reconciler:
    """Two job slots and one batch ("five", of five items unless told), each held by the
    payload server until the test releases it; no resync or sync comes by itself."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=2))
    submit(git_repo, payloads, "five", items, gated=frozenset(range(items)))
    git_repo.commit("gated items")
    return Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                               state_dir=tmp_path / "state", interval=3600, resync=3600,
                               jobs_ahead=jobs_ahead))


@pytest.fixture
def rec(git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> Iterator[Reconciler]:
    reconciler = gated(git_repo, payloads, tmp_path)
    try:
        yield reconciler
    finally:
        reconciler.close()


def test_a_job_made_ahead_starts_when_a_slot_frees_with_no_step_between(
        rec: Reconciler, payloads: PayloadServer) -> None:
    rec.run_pass()
    wait_for(lambda: (rec.run_pass(sync=False) or True) and len(running(rec)) == 2,
             timeout=60, what="both slots taken")
    # two run, two wait made ahead (one a slot), the fifth has no Job yet
    assert made(rec, "five") == {"five-0": "Processing", "five-1": "Processing",
                                 "five-2": "Pending", "five-3": "Pending"}
    assert rec.store.count_active_jobs() == 4
    steps = rec.controller.steps
    payloads.release("five-0")

    def runner_round() -> bool:  # the runner alone: records exits, starts what waits
        rec.wake.wait(0.1)
        rec.wake.clear()
        rec.tick_jobs()
        return running(rec) == ["five-1", "five-2"]

    wait_for(runner_round, timeout=60, what="the Job made ahead to take the freed slot")
    assert rec.controller.steps == steps  # no step came between the exit and the start
    assert made(rec, "five")["five-0"] == "Completed"
    assert "five-4" not in made(rec, "five")  # made by the step that observes the exit


def test_never_more_than_max_active_jobs_run_and_every_item_completes_once(
        rec: Reconciler, payloads: PayloadServer) -> None:
    most = [0]

    def watch(r: Reconciler) -> None:
        most[0] = max(most[0], len(running(r)))
        if running(r):  # let one go at a time, while the others wait
            payloads.release(running(r)[0])

    rec.run_until_idle(timeout=120, on_pass=watch)
    assert most[0] == 2
    assert state_of(rec.store, "five") == "Completed"
    assert sorted(payloads.requests) == [f"five-{i}" for i in range(5)]  # each ran once
    assert {j.attempt for j in rec.store.list_jobs("five")} == {1}


def test_without_jobs_ahead_the_budget_is_the_slots(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """`Settings.jobs_ahead=0` (and Kubernetes, where a Job made runs): as many Jobs
    made as maxActiveJobs, so a freed slot waits for the step that makes its Job."""
    rec = gated(git_repo, payloads, tmp_path, jobs_ahead=0)
    try:
        rec.run_pass()
        wait_for(lambda: (rec.run_pass(sync=False) or True) and len(running(rec)) == 2,
                 timeout=60, what="both slots taken")
        assert made(rec, "five") == {"five-0": "Processing", "five-1": "Processing"}
        payloads.release(*(f"five-{i}" for i in range(5)))
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "five") == "Completed"
    finally:
        rec.close()


def test_by_default_three_jobs_are_made_ahead_of_each_slot(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """The default (JOBS_AHEAD_PER_SLOT): 2 slots, so 2 run and 6 wait made ahead; the
    rest of the batch's items have no Job until one ends."""
    rec = gated(git_repo, payloads, tmp_path, items=10, jobs_ahead=Settings.jobs_ahead)
    try:
        rec.run_pass()
        wait_for(lambda: (rec.run_pass(sync=False) or True) and len(running(rec)) == 2,
                 timeout=60, what="both slots taken")
        assert JOBS_AHEAD_PER_SLOT == 3
        assert made(rec, "five") == {f"five-{i}": "Processing" if i < 2 else "Pending"
                                     for i in range(8)}
        payloads.release(*(f"five-{i}" for i in range(10)))
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "five") == "Completed"
        assert sorted(payloads.requests) == [f"five-{i}" for i in range(10)]  # each ran once
    finally:
        rec.close()
