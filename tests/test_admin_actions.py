"""Admin actions by commit (DESIGN §4) and the queue's settings, on real repos and SMTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.control.notify import deliver
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness


@pytest.fixture
def h(git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> Iterator[Harness]:
    # one Job made ahead per slot (the default is three): the counts below stay short
    harness = Harness(git_repo, tmp_path / "state", smtp.hostport, jobs_ahead=1)
    yield harness
    harness.close()


def items(payloads: PayloadServer, prefix: str, n: int, gated: bool = False) -> list[Any]:
    return [payloads.add(f"{prefix}{i}", f"{prefix} {i}\n".encode(), gated=gated)
            for i in range(1, n + 1)]


def queue(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": spec}


def test_hold_before_start_and_release(h: Harness, payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "a", 2), state="Held"))
    h.repo.commit("submit held")
    h.until_idle()
    assert h.state("a") == "Held"
    assert h.job_names("a") == []
    h.repo.edit_batch("batches/a.yaml", state="Active")
    h.until_idle()
    assert h.state("a") == "Completed"
    events = [e.reason for e in h.store.list_events("a")]
    assert events[:3] == ["SpecApplied", "Held", "SpecApplied"]
    assert "Pending" in events and events[-1] == "Completed"


def test_hold_while_processing_suspends_jobs_not_started(h: Harness,
                                                         payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue(maxActiveJobs=1))
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "h", 3, gated=True)))
    h.repo.commit("submit")
    h.until(lambda: h.jobs("a").get("h1") == "Processing", "first job to start")
    h.repo.edit_batch("batches/a.yaml", state="Held")
    h.sync()
    h.reconcile()
    assert h.state("a") == "Held"
    payloads.release("h1", "h2", "h3")
    h.until(lambda: h.jobs("a")["h1"] == "Completed", "the running job to finish")
    h.until_idle()
    assert h.state("a") == "Held"
    # h2's Job, made ahead to wait for h1's slot, is suspended; h3 has none yet
    assert h.jobs("a") == {"h1": "Completed", "h2": "Held", "h3": "Pending"}
    assert [j.suspended for j in h.store.list_jobs("a") if j.item == "h2"] == [True]
    assert payloads.requests.count("h2") == 0
    h.repo.edit_batch("batches/a.yaml", state="Active")
    h.until_idle()
    assert h.state("a") == "Completed"


def test_restart_is_acted_on_once_per_generation(h: Harness, payloads: PayloadServer,
                                                 smtp: SmtpServer) -> None:
    its = items(payloads, "r", 2)
    payloads.files["r2"] = b"wrong"
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/a.yaml", batch_doc(its))
    h.repo.commit("submit")
    h.until_idle()
    assert h.state("a") == "Failed"
    h.repo.edit_batch("batches/a.yaml", restarts={"r2": 2})
    h.until_idle()
    # two restarts wanted in total: attempts 2 and 3, both fail, then nothing more
    assert h.attempts("a") == {"r1": 1, "r2": 3}
    assert payloads.requests.count("r2") == 3
    for _ in range(3):
        h.full_pass()
    h.restart()
    h.until_idle()
    assert h.attempts("a") == {"r1": 1, "r2": 3}
    assert h.state("a") == "Failed"
    assert len(smtp.mailbox.messages) == 1
    # a restart of a completed item is ignored
    h.repo.edit_batch("batches/a.yaml", restarts={"r1": 1, "r2": 2})
    h.until_idle()
    assert h.attempts("a") == {"r1": 1, "r2": 3}


def test_update_reporting_on_a_completed_batch_is_ignored_visibly(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "u", 1)))
    h.repo.commit("submit")
    h.until_idle()
    h.repo.edit_batch("batches/a.yaml", state="UpdateReporting")
    h.until_idle()
    assert h.state("a") == "Completed"
    assert "UpdateReporting ignored" in h.batch("a").status.message
    assert len(smtp.mailbox.messages) == 1


def test_queue_paused_limits_and_priority(h: Harness, payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue(paused=True, maxActiveBatches=1, maxActiveJobs=2))
    h.repo.write("batches/low.yaml", batch_doc(items(payloads, "l", 1, gated=True),
                                               priority=9))
    h.repo.commit("low priority first")
    h.repo.write("batches/old.yaml", batch_doc(items(payloads, "o", 3, gated=True)))
    h.repo.commit("older, normal priority")
    h.repo.write("batches/new.yaml", batch_doc(items(payloads, "n", 1, gated=True)))
    h.repo.commit("newer, normal priority")
    h.until_idle()
    assert {n: h.state(n) for n in ("low", "old", "new")} == {
        "low": "Pending", "old": "Pending", "new": "Pending"}
    h.repo.write("queue.yaml", queue(paused=False, maxActiveBatches=1, maxActiveJobs=2))
    h.repo.commit("unpause", who=ADMIN)
    h.sync()
    h.reconcile()
    h.reconcile()
    h.rec.tick_jobs()
    # priority 5 before 9, and the older commit first; only two jobs may run, and the
    # third is made ahead, waiting for a slot
    assert {n: h.state(n) for n in ("low", "old", "new")} == {
        "low": "Pending", "old": "Processing", "new": "Pending"}
    assert sorted(str(j.state) for j in h.store.list_jobs("old")) == [
        "Pending", "Processing", "Processing"]
    payloads.release("o1", "o2", "o3")
    h.until(lambda: h.state("old") == "Completed", "old to complete")
    h.until(lambda: h.state("new") == "Processing", "new to start")
    assert h.state("low") == "Pending"
    payloads.release("n1", "l1")
    h.until_idle()
    order = sorted(("low", "old", "new"), key=lambda n: h.batch(n).status.started_at or 0)
    assert order == ["old", "new", "low"]


def test_broken_file_keeps_the_last_good_spec(h: Harness, payloads: PayloadServer,
                                              smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "k", 1), state="Held"))
    h.repo.write("batches/b.yaml", batch_doc(items(payloads, "j", 1)))
    h.repo.commit("submit")
    h.until_idle()
    good = h.batch("a")
    broken = {
        "bad YAML": "apiVersion: batchq.dev/v1\nkind: Batch\nspec: [unclosed\n",
        "schema": "apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: test\n",
        "unknown profile": None,
    }
    for why, text in broken.items():
        if text is None:
            doc = batch_doc(items(payloads, "k", 1), state="Active")
            doc["spec"]["profile"] = "nope"
            h.repo.write("batches/a.yaml", doc)
        else:
            h.repo.write("batches/a.yaml", text)
        rev = h.repo.commit(f"break a: {why}", who=ADMIN)
        h.until_idle()
        now = h.batch("a")
        assert now.spec == good.spec, why
        assert now.generation == good.generation, why
        assert now.status.state == good.status.state, why
        assert now.spec_error.startswith("batches/a.yaml"), now.spec_error
        assert now.source_revision == rev
        invalid = [c for c in now.status.conditions if c.type == "Invalid"]
        assert invalid and invalid[0].status, why
        assert h.state("b") == "Completed"
    assert "profile \"nope\" not found" in h.batch("a").spec_error
    # fixing the file clears the error and applies the spec
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "k", 1)))
    h.repo.commit("fix a", who=ADMIN)
    h.until_idle()
    assert h.batch("a").spec_error == ""
    assert h.state("a") == "Completed"


def test_new_broken_file_shows_an_error_and_runs_nothing(h: Harness,
                                                        payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/x.yaml", "kind: Batch\nspec: {profile: test, priorty: 1}\n")
    h.repo.commit("broken")
    h.until_idle()
    b = h.batch("x")
    assert b.spec is None and b.status.state == "Pending"
    assert "batches/x.yaml:" in b.spec_error
    assert h.job_names("x") == []


def test_mass_deletion_is_refused_visibly(h: Harness, payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue(maxDeletesPerSync=2, maxActiveBatches=10))
    for n in range(4):
        h.repo.write(f"batches/d{n}.yaml", batch_doc(items(payloads, f"d{n}-", 1)))
    h.repo.commit("four batches")
    h.until_idle()
    for n in range(3):
        h.repo.remove(f"batches/d{n}.yaml")
    h.repo.commit("oops: delete three", who=ADMIN)
    h.until_idle()
    assert {h.state(f"d{n}") for n in range(4)} == {"Completed"}
    refused = h.store.load_sync_state().deletion_refused
    assert "refused to delete 3 batches" in refused and "maxDeletesPerSync=2" in refused
    assert "(d0, d1, d2): more than" in refused  # which batches: the admin can check the commit
    assert "DeletionRefused" in [e.reason for e in h.store.list_events("d0")]
    h.repo.write("queue.yaml", queue(maxDeletesPerSync=3, maxActiveBatches=10))
    h.repo.commit("allow it", who=ADMIN)
    h.until_idle()
    assert [h.state(f"d{n}") for n in range(4)] == ["Deleted", "Deleted", "Deleted",
                                                    "Completed"]
    assert h.store.load_sync_state().deletion_refused == ""


def test_deleted_batch_is_removed_after_retention(h: Harness, payloads: PayloadServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue(deletedRetentionSeconds=0))
    h.repo.write("batches/a.yaml", batch_doc(items(payloads, "z", 1, gated=True)))
    h.repo.commit("submit")
    h.until(lambda: h.jobs("a").get("z1") == "Processing", "job to run")
    h.repo.remove("batches/a.yaml")
    h.repo.commit("delete while running", who=ADMIN)
    h.sync()
    h.reconcile()
    assert h.state("a") == "Deleted"
    assert h.job_names("a") == []  # jobs deleted at once, the running one killed
    h.until_idle()
    assert h.store.get_batch("a") is None


def test_smtp_down_reports_wait_in_the_outbox(git_repo: GitRepo, tmp_path: Path,
                                              payloads: PayloadServer) -> None:
    smtp = SmtpServer()  # not started yet: connections are refused
    h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    try:
        h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
        h.repo.write("batches/a.yaml", batch_doc(items(payloads, "s", 1)))
        h.repo.commit("submit")
        h.until_idle()
        assert h.state("a") == "Completed"
        waiting = h.store.pending_outbox(now=1e12)
        assert len(waiting) == 1 and waiting[0].attempts >= 1
        assert "refused" in waiting[0].last_error.lower()
        smtp.start()
        # the loop delivers once the back-off is due; `now` stands in for the wait
        sent = deliver(h.store, smtp=smtp.hostport, outbox_dir=tmp_path / "x", now=1e12)
        assert sent == 1
        assert [m["Subject"] for m in smtp.mailbox.messages] == [
            "Ingest: OK -- Submission Processed: a"]
        h.until_idle()
        assert len(smtp.mailbox.messages) == 1
    finally:
        smtp.stop()
        h.close()


def test_without_smtp_reports_are_eml_files(git_repo: GitRepo, tmp_path: Path,
                                            payloads: PayloadServer) -> None:
    h = Harness(git_repo, tmp_path / "state", None)
    try:
        h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
        h.repo.write("batches/a.yaml", batch_doc(items(payloads, "e", 2)))
        h.repo.commit("submit")
        h.until_idle()
        files = sorted((tmp_path / "state" / "outbox").glob("*.eml"))
        uid = h.batch("a").uid
        assert len(uid) == 12 and [f.name for f in files] == [f"a_{uid}_1.eml"]
        text = files[0].read_text()
        assert "Subject: Ingest: OK -- Submission Processed: a" in text
        assert 'filename="completed.json"' in text
    finally:
        h.close()
