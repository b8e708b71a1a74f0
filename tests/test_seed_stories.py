"""The four stories of the original use cases (shared/seed), step by step.

Each diagram step is a commit or a reconcile pass; after each the test asserts the batch
state, every job state, and the emails the loopback SMTP server received.
"""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

import pytest

from tests.fixtures import ADMIN, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness

BATCH = "batches/maps.yaml"
P = "Processing"
C = "Completed"
F = "Failed"


@pytest.fixture
def h(world_and_harness: tuple[Any, Harness]) -> Harness:
    return world_and_harness[1]


def submit_three(h: Harness, *, fail_third: bool) -> None:
    items = [h.world.item(f"job{i}", fail=fail_third and i == 3) for i in (1, 2, 3)]
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    h.repo.write(BATCH, batch_doc(items))
    h.repo.commit("depositor: submit manifest with 3 items")


def attachment(msg: Message, name: str) -> list[dict[str, object]]:
    for part in msg.walk():
        if part.get_filename() == name:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return list(json.loads(payload))
    raise AssertionError(f"no attachment {name}")


def body(msg: Message) -> str:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode().replace("\r\n", "\n")


def run_to_first_report(h: Harness, smtp: SmtpServer, *, fail_third: bool) -> None:
    """The steps every story shares, from submission to the first report."""
    submit_three(h, fail_third=fail_third)
    # User submits manifest with 3 items -> Batch: Pending
    h.sync()
    assert h.state("maps") == "Pending"
    assert h.jobs("maps") == {}
    # Batch Queue starts Batch -> Processing
    h.reconcile()
    assert h.state("maps") == P
    # Batch downloads manifest and creates 3 jobs (Pending)
    h.reconcile()
    assert h.jobs("maps") == {"job1": "Pending", "job2": "Pending", "job3": "Pending"}
    assert len(h.job_names("maps")) == 3
    # Jobs begin
    h.until(lambda: set(h.jobs("maps").values()) == {P}, "every job to start")
    assert h.state("maps") == P
    assert h.jobs("maps") == {"job1": P, "job2": P, "job3": P}
    # Job 2 completes
    h.world.release("job2")
    h.until(lambda: h.jobs("maps")["job2"] == C, "job2 to complete")
    assert h.state("maps") == P
    assert h.jobs("maps") == {"job1": P, "job2": C, "job3": P}
    # Job 3 completes / fails
    h.world.release("job3")
    third = F if fail_third else C
    h.until(lambda: h.jobs("maps")["job3"] == third, f"job3 to be {third}")
    assert h.state("maps") == P
    assert h.jobs("maps") == {"job1": P, "job2": C, "job3": third}
    # Job 1 completes -> Batch: Reporting
    h.world.release("job1")
    h.until(lambda: h.jobs("maps")["job1"] == C, "job1 to complete")
    assert h.state("maps") == "Reporting"
    assert smtp.mailbox.messages == []
    # Batch reports job status to depositor, then Completed / Failed
    h.reconcile()
    assert h.state("maps") == (F if fail_third else C)
    assert h.rec.deliver() == 1
    assert len(smtp.mailbox.messages) == 1


def test_successful_batch(h: Harness, smtp: SmtpServer) -> None:
    run_to_first_report(h, smtp, fail_third=False)
    msg = smtp.mailbox.messages[0]
    assert msg["Subject"] == "Ingest: OK -- Submission Processed: maps"
    assert msg["To"] == "jane@example.org"
    assert msg["From"] == "batchq@example.org"
    assert "ops@example.org" in smtp.mailbox.envelopes[0][1]  # bcc admins
    assert msg["Bcc"] is None  # not shown to the depositor
    text = body(msg)
    assert "Jobs: 3   Completed: 3   Failed: 0" in text
    for item in ("job1", "job2", "job3"):
        assert any(line.split()[:3] == [item, "Completed", "1"] for line in text.splitlines())
    assert [i["id"] for i in attachment(msg, "completed.json")] == ["job1", "job2", "job3"]
    assert attachment(msg, "failed.json") == []
    assert h.jobs("maps") == {"job1": C, "job2": C, "job3": C}
    # nothing more happens without a new commit: no second email
    h.until_idle()
    assert len(smtp.mailbox.messages) == 1
    assert h.state("maps") == C


def test_failed_batch_then_deleted(h: Harness, smtp: SmtpServer) -> None:
    run_to_first_report(h, smtp, fail_third=True)
    msg = smtp.mailbox.messages[0]
    assert msg["Subject"] == "Ingest: FAIL -- Submission Failed: maps"
    text = body(msg)
    assert "Jobs: 3   Completed: 2   Failed: 1" in text
    assert "digest mismatch" in text
    failed = attachment(msg, "failed.json")
    assert [i["id"] for i in failed] == ["job3"]
    assert "digest mismatch" in str(failed[0]["message"])
    assert [i["id"] for i in attachment(msg, "completed.json")] == ["job1", "job2"]
    assert h.jobs("maps") == {"job1": C, "job2": C, "job3": F}
    # Admin deletes the batch after deciding resubmission is not possible
    h.repo.remove(BATCH)
    h.repo.commit("admin: delete maps", who=ADMIN)
    h.sync()
    h.reconcile()
    assert h.state("maps") == "Deleted"
    assert h.job_names("maps") == []
    assert len(smtp.mailbox.messages) == 1


def test_failed_batch_with_successful_retry(h: Harness, smtp: SmtpServer) -> None:
    run_to_first_report(h, smtp, fail_third=True)
    # the depositor uploads the payload again; the admin restarts job 3
    h.world.set_outcome("job3", fail=False)
    h.repo.edit_batch(BATCH, restarts={"job3": 1})
    h.sync()
    h.reconcile()
    # Job 3 is restarted: the batch stays Failed
    assert h.state("maps") == F
    assert h.attempts("maps")["job3"] == 2
    assert h.jobs("maps")["job3"] in ("Pending", P, C)
    # Job 3 completes; the batch is still Failed, and no email yet
    h.until(lambda: h.jobs("maps")["job3"] == C, "job3 attempt 2 to complete")
    assert h.state("maps") == F
    assert h.jobs("maps") == {"job1": C, "job2": C, "job3": C}
    assert len(smtp.mailbox.messages) == 1
    # reading the same commit again restarts nothing
    h.sync()
    h.reconcile()
    assert h.attempts("maps")["job3"] == 2
    # Admin changes batch state to UpdateReporting
    h.repo.edit_batch(BATCH, state="UpdateReporting")
    h.sync()
    h.reconcile()
    assert h.state("maps") == "UpdateReporting"
    # Email to the depositor shows the status change for job 3, then Completed
    h.reconcile()
    assert h.state("maps") == C
    assert h.rec.deliver() == 1
    assert len(smtp.mailbox.messages) == 2
    update = smtp.mailbox.messages[1]
    assert update["Subject"] == "Ingest: OK -- Submission Updated: maps"
    text = body(update)
    assert "Changed since the last report:\n  job3: Failed -> Completed\n" in text
    assert "Jobs: 3   Completed: 3   Failed: 0" in text
    assert [i["id"] for i in attachment(update, "completed.json")] == ["job1", "job2", "job3"]
    reports = h.store.list_reports("maps")
    assert [(r.kind, r.changed, r.emailed) for r in reports] == [
        ("initial", (), True), ("update", ("job3",), True)]
    h.until_idle()
    assert len(smtp.mailbox.messages) == 2
    assert h.attempts("maps") == {"job1": 1, "job2": 1, "job3": 2}


def test_failed_batch_with_unsuccessful_retry(h: Harness, smtp: SmtpServer) -> None:
    run_to_first_report(h, smtp, fail_third=True)
    # Job 3 is restarted (nothing was fixed)
    h.repo.edit_batch(BATCH, restarts={"job3": 1})
    h.sync()
    h.reconcile()
    assert h.state("maps") == F
    assert h.attempts("maps")["job3"] == 2
    assert h.jobs("maps")["job3"] in ("Pending", P, F)
    # Job 3 fails again
    h.until(lambda: h.jobs("maps")["job3"] == F and h.attempts("maps")["job3"] == 2,
            "job3 attempt 2 to fail")
    assert h.state("maps") == F
    assert h.jobs("maps") == {"job1": C, "job2": C, "job3": F}
    # Admin changes batch state to UpdateReporting
    h.repo.edit_batch(BATCH, state="UpdateReporting")
    h.sync()
    h.reconcile()
    assert h.state("maps") == "UpdateReporting"
    # No job state changed since the last report: no email; the batch is Failed again
    h.reconcile()
    assert h.state("maps") == F
    assert h.rec.deliver() == 0
    h.until_idle()
    assert len(smtp.mailbox.messages) == 1
    reports = h.store.list_reports("maps")
    assert [(r.kind, r.changed, r.emailed) for r in reports] == [
        ("initial", (), True), ("update", (), False)]
    # Admin deletes the batch
    h.repo.remove(BATCH)
    h.repo.commit("admin: delete maps", who=ADMIN)
    h.until_idle()
    assert h.state("maps") == "Deleted"
    assert h.job_names("maps") == []
    assert len(smtp.mailbox.messages) == 1
