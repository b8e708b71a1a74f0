"""A batch that waited for something outside itself is stepped again once it may go on,
not forgotten until the next full walk (issue 13 follow-up: the work queue's requeue).

A pass that is not full steps the batches that can have changed; a Failed or Completed
batch is among them only when one of its own Jobs changed. A restart that found the job
budget (queue.yaml maxActiveJobs) used up by another batch waits on that other batch:
when its Job ends, nothing of the waiting batch changes. Like controller-runtime's
Requeue, the controller keeps such a batch and steps it again as soon as the budget has
room. The full walk is put out of reach (`resync` of an hour), so only the work queue can
make the restart run. Both backends (DESIGN §9).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures import ADMIN, batch_doc, profile_doc
from tests.harness import Harness


@pytest.fixture
def h(world_and_harness: tuple[Any, Harness]) -> Harness:
    harness = world_and_harness[1]
    harness.settings.resync = 3600.0  # no full walk during the test: the work queue alone
    # the budget as on Kubernetes, on both backends: no Job made ahead of a slot
    # (test_jobs_ahead.py), so that busy's one job uses it up
    harness.rec.controller.jobs_ahead_per_slot = 0
    return harness


def test_a_restart_waiting_for_the_job_budget_runs_once_another_batch_frees_it(
        h: Harness) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    h.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"maxActiveJobs": 1}})
    h.repo.write("batches/first.yaml",
                 batch_doc([h.world.item("first1", fail=True, gated=False)]))
    h.repo.commit("submit first")
    h.sync()
    h.until(lambda: h.state("first") == "Failed", "the first batch to fail")
    h.repo.write("batches/busy.yaml", batch_doc([h.world.item("busy1", gated=True)]))
    h.repo.commit("submit busy")
    h.sync()
    h.until(lambda: h.jobs("busy") == {"busy1": "Processing"}, "busy's job to run")
    # the restart is asked for while busy's job holds the only slot: it waits
    h.world.set_outcome("first1", fail=False)
    h.repo.edit_batch("batches/first.yaml", who=ADMIN, restarts={"first1": 1})
    h.sync()
    h.reconcile()  # the full pass after the commit: no room
    h.until(lambda: not h.reconcile(), "the passes after the commit to settle")
    assert h.attempts("first") == {"first1": 1}
    assert h.job_names("first") == ["first-first1-1"]
    h.world.release("busy1")
    h.until(lambda: h.jobs("busy") == {"busy1": "Completed"}, "busy's job to finish")
    h.until(lambda: h.jobs("first") == {"first1": "Completed"},
            "the waiting restart to run once the slot is free (without a full walk)")
    assert h.attempts("first") == {"first1": 2}
    assert h.state("first") == "Failed"  # a restart does not change the batch state
