"""Admin actions and failures, the same scenarios on both backends (DESIGN §9)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.fixtures import ADMIN, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness

P, C, F = "Processing", "Completed", "Failed"


@pytest.fixture
def h(world_and_harness: tuple[Any, Harness]) -> Harness:
    return world_and_harness[1]


def submit(h: Harness, name: str, n: int, *, fail: tuple[int, ...] = (), gated: bool = True,
           **spec: Any) -> None:
    items = [h.world.item(f"{name}{i}", fail=i in fail, gated=gated) for i in range(1, n + 1)]
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    h.repo.write(f"batches/{name}.yaml", batch_doc(items, **spec))
    h.repo.commit(f"submit {name}")


def operator_deletes_job(h: Harness, job: str) -> None:
    if h.settings.backend == "local":
        h.store.delete_job(job)  # type: ignore[attr-defined]
        return
    from kubernetes import client

    client.BatchV1Api(h.world_api).delete_namespaced_job(
        job, h.settings.namespace, propagation_policy="Background")


def test_hold_and_release(h: Harness) -> None:
    submit(h, "hold", 2, gated=False, state="Held")
    h.sync()
    h.reconcile()
    h.reconcile()
    assert h.state("hold") == "Held"
    assert h.job_names("hold") == []
    h.repo.edit_batch("batches/hold.yaml", state="Active")
    h.sync()
    h.until(lambda: h.state("hold") == C, "the released batch to complete")
    assert h.jobs("hold") == {"hold1": C, "hold2": C}
    reasons = [e.reason for e in h.store.list_events("hold")]
    assert reasons[:2] == ["SpecApplied", "Held"] and reasons[-1] == C


def test_restart_runs_once_per_generation_and_keeps_the_batch_failed(
        h: Harness, smtp: SmtpServer) -> None:
    submit(h, "rs", 2, fail=(2,), gated=False)
    h.until(lambda: h.state("rs") == F, "the batch to fail")
    h.rec.deliver()
    h.repo.edit_batch("batches/rs.yaml", restarts={"rs2": 1})
    h.sync()
    h.until(lambda: h.attempts("rs")["rs2"] == 2 and h.jobs("rs")["rs2"] == F,
            "the restarted attempt to fail again")
    assert h.state("rs") == F
    for _ in range(3):
        h.sync()
        h.reconcile()
    h.restart()
    h.sync()
    h.reconcile()
    assert h.attempts("rs") == {"rs1": 1, "rs2": 2}
    assert sorted(h.job_names("rs")) == ["rs-rs1-1", "rs-rs2-1", "rs-rs2-2"]
    assert len(smtp.mailbox.messages) == 1


def test_update_reporting_waits_for_the_running_restart(h: Harness, smtp: SmtpServer) -> None:
    submit(h, "ur", 2, fail=(2,), gated=False)
    h.until(lambda: h.state("ur") == F, "the batch to fail")
    h.rec.deliver()
    h.world.set_outcome("ur2", fail=False)
    h.repo.edit_batch("batches/ur.yaml", restarts={"ur2": 1}, state="UpdateReporting")
    h.sync()
    h.reconcile()
    assert h.state("ur") == F  # the restart runs first
    h.until(lambda: h.state("ur") == C, "the update report after the restart")
    h.rec.deliver()
    assert [m["Subject"] for m in smtp.mailbox.messages] == [
        "Ingest: FAIL -- Submission Failed: ur", "Ingest: OK -- Submission Updated: ur"]
    assert [r.changed for r in h.store.list_reports("ur")] == [(), ("ur2",)]


def test_deleting_the_file_deletes_jobs_at_once(h: Harness, smtp: SmtpServer) -> None:
    submit(h, "del", 2)
    h.until(lambda: set(h.jobs("del").values()) == {P}, "jobs to run")
    h.repo.remove("batches/del.yaml")
    h.repo.commit("admin: delete", who=ADMIN)
    h.sync()
    h.reconcile()
    assert h.state("del") == "Deleted"
    assert h.job_names("del") == []
    h.world.release("del1", "del2")
    h.until_idle()
    assert h.state("del") == "Deleted"
    assert smtp.mailbox.messages == []


def test_an_invalid_file_keeps_the_last_good_spec(h: Harness) -> None:
    submit(h, "inv", 1, gated=False)
    h.until(lambda: h.state("inv") == C, "the batch to complete")
    good = h.batch("inv")
    h.repo.write("batches/inv.yaml", "kind: Batch\nspec: {profile: [\n")
    h.repo.commit("admin: a broken edit", who=ADMIN)
    h.sync()
    h.reconcile()
    now = h.batch("inv")
    assert (now.spec, now.generation, str(now.status.state)) == (
        good.spec, good.generation, C)
    assert now.spec_error.startswith("batches/inv.yaml:")
    assert any(c.type == "Invalid" and c.status for c in now.status.conditions)


def test_reconciler_restart_mid_batch(h: Harness, smtp: SmtpServer) -> None:
    submit(h, "mid", 3)
    h.until(lambda: set(h.jobs("mid").values()) == {P}, "jobs to run")
    h.world.release("mid1")
    h.restart()  # a new process on the same state: nothing is redone
    h.world.release("mid2", "mid3")
    h.sync()
    h.until(lambda: h.state("mid") == C, "the batch to complete after the restart")
    h.rec.deliver()
    assert sorted(h.job_names("mid")) == ["mid-mid1-1", "mid-mid2-1", "mid-mid3-1"]
    assert h.attempts("mid") == {"mid1": 1, "mid2": 1, "mid3": 1}
    assert [m["Subject"] for m in smtp.mailbox.messages] == [
        "Ingest: OK -- Submission Processed: mid"]


def test_a_finished_job_deleted_by_an_operator_is_not_rerun(h: Harness) -> None:
    submit(h, "op", 2)
    h.world.release("op1")
    h.until(lambda: h.jobs("op").get("op1") == C, "op1 to complete")
    operator_deletes_job(h, "op-op1-1")
    h.until(lambda: "op-op1-1" not in h.job_names("op"), "the job to be gone")
    h.world.release("op2")
    h.until(lambda: h.state("op") == C, "the batch to complete")
    assert h.jobs("op") == {"op1": C, "op2": C}
    assert h.attempts("op") == {"op1": 1, "op2": 1}
    assert "op-op1-1" not in h.job_names("op")


def test_a_manifest_edited_after_admission_shows_out_of_sync(h: Harness) -> None:
    """Issue 10 §4 on both backends: the edit is shown, not applied; reverting it clears it."""
    submit(h, "oos", 2, fail=(2,), gated=False)
    h.until(lambda: h.state("oos") == F, "the batch to fail")
    original = (h.repo.path / "batches/oos.yaml").read_text()
    data = yaml.safe_load(original)
    data["spec"]["manifest"]["items"][1]["title"] = "Corrected title"
    h.repo.write("batches/oos.yaml", data)
    h.repo.commit("depositor: correct oos2")
    h.sync()
    h.reconcile()
    [shown] = [c for c in h.batch("oos").status.conditions if c.type == "OutOfSync"]
    assert (shown.status, shown.reason) == (True, "ManifestChangedAfterAdmission")
    assert shown.message.startswith("items oos2 changed in batches/oos.yaml after the batch"
                                    " was admitted: its jobs keep the items they were admitted"
                                    " with")
    assert h.state("oos") == F and h.attempts("oos") == {"oos1": 1, "oos2": 1}
    h.repo.write("batches/oos.yaml", original)
    h.repo.commit("depositor: revert")
    h.sync()
    h.reconcile()
    [shown] = [c for c in h.batch("oos").status.conditions if c.type == "OutOfSync"]
    assert (shown.status, shown.reason) == (False, "Resolved")


def test_a_jobs_output_is_reachable_by_its_name(h: Harness) -> None:
    """Issue 10 §5 on both backends: the tail of what a job wrote, for the page's job row."""
    submit(h, "out", 1, fail=(1,), gated=False)
    h.until(lambda: h.state("out") == F, "the batch to fail")
    [job] = h.job_names("out")
    shown = h.store.job_output(job)
    if h.settings.backend == "local":  # the worker's own words, from its job dir
        assert shown is not None and shown.startswith("--- stderr\n")
        assert "mismatch" in shown
    else:  # kwok runs no container: there is no log to read, and that is no error
        assert shown is None or shown.startswith(("--- pod ", "(the log cannot be read"))
    assert h.store.job_output("no-such-job") is None
    assert h.store.job_output("../../etc") is None
