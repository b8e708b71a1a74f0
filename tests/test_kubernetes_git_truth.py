"""Issue 9 §0 on a real API server: Git is the only source of truth. What kubectl does to
a Batch by hand (delete it, edit its spec, edit its status) is put back from Git and the
records kept beside it; no Job runs again and no report is emailed twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures import SmtpServer, batch_doc, profile_doc, wait_for
from tests.harness import Harness
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes


def kubectl(cluster: Any, h: Harness, *args: str) -> Any:
    return cluster.kubectl("-n", h.settings.namespace, *args, check=False)


def batch_object(cluster: Any, h: Harness, name: str) -> dict[str, Any] | None:
    out = kubectl(cluster, h, "get", "batch", name, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else None


def job_names(cluster: Any, h: Harness, batch: str) -> list[str]:
    out = kubectl(cluster, h, "get", "jobs", "-l", f"batchq.dev/batch={batch}", "-o", "json")
    return sorted(j["metadata"]["name"] for j in json.loads(out.stdout)["items"])


def finished_batch(h: Harness, world: KubeWorld, smtp: SmtpServer) -> dict[str, str]:
    """`ops`: three items, one failing; Failed, its FAIL report emailed once."""
    items = [world.item(f"k{i}", fail=i == 3, gated=False) for i in (1, 2, 3)]
    h.repo.write("profiles/test.yaml", profile_doc(world.prefix))
    h.repo.write("batches/ops.yaml", batch_doc(items))
    h.repo.commit("submit")
    h.sync()
    h.until(lambda: h.state("ops") == "Failed", "the batch to finish", timeout=120)
    h.full_pass()
    h.rec.deliver()
    assert smtp.mailbox.subjects() == ["Ingest: FAIL -- Submission Failed: ops"]
    return h.jobs("ops")


def test_a_batch_deleted_by_hand_is_applied_again_and_nothing_runs_or_mails_twice(
        kube: tuple[Harness, KubeWorld, Any], smtp: SmtpServer) -> None:
    h, world, cluster = kube
    items = finished_batch(h, world, smtp)
    assert items == {"k1": "Completed", "k2": "Completed", "k3": "Failed"}
    old_uid = batch_object(cluster, h, "ops")["metadata"]["uid"]  # type: ignore[index]

    assert kubectl(cluster, h, "delete", "batch", "ops").returncode == 0
    wait_for(lambda: (batch_object(cluster, h, "ops") or {}).get("status"), 60,
             step=h.full_pass, what="the Batch to be applied again from Git, with its status")
    back = batch_object(cluster, h, "ops")
    assert back is not None and back["metadata"]["uid"] != old_uid
    assert back["spec"]["manifest"]["itemsFrom"]["count"] == 3  # the items: in ops-spec
    assert back["status"]["state"] == "Failed"
    assert back["status"]["counts"] == {"Completed": 2, "Failed": 1}
    # the garbage collector took the old Jobs with the old object; none is made again
    wait_for(lambda: not job_names(cluster, h, "ops"), 60, step=h.full_pass,
             what="the garbage collector to take the Jobs of the deleted object")
    for _ in range(3):
        h.full_pass()
    assert job_names(cluster, h, "ops") == []
    assert h.jobs("ops") == items and h.state("ops") == "Failed"
    assert h.attempts("ops") == {"k1": 1, "k2": 1, "k3": 1}
    assert [r.kind for r in h.store.list_reports("ops")] == ["initial"]
    h.rec.deliver()
    assert len(smtp.mailbox.messages) == 1  # no second report
    repaired = [e.message for e in h.store.list_events("ops") if e.reason == "Repaired"]
    assert repaired and repaired[0].startswith("the Batch object was deleted by hand")


def test_a_spec_or_status_edited_by_hand_is_put_back_and_drives_nothing(
        kube: tuple[Harness, KubeWorld, Any], smtp: SmtpServer) -> None:
    h, world, cluster = kube
    items = finished_batch(h, world, smtp)
    generation = h.batch("ops").generation

    patched = kubectl(cluster, h, "patch", "batch", "ops", "--type", "merge", "-p",
                      json.dumps({"spec": {"state": "Held", "priority": 1,
                                           "restarts": {"k3": 3}}}))
    assert patched.returncode == 0, patched.stderr
    patched = kubectl(cluster, h, "patch", "batch", "ops", "--subresource", "status",
                      "--type", "merge", "-p",
                      json.dumps({"status": {"state": "Processing", "reportRound": 0,
                                             "settled": False}}))
    assert patched.returncode == 0, patched.stderr

    def put_back() -> bool:
        obj = batch_object(cluster, h, "ops") or {}
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        return (spec.get("state", "Active") == "Active" and "restarts" not in spec
                and spec.get("priority", 5) == 5 and status.get("state") == "Failed")
    wait_for(put_back, 60, step=h.full_pass, what="the hand edits to be taken back")
    for _ in range(3):
        h.full_pass()
    batch = h.batch("ops")
    assert batch.spec is not None and str(batch.spec.state) == "Active"
    assert batch.spec.restarts == {} and batch.generation == generation
    assert h.jobs("ops") == items and h.attempts("ops")["k3"] == 1  # no restart ran
    assert job_names(cluster, h, "ops") == ["ops-k1-1", "ops-k2-1", "ops-k3-1"]
    h.rec.deliver()
    assert len(smtp.mailbox.messages) == 1  # the hand-made Processing sent no second FAIL
    reasons = [e.message.split(" by hand")[0] for e in h.store.list_events("ops")
               if e.reason == "Repaired"]
    assert reasons[0] in ("the Batch spec was edited", "the Batch status was edited")
    assert set(reasons) <= {"the Batch spec was edited", "the Batch status was edited"}

    # a later commit is applied on top of Git's spec, not of the hand edit
    h.repo.write("batches/ops.yaml", batch_doc(
        [world.item(f"k{i}", fail=i == 3, gated=False) for i in (1, 2, 3)], priority=3))
    h.repo.commit("admin: priority 3")
    h.full_pass()
    obj = batch_object(cluster, h, "ops")
    assert obj is not None and obj["spec"]["priority"] == 3
    assert obj["spec"].get("state", "Active") == "Active" and "restarts" not in obj["spec"]
    assert h.batch("ops").generation == generation + 1


def test_finished_jobs_are_cleaned_up_by_their_ttl_and_every_result_stays(
        kube: tuple[Harness, KubeWorld, Any], smtp: SmtpServer) -> None:
    h, world, cluster = kube
    profile = profile_doc(world.prefix)
    profile["spec"]["job"] = {"ttlSecondsAfterFinished": 1}
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/ttl.yaml", batch_doc(
        [world.item(f"t{i}", fail=i == 2, gated=False) for i in (1, 2)]))
    h.repo.commit("jobs cleaned up a second after they finish")
    h.sync()
    h.until(lambda: h.state("ttl") == "Failed", "the batch to finish", timeout=120)
    wait_for(lambda: not job_names(cluster, h, "ttl"), 60, step=h.full_pass,
             what="the TTL-after-finished controller to delete the finished Jobs")
    for _ in range(3):
        h.full_pass()
    assert job_names(cluster, h, "ttl") == []  # a finished Job deleted is not made again
    assert h.jobs("ttl") == {"t1": "Completed", "t2": "Failed"}
    assert h.store.list_items("ttl", state="Failed")[0].message.startswith("digest mismatch")
    assert h.batch("ttl").status.counts == {"Completed": 1, "Failed": 1}
    h.rec.deliver()
    assert len(smtp.mailbox.messages) == 1


def test_a_batch_stored_before_records_is_recorded_and_survives_a_hand_delete(
        kube: tuple[Harness, KubeWorld, Any], smtp: SmtpServer) -> None:
    """As the store left a finished batch before this change: status on the object, item
    and report ConfigMaps owned by it, no `old-spec` / `old-status`."""
    h, world, cluster = kube
    ns = h.settings.namespace
    item = world.item("o1", gated=False)
    h.repo.write("profiles/test.yaml", profile_doc(world.prefix))
    h.repo.write("batches/old.yaml", batch_doc([item]))
    h.repo.commit("a batch stored by the earlier store")
    a = "batchq.dev/"
    cluster.request("POST", f"/apis/batchq.dev/v1/namespaces/{ns}/batches", {
        "apiVersion": "batchq.dev/v1", "kind": "Batch",
        "metadata": {"name": "old", "annotations": {
            f"{a}source-path": "batches/old.yaml", f"{a}source-revision": "0" * 40,
            f"{a}submitted-at": "1000.0", f"{a}spec-error": "", f"{a}spec-hash": "earlier",
            f"{a}incarnation": "0123456789ab"}},
        "spec": batch_doc([item])["spec"]})
    uid = cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{ns}/batches/old")[
        "metadata"]["uid"]
    assert kubectl(cluster, h, "patch", "batch", "old", "--subresource", "status", "--type",
                   "merge", "-p", json.dumps({"status": {
                       "state": "Completed", "observedGeneration": 1, "itemsLoaded": True,
                       "itemCount": 1, "counts": {"Completed": 1}, "reportRound": 1,
                       "settled": True}})).returncode == 0
    owner = [{"apiVersion": "batchq.dev/v1", "kind": "Batch", "name": "old", "uid": uid,
              "controller": True, "blockOwnerDeletion": True}]
    record = {"item": item, "seq": 0, "state": "Completed", "attempts": 1, "message": "",
              "jobName": "old-o1-1", "startedAt": 1000.0, "finishedAt": 1001.0}
    report = {"id": "old:0123456789ab:1", "batch": "old", "kind": "initial",
              "createdAt": 1002.0, "subject": "Ingest: OK -- Submission Processed: old",
              "recipients": ["jane@example.org"], "body": "body", "changed": [],
              "jobStates": {"o1": "Completed"}, "emailed": True}
    for name, labels, data, extra in (
            ("old-items-0000", {f"{a}kind": "items"},
             {"items.json": json.dumps([record])}, {}),
            ("old-report-1-0123456789ab",
             {f"{a}kind": "report", f"{a}outbox": "delivered", f"{a}incarnation":
              "0123456789ab"}, {"report.json": json.dumps(report)},
             {"binaryData": {"message.eml": "U3ViamVjdDogb2sNCg0KYm9keQ0K"}})):
        cluster.request("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "metadata": {"name": name, "labels": {**labels, f"{a}batch": "old"},
                         "annotations": {f"{a}delivered-at": "1003"},
                         "ownerReferences": owner},
            "data": data, **extra})

    h.full_pass()  # the first sync records it, and lets go of its ConfigMaps
    assert h.state("old") == "Completed" and h.jobs("old") == {"o1": "Completed"}
    for name in ("old-items-0000", "old-report-1-0123456789ab"):
        cm = cluster.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}")
        assert not cm["metadata"].get("ownerReferences"), name
    assert kubectl(cluster, h, "delete", "batch", "old").returncode == 0
    wait_for(lambda: (batch_object(cluster, h, "old") or {}).get("status"), 60,
             step=h.full_pass, what="the Batch to be applied again from its records")
    for _ in range(3):
        h.full_pass()
    assert h.state("old") == "Completed" and h.jobs("old") == {"o1": "Completed"}
    assert [r.id for r in h.store.list_reports("old")] == ["old:0123456789ab:1"]
    assert job_names(cluster, h, "old") == []
    h.rec.deliver()
    assert smtp.mailbox.messages == []  # reported before: never again


def test_a_job_that_finished_and_expired_while_the_reconciler_was_away_is_recorded_not_rerun(
        kube: tuple[Harness, KubeWorld, Any], smtp: SmtpServer) -> None:
    h, world, cluster = kube
    profile = profile_doc(world.prefix)
    profile["spec"]["job"] = {"ttlSecondsAfterFinished": 1}
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/away.yaml", batch_doc([world.item("a1")]))  # held running
    h.repo.commit("one job")
    h.sync()
    h.until(lambda: h.jobs("away") == {"a1": "Processing"}, "the job to run", timeout=120)
    h.rec.close()  # the reconciler is away while the job finishes and its TTL runs out
    world.release("a1")

    def expired() -> bool:
        obj = json.loads(kubectl(cluster, h, "get", "jobs", "-o", "json").stdout)["items"]
        return not obj or bool(obj[0]["metadata"].get("deletionTimestamp"))
    wait_for(expired, 60, what="the TTL-after-finished controller to delete the Job")
    with world.lock:  # from now on a pod of this item would run, held, forever
        world.released.discard("a1")
    h.restart()
    h.until(lambda: h.state("away") == "Completed", "the result to be recorded", timeout=60)
    wait_for(lambda: not job_names(cluster, h, "away"), 60, step=h.full_pass,
             what="the Job to go once its result is recorded")
    for _ in range(3):
        h.full_pass()
    assert job_names(cluster, h, "away") == []  # not made again
    assert h.jobs("away") == {"a1": "Completed"} and h.attempts("away") == {"a1": 1}
    h.full_pass()
    h.rec.deliver()
    assert smtp.mailbox.subjects() == ["Ingest: OK -- Submission Processed: away"]
