"""What operators see and do on a real API server: kubectl, leader election, deploy/."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.model import BatchStatus, Item, ItemStatus
from reconciler.domain.states import BatchState, JobState
from reconciler.spec.crd import render
from reconciler.store.kubernetes.configmaps import ITEMS_BYTES, item_chunks
from reconciler.store.kubernetes.store import KubernetesStore
from tests.fixtures import GitRepo, SmtpServer, batch_doc, profile_doc, wait_for
from tests.harness import Harness
from tests.world import KubeWorld

ROOT = Path(__file__).resolve().parent.parent


def test_crd_is_generated_from_the_schemas() -> None:
    committed = (ROOT / "deploy" / "crds" / "batches.batchq.dev.yaml").read_text()
    assert committed == render(), "regenerate: python -m reconciler.spec.crd > deploy/crds/..."
    crd = yaml.safe_load(committed)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "State", "Ready", "Jobs", "Completed", "Failed", "Revision", "Age", "Message",
        "Profile", "Depositor"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions", "counts", "failures"} <= set(status)


@pytest.mark.kubernetes
def test_kubectl_shows_jobs_and_batches(k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo,
                                        smtp: SmtpServer, tmp_path: Path) -> None:
    api = k8s_cluster.api_client()
    world = KubeWorld(api, k8s_namespace)
    h = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig),
                leader_election=False)
    try:
        items = [world.item(f"k{i}", fail=i == 3, gated=False) for i in (1, 2, 3)]
        git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
        git_repo.write("batches/ops.yaml", batch_doc(items))
        git_repo.commit("submit")
        h.sync()
        h.until(lambda: h.state("ops") == "Failed", "the batch to finish")
        jobs = k8s_cluster.kubectl("-n", k8s_namespace, "get", "jobs", "-l",
                                   "batchq.dev/batch=ops").stdout.splitlines()
        assert jobs[0].split()[:3] == ["NAME", "STATUS", "COMPLETIONS"]
        rows = {line.split()[0]: line.split() for line in jobs[1:]}
        assert set(rows) == {"ops-k1-1", "ops-k2-1", "ops-k3-1"}
        assert rows["ops-k1-1"][1:3] == ["Complete", "1/1"]
        assert rows["ops-k3-1"][1:3] == ["Failed", "0/1"]
        batches = k8s_cluster.kubectl("-n", k8s_namespace, "get", "batches").stdout.splitlines()
        assert batches[0].split()[:6] == ["NAME", "STATE", "READY", "JOBS", "COMPLETED",
                                          "FAILED"]
        assert batches[1].split()[:6] == ["ops", "Failed", "False", "3", "2", "1"]
        described = k8s_cluster.kubectl("-n", k8s_namespace, "get", "job", "ops-k3-1", "-o",
                                        "yaml").stdout
        job = yaml.safe_load(described)
        assert job["metadata"]["ownerReferences"][0]["kind"] == "Batch"
        assert job["metadata"]["labels"]["batchq.dev/item"] == "k3"
        assert job["metadata"]["labels"]["batchq.dev/attempt"] == "1"
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [
            {"status": "True", "type": "DisruptionTarget"}]}
        assert h.store.list_items("ops")[2].message.startswith("digest mismatch")
        # a pass with no change makes no API write
        h.full_pass()  # the mailer's thread delivers the report (one write: the outbox label)
        h.rec.deliver()  # waits for that round
        assert len(smtp.mailbox.messages) == 1
        before = h.store.writes
        h.full_pass()
        h.full_pass()
        assert h.store.writes == before
    finally:
        h.close()
        world.close()
        api.close()


@pytest.mark.kubernetes
def test_status_stays_small_for_a_10000_item_batch(k8s_cluster: Any, k8s_namespace: str) -> None:
    store = KubernetesStore.connect(k8s_namespace, str(k8s_cluster.kubeconfig))
    try:
        spec = batch_doc([{"id": "i0", "url": "http://x/0"}])["spec"]
        store.apply_spec("big", spec, source_path="batches/big.yaml", revision="r",
                         committed_at=1.0, error="")
        items = [Item(id=f"item-{n:05d}", url=f"http://payloads.invalid/{n}",
                      title=f"Title {n} " + "x" * 60) for n in range(10_000)]
        store.set_items("big", items)
        statuses = [ItemStatus(item=it, seq=n, state=JobState.FAILED, attempts=1,
                               message="digest mismatch: " + "y" * 200)
                    for n, it in enumerate(items)]
        store.update_items("big", statuses)
        new = BatchStatus(state=BatchState.PROCESSING, item_count=10_000,
                          counts={"Failed": 10_000},
                          failures=[{"item": s.item.id, "message": s.message}
                                    for s in statuses][:20])
        store.update_status("big", store.get_batch("big").status, new)  # type: ignore[union-attr]
        wait_for(lambda: store.total_items("big", state="Failed") == 10_000, 30,
                 what="items to read back")
        cr = k8s_cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{k8s_namespace}"
                                        "/batches/big")
        assert len(yaml.safe_dump(cr["status"])) < 8_000
        cms = k8s_cluster.request("GET", f"/api/v1/namespaces/{k8s_namespace}/configmaps"
                                         "?labelSelector=batchq.dev/kind=items")["items"]
        assert len(cms) == len(item_chunks(items)) > 1  # cut by count and by size
        assert max(len(cm["data"]["items.json"]) for cm in cms) < ITEMS_BYTES
        assert store.list_items("big", offset=9_990, limit=5)[0].item.id == "item-09990"
    finally:
        store.close()


@pytest.mark.kubernetes
def test_only_the_leader_acts_and_another_takes_over(k8s_cluster: Any, k8s_namespace: str,
                                                     git_repo: GitRepo, tmp_path: Path) -> None:
    world = KubeWorld(k8s_cluster.api_client(), k8s_namespace)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/first.yaml", batch_doc([world.item("l1", gated=False)]))
    git_repo.commit("first")
    recs: dict[str, Reconciler] = {}
    stops: dict[str, threading.Event] = {}
    threads: dict[str, threading.Thread] = {}
    for name in ("a", "b"):
        recs[name] = Reconciler(Settings(
            repo=str(git_repo.path), state_dir=tmp_path / name, backend="kubernetes",
            namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig), interval=0.3,
            identity=name, lease_seconds=3, renew_deadline=2, retry_period=0.5))
        stops[name] = threading.Event()
        threads[name] = threading.Thread(target=recs[name].run_forever, args=(stops[name],),
                                         daemon=True)
        threads[name].start()
        if name == "a":
            wait_for(lambda: recs["a"].elector.leader, 20, what="a to lead")
    try:
        wait_for(lambda: (recs["a"].store.get_batch("first") or _none()).status.state
                 == "Completed", 60, what="the first batch")
        assert recs["a"].elector.leader and not recs["b"].elector.leader
        assert recs["b"].store.writes == 0  # the stand-by wrote nothing
        stops["a"].set()  # the leader stops: it releases its Lease on the way out
        threads["a"].join(10)
        git_repo.write("batches/second.yaml", batch_doc([world.item("l2", gated=False)]))
        git_repo.commit("second")
        started = time.monotonic()
        wait_for(lambda: recs["b"].elector.leader, 20, what="b to take over")
        assert time.monotonic() - started < 10
        wait_for(lambda: (recs["b"].store.get_batch("second") or _none()).status.state
                 == "Completed", 60, what="the second batch, run by b")
        lease = k8s_cluster.request("GET", "/apis/coordination.k8s.io/v1/namespaces/"
                                           f"{k8s_namespace}/leases/batchq-reconciler")
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
    finally:
        for name in recs:
            stops[name].set()
            threads[name].join(10)
            recs[name].close()
        world.close()


def _none() -> Any:
    class Nothing:
        class status:
            state = None
    return Nothing()


@pytest.mark.kubernetes
def test_deploy_applies_with_server_dry_run(k8s_cluster: Any) -> None:
    # as the README says: the namespace first (a server dry-run creates nothing, so the
    # namespaced objects would find no namespace), then the whole of deploy/
    k8s_cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "namespace.yaml"))
    out = k8s_cluster.kubectl("apply", "--dry-run=server", "-k", str(ROOT / "deploy"),
                              check=False)
    assert out.returncode == 0, out.stderr
    for kind in ("customresourcedefinition.apiextensions.k8s.io/batches.batchq.dev",
                 "serviceaccount/batchq-reconciler", "role.rbac.authorization.k8s.io/"
                 "batchq-reconciler", "deployment.apps/batchq-reconciler",
                 "deployment.apps/batchq-web", "service/batchq-web"):
        assert kind in out.stdout, out.stdout


@pytest.mark.kubernetes
def test_a_watch_that_ends_is_restarted_and_changes_still_arrive(
        k8s_cluster: Any, k8s_namespace: str) -> None:
    """The API server ends every watch after 1 s here (as it does after its timeout); the
    next watch resumes from the last resourceVersion seen, without listing again."""
    store = KubernetesStore.connect(k8s_namespace, str(k8s_cluster.kubeconfig),
                                    watch_timeout=1)
    try:
        informer = store.cms
        wait_for(lambda: informer.restarts >= 3, 20, what="the watch to end and restart")
        store.wake.clear()
        k8s_cluster.request("POST", f"/api/v1/namespaces/{k8s_namespace}/configmaps", {
            "metadata": {"name": "after-restarts", "labels": {"batchq.dev/kind": "test"}},
            "data": {}})
        wait_for(lambda: informer.get("after-restarts") is not None, 20,
                 what="a change after the restarts to reach the cache")
        assert store.wake.is_set()  # and the loop was woken at once
        assert informer.relists == 1  # each watch resumed where the last one ended
    finally:
        store.close()
