"""Between two passes of the embedded backend, while the local runner has Jobs made ahead
for every slot, it alone records each exit and starts the next Job; the next pass comes
when fewer are left, or BATCH_PERIOD_SECONDS after the last at the latest (as the
Kubernetes Job controller batches a Job's pod events), and its one step of the batch
observes every exit since (issue 13 goal 2: at 1,000 batches of 10 a pass came every 4
jobs, and each step observed about one change).

Real parts: a Git repository committed by the test, the real worker as the job, a payload
server on loopback that holds each item's payload until the test releases it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.app import service
from reconciler.app.service import Reconciler
from tests.fixtures import GitRepo, PayloadServer, wait_for
from tests.test_jobs_ahead import gated, made, running

ITEMS = [f"five-{i}" for i in range(8)]


@pytest.fixture
def rec(git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> Iterator[Reconciler]:
    """Two slots, three Jobs made ahead of each: two running, six waiting, all eight held
    by the payload server."""
    reconciler = gated(git_repo, payloads, tmp_path, items=len(ITEMS), jobs_ahead=3)
    try:
        reconciler.run_pass()
        wait_for(lambda: (reconciler.run_pass(sync=False) or True)
                 and len(running(reconciler)) == 2 and len(made(reconciler, "five")) == 8,
                 timeout=60, what="two jobs running, six made ahead")
        yield reconciler
    finally:
        reconciler.close()


def states(rec: Reconciler) -> Counter[str]:
    return Counter(made(rec, "five").values())


def test_the_runner_goes_on_alone_while_jobs_wait_for_every_slot_then_one_step_observes_all(
        rec: Reconciler, payloads: PayloadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "BATCH_PERIOD_SECONDS", 60.0)  # only the jobs end the wait
    shown = rec.store.get_batch("five").status.counts  # type: ignore[union-attr]
    passes = rec.passes
    payloads.release(*ITEMS)
    rec.between_passes()
    assert rec.passes == passes  # no pass came between
    assert states(rec)["Pending"] < 2, states(rec)  # it ended when fewer than 2 waited
    assert states(rec)["Completed"] >= 5, states(rec)  # exits recorded, next ones started
    assert rec.store.get_batch("five").status.counts == shown  # type: ignore[union-attr]
    steps = rec.controller.steps
    rec.run_pass(sync=False)
    assert rec.controller.steps == steps + 1  # one step of the batch observed them all
    counts = rec.store.get_batch("five").status.counts  # type: ignore[union-attr]
    assert counts["Completed"] >= 5, counts
    rec.run_until_idle(timeout=120)
    assert states(rec) == Counter({"Completed": 8})
    assert sorted(payloads.requests) == ITEMS  # each ran once


def test_a_long_job_delays_the_next_pass_by_the_period_at_most_and_a_stop_not_at_all(
        rec: Reconciler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "BATCH_PERIOD_SECONDS", 0.3)
    before = states(rec)
    started = time.monotonic()
    rec.between_passes()  # the jobs are held: no exit comes
    waited = time.monotonic() - started
    assert 0.3 <= waited < 5, waited
    assert states(rec) == before
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    rec.between_passes(stop)
    assert time.monotonic() - started < 0.2


def test_exits_that_come_together_are_recorded_in_one_round(
        rec: Reconciler, payloads: PayloadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exit that wakes the loop between passes is recorded EXIT_GATHER_SECONDS later,
    with every exit that came meanwhile: one round, one transaction, for both jobs that end
    together (here a long window, so that a loaded machine cannot split them)."""
    monkeypatch.setattr(service, "EXIT_GATHER_SECONDS", 1.0)
    monkeypatch.setattr(service, "BATCH_PERIOD_SECONDS", 3.0)
    runner = rec.runner
    assert runner is not None
    rounds: list[int] = []  # exits recorded by each round that recorded any
    record = runner._record_exits

    def counted() -> bool:
        before = Counter(made(rec, "five").values())["Completed"]
        changed = record()
        after = Counter(made(rec, "five").values())["Completed"]
        if after > before:
            rounds.append(after - before)
        return changed

    monkeypatch.setattr(runner, "_record_exits", counted)
    first = running(rec)
    payloads.release(*first)
    rec.between_passes()  # the two that ended are replaced; the next two are held
    assert rounds == [2], rounds
    assert sorted(i for i, s in made(rec, "five").items() if s == "Completed") == first
    assert len(running(rec)) == 2
