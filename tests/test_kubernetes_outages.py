"""Faults a reconciler on a real API server must ride through (issue 9 §0 and §3).

Every test drives real `batchq` processes against the session's kube-apiserver: the API
server killed for 20 s in the middle of a batch, the Batch CRD not installed, `status`
run again and again, and two replicas handing the Lease over in the middle of a pass made
slow on purpose. Each replica authenticates as its own user, so the API server's audit
log (tests/cluster/controlplane.py) says who wrote what, and when.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.kubernetes.apierrors import CRD_MISSING
from tests.fixtures import GitRepo, SmtpServer, batch_doc, batchq, profile_doc, wait_for
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "deploy" / "crds" / "batches.batchq.dev.yaml"
FAST_LEASE = ("--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5")


class Replica:
    """One `batchq run` process, as `user` in the API server's eyes."""

    def __init__(self, cp: Any, ns: str, repo: GitRepo, tmp: Path, smtp: SmtpServer,
                 user: str, identity: str, failpoint: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.identity = identity
        self.log = tmp / f"{identity}.log"
        full = {**os.environ, **(env or {}), "BATCHQ_FAILPOINTS": failpoint}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--backend", "kubernetes",
                 "--namespace", ns, "--kubeconfig", str(cp.user_kubeconfig(user)),
                 "--repo", str(repo.path), "--state", str(tmp / f"state-{identity}"),
                 "--smtp", smtp.hostport, "--interval", "0.5",
                 "--leader-identity", identity, *FAST_LEASE, "-v"],
                stdout=out, stderr=subprocess.STDOUT, env=full)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, as a rollout does; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.identity} did not stop on SIGTERM:\n{self.text()}") from None


def queue_doc(max_active_jobs: int) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue",
            "spec": {"maxActiveJobs": max_active_jobs}}


def batch_state(cp: Any, ns: str, name: str) -> str | None:
    try:
        cr = cp.request("GET", f"/apis/batchq.dev/v1/namespaces/{ns}/batches/{name}")
    except OSError:  # 404 before it exists; no answer while the API server is down
        return None
    return str((cr.get("status") or {}).get("state") or "") or None


def jobs_of(cp: Any, ns: str, batch: str) -> list[dict[str, Any]]:
    return list(cp.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs"
                                  f"?labelSelector=batchq.dev/batch={batch}")["items"])


def lease(cp: Any, ns: str) -> dict[str, Any]:
    return dict(cp.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}"
                                  "/leases/batchq-reconciler")["spec"])


def holder(cp: Any, ns: str) -> str:
    try:
        return str(lease(cp, ns).get("holderIdentity") or "")
    except OSError:
        return ""


def writes(cp: Any, ns: str, user: str | None = None, *,
           resource: str | None = None) -> list[dict[str, Any]]:
    """Audited writes in `ns` (by `user`), of any resource but the Lease, or of `resource`."""
    out = []
    for e in cp.audited_writes():
        ref = e.get("objectRef") or {}
        if ref.get("namespace") != ns or (user and e["user"]["username"] != user):
            continue
        if resource is None and ref.get("resource") == "leases":
            continue
        if resource is not None and ref.get("resource") != resource:
            continue
        out.append(e)
    return out


def created_jobs(cp: Any, ns: str, user: str | None = None) -> list[str]:
    return [e["objectRef"].get("name", "") for e in writes(cp, ns, user, resource="jobs")
            if e["verb"] == "create" and (e.get("responseStatus") or {}).get("code") == 201]


def emails_for(smtp: SmtpServer, batch: str) -> list[str]:
    return [s for s in smtp.mailbox.subjects() if s.endswith(f": {batch}")]


def test_status_exits_cleanly_every_time(k8s_cluster: Any, k8s_namespace: str,
                                         git_repo: GitRepo, tmp_path: Path) -> None:
    """`status` starts watch threads; it stops and joins them before the interpreter exits
    (a thread still reading a socket at exit aborted it: exit 134, Fatal Python error)."""
    k8s_cluster.request("POST", f"/api/v1/namespaces/{k8s_namespace}/configmaps", {
        "metadata": {"name": "something", "labels": {"batchq.dev/kind": "test"}}, "data": {}})
    for run in range(10):
        out = batchq("status", "--backend", "kubernetes", "--namespace", k8s_namespace,
                     "--kubeconfig", str(k8s_cluster.kubeconfig), "--state",
                     str(tmp_path / "state"), timeout=60)
        assert "Fatal Python error" not in out.stderr, f"run {run}: {out.stderr}"
        assert out.returncode == 0, f"run {run}: exit {out.returncode}: {out.stderr}"


def test_a_missing_crd_is_named_and_run_waits_for_it(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    world = KubeWorld(k8s_cluster.api_client(), k8s_namespace)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/late.yaml", batch_doc([world.item("c1", gated=False)]))
    git_repo.commit("a batch before the CRD")
    common = ("--backend", "kubernetes", "--namespace", k8s_namespace, "--kubeconfig",
              str(k8s_cluster.kubeconfig), "--state", str(tmp_path / "state"))
    run: Replica | None = None
    try:
        k8s_cluster.kubectl("delete", "-f", str(CRD), "--wait=true")
        try:
            once = batchq("reconcile", *common, "--repo", str(git_repo.path), "--once",
                          timeout=90)
            assert once.returncode == 1, once.stderr
            assert once.stderr.strip().splitlines() == [f"batchq: {CRD_MISSING}"]
            status = batchq("status", *common, timeout=90)
            assert status.returncode == 1, status.stderr
            assert status.stderr.strip().splitlines() == [f"batchq: {CRD_MISSING}"]
            assert "kubectl apply -f deploy/crds/batches.batchq.dev.yaml" in CRD_MISSING
            assert CRD.is_file()

            run = Replica(k8s_cluster, k8s_namespace, git_repo, tmp_path, smtp,
                          "batchq-replica-a", "a")
            wait_for(lambda: run is not None and run.text().count(CRD_MISSING) >= 2, 60,
                     what="run to say twice that the CRD is missing",
                     detail=lambda: run.text() if run else "")
            assert run.alive(), run.text()
        finally:
            k8s_cluster.kubectl("apply", "-f", str(CRD))
            k8s_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                "crd/batches.batchq.dev")
        wait_for(lambda: batch_state(k8s_cluster, k8s_namespace, "late") == "Completed", 120,
                 what="the batch, once the CRD is there", detail=run.text)
        assert run.stop() == 0, run.text()
    finally:
        if run is not None and run.alive():
            run.proc.kill()
        world.close()


def test_the_api_server_killed_for_20_s_mid_batch(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    """The reconciler stays up through the outage, with back-off, and finishes the batch
    afterwards: one Job per item, one email."""
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"o{i}" for i in range(8)]
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("queue.yaml", queue_doc(len(names)))
    git_repo.write("batches/outage.yaml", batch_doc([world.item(n) for n in names]))
    git_repo.commit("a batch")
    rec = Replica(k8s_cluster, ns, git_repo, tmp_path, smtp, "batchq-replica-a", "a")
    try:
        wait_for(lambda: len(jobs_of(k8s_cluster, ns, "outage")) == len(names), 90,
                 what="every Job", detail=rec.text)
        world.release(*names[:4])  # half of them finish as the server goes away
        k8s_cluster.kill_apiserver()
        down = rec.proc.wait  # the process must not end: waiting for it must time out
        with pytest.raises(subprocess.TimeoutExpired):
            down(20)
        assert rec.alive()
        k8s_cluster.start_apiserver_again()
        world.release(*names[4:])
        wait_for(lambda: batch_state(k8s_cluster, ns, "outage") == "Completed", 180,
                 what="the batch after the outage", detail=rec.text)
        wait_for(lambda: emails_for(smtp, "outage"), 60, what="the report", detail=rec.text)
        assert rec.alive(), rec.text()
        log = rec.text()
        assert "cannot reach the API server" in log or "reconcile pass failed" in log, log
        jobs = jobs_of(k8s_cluster, ns, "outage")
        per_item = Counter(j["metadata"]["labels"]["batchq.dev/item"] for j in jobs)
        assert per_item == dict.fromkeys(names, 1), per_item
        created = created_jobs(k8s_cluster, ns, "batchq-replica-a")
        assert sorted(created) == sorted(j["metadata"]["name"] for j in jobs)
        assert rec.stop() == 0, rec.text()
        assert emails_for(smtp, "outage") == ["Ingest: OK -- Submission Processed: outage"]
        assert holder(k8s_cluster, ns) == ""  # released on SIGTERM
    finally:
        if rec.alive():
            rec.proc.kill()
        world.close()


def test_a_pass_longer_than_the_lease_and_a_hand_over_in_the_middle_of_it(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    """A leader in a pass several Leases long keeps its Lease (renewed from its own thread)
    and the stand-by writes nothing; SIGTERM mid-pass stops its writes at once and releases
    the Lease, the stand-by takes over and finishes. Per the audit log, no write of the
    old leader comes after the first of the new one, no item gets two Jobs, and one email
    goes out. The leader creates its Jobs two at a time (issue 9 §4): the SIGTERM comes
    with creates in flight, and those the old leader made but could not record are
    adopted by the new one, never made again."""
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"s{i:02d}" for i in range(16)]
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("queue.yaml", queue_doc(len(names)))
    git_repo.commit("profile")
    # 16 Jobs created 2 at a time, each 1 s slow: a pass of 8 s, the Lease is 3 s
    slow, two = "before-job-create:sleep=1", {"BATCHQ_KUBE_CONCURRENCY": "2"}
    a = Replica(k8s_cluster, ns, git_repo, tmp_path, smtp, "batchq-replica-a", "a", slow, two)
    b: Replica | None = None
    try:
        wait_for(lambda: holder(k8s_cluster, ns) == "a", 60, what="a to lead", detail=a.text)
        b = Replica(k8s_cluster, ns, git_repo, tmp_path, smtp, "batchq-replica-b", "b", slow,
                    two)
        git_repo.write("batches/slow.yaml", batch_doc([world.item(n, gated=False)
                                                       for n in names]))
        git_repo.commit("a batch of 16")
        wait_for(lambda: len(created_jobs(k8s_cluster, ns, "batchq-replica-a")) >= 9, 60,
                 what="a's slow pass to run past one Lease duration", detail=a.text)
        assert writes(k8s_cluster, ns, "batchq-replica-b") == []  # b waited
        assert holder(k8s_cluster, ns) == "a"
        assert lease(k8s_cluster, ns)["leaseTransitions"] == 0
        assert a.stop() == 0, a.text()  # mid-pass: some Jobs are not made yet
        assert len(created_jobs(k8s_cluster, ns, "batchq-replica-a")) < len(names), (
            "the pass was over before the hand-over; make it slower")
        wait_for(lambda: batch_state(k8s_cluster, ns, "slow") == "Completed", 120,
                 what="the batch, finished by b", detail=lambda: b.text() if b else "")
        wait_for(lambda: emails_for(smtp, "slow"), 60, what="the report")
        assert holder(k8s_cluster, ns) == "b"

        by_a = writes(k8s_cluster, ns, "batchq-replica-a")
        by_b = writes(k8s_cluster, ns, "batchq-replica-b")
        assert by_a and by_b
        assert max(e["stageTimestamp"] for e in by_a) < min(e["requestReceivedTimestamp"]
                                                            for e in by_b)
        jobs = jobs_of(k8s_cluster, ns, "slow")
        per_item = Counter(j["metadata"]["labels"]["batchq.dev/item"] for j in jobs)
        assert per_item == dict.fromkeys(names, 1), per_item
        assert Counter(created_jobs(k8s_cluster, ns)) == Counter(
            j["metadata"]["name"] for j in jobs)  # every Job created once, by one of them
        assert b.stop() == 0, b.text()
        assert emails_for(smtp, "slow") == ["Ingest: OK -- Submission Processed: slow"]
    finally:
        for r in (a, b):
            if r is not None and r.alive():
                r.proc.kill()
        world.close()


def test_a_forbidden_reconciler_says_so_and_retries_until_it_is_allowed(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    """A 403 (RBAC not there yet, or an API server that restarted and has not loaded it)
    does not end `run`: it is logged, in one line, and retried with back-off."""
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/allowed.yaml", batch_doc([world.item("f1", gated=False)]))
    git_repo.commit("a batch")
    rec = Replica(k8s_cluster, ns, git_repo, tmp_path, smtp, "batchq-limited", "a")
    try:
        wait_for(lambda: "the API server refused the request (403 Forbidden): right after"
                 in rec.text(), 90, what="the 403 in the log", detail=rec.text)
        assert rec.alive(), rec.text()
        assert batch_state(k8s_cluster, ns, "allowed") is None
        k8s_cluster.kubectl("-n", ns, "create", "rolebinding", "batchq-limited",
                            "--clusterrole=cluster-admin", "--user=batchq-limited")
        wait_for(lambda: batch_state(k8s_cluster, ns, "allowed") == "Completed", 120,
                 what="the batch, once allowed", detail=rec.text)
        assert "Traceback" not in rec.text(), rec.text()
        assert rec.stop() == 0, rec.text()
    finally:
        if rec.alive():
            rec.proc.kill()
        world.close()


def outbox_labels(cp: Any, ns: str, batch: str) -> list[str]:
    try:
        cms = cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps?labelSelector="
                                f"batchq.dev/kind=report,batchq.dev/batch={batch}")["items"]
    except OSError:
        return []
    return [str(cm["metadata"]["labels"].get("batchq.dev/outbox")) for cm in cms]


def test_an_outage_between_sending_an_email_and_recording_it_sends_it_once(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    """The relay accepted the report, then the API server went away before the delivery
    was recorded: the record is retried until the server is back, and the report is not
    sent a second time."""
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/mail.yaml", batch_doc([world.item("m1", gated=False)]))
    git_repo.commit("a batch")
    rec = Replica(k8s_cluster, ns, git_repo, tmp_path, smtp, "batchq-replica-a", "a",
                  "after-smtp-send:sleep=3")  # time to pull the plug after the relay's 250
    try:
        wait_for(lambda: emails_for(smtp, "mail"), 120, what="the report", detail=rec.text)
        k8s_cluster.kill_apiserver()
        with pytest.raises(subprocess.TimeoutExpired):
            rec.proc.wait(20)  # the outage; the reconciler lives through it
        k8s_cluster.start_apiserver_again()
        wait_for(lambda: outbox_labels(k8s_cluster, ns, "mail") == ["delivered"], 120,
                 what="the delivery to be recorded", detail=rec.text)
        assert rec.stop() == 0, rec.text()
        assert emails_for(smtp, "mail") == ["Ingest: OK -- Submission Processed: mail"]
        assert "recording the delivery of" in rec.text(), rec.text()
    finally:
        if rec.alive():
            rec.proc.kill()
        world.close()
