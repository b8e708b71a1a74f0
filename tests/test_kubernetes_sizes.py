"""Issue 9 §0 on a real API server: at 10,000 items every object batchq writes stays far
below the API server's 1 MiB limit, and the batch's report is saved, read back whole and
emailed. The items' results are recorded through the store API directly (creating and
running 10,000 Jobs under kwok takes too long on a 2-core test machine); the report is made,
saved and sent by the real controller, store and mailer."""

from __future__ import annotations

import copy
import email
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.domain.model import Digest, Item, ItemStatus
from reconciler.domain.states import BatchState, JobState
from tests.fixtures import GitRepo, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness

pytestmark = pytest.mark.kubernetes
N = 10_000
LIMIT = 1024 * 1024  # the API server refuses a ConfigMap of more (etcd's own cap is 1.5 MiB)


@pytest.fixture
def h(k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
      tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                      namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig),
                      leader_election=False)
    harness.cluster = k8s_cluster
    try:
        yield harness
    finally:
        harness.close()


def object_sizes(cluster: Any, ns: str) -> dict[str, int]:
    """`kind/name` -> bytes of JSON, for every object batchq keeps in the namespace."""
    out = {}
    for kind, path in (("configmap", f"/api/v1/namespaces/{ns}/configmaps"),
                       ("secret", f"/api/v1/namespaces/{ns}/secrets"),
                       ("batch", f"/apis/batchq.dev/v1/namespaces/{ns}/batches")):
        for obj in cluster.request("GET", path, timeout=60)["items"]:
            out[f"{kind}/{obj['metadata']['name']}"] = len(json.dumps(obj))
    return out


def results(items: list[Item]) -> list[ItemStatus]:
    """Every tenth item failed, with a long message; the others completed."""
    now = time.time()
    return [ItemStatus(item=it, seq=n, attempts=1, job_name=f"big-item-{n:05d}-1",
                       state=JobState.FAILED if n % 10 == 0 else JobState.COMPLETED,
                       message=f"digest mismatch: expected sha256 {'0' * 64}, got {'f' * 64}"
                       if n % 10 == 0 else "", started_at=now - 60, finished_at=now)
            for n, it in enumerate(items)]


def test_a_10000_item_batch_keeps_every_object_small_and_its_report_is_saved_and_sent(
        h: Harness, smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc("http://payloads.invalid/"))
    h.repo.write("batches/big.yaml", batch_doc(url="http://payloads.invalid/big.yaml"))
    h.repo.commit("a batch of 10,000 items")
    h.sync()
    items = [Item(id=f"item-{n:05d}", url=f"http://payloads.invalid/maps/{n:05d}.tif",
                  title=f"Map {n} of the Oakland survey, sheet {n % 97}",
                  size=48_213 + n, digest=Digest("sha256", hashlib.sha256(
                      str(n).encode()).hexdigest())) for n in range(N)]
    h.store.set_items("big", items)
    h.store.update_items("big", results(items))
    batch = h.batch("big")
    status = copy.deepcopy(batch.status)  # admitted, its manifest read: as the controller does
    status.state, status.items_loaded, status.item_count = BatchState.PROCESSING, True, N
    status.started_at = time.time()
    h.store.update_status("big", batch.status, status)

    h.until(lambda: h.state("big") == "Failed", "the report of 10,000 items", timeout=240)
    h.full_pass()
    h.rec.deliver()
    [mail] = smtp.mailbox.messages
    assert mail["Subject"] == "Ingest: FAIL -- Submission Failed: big"
    attachments = {p.get_filename(): json.loads(p.get_payload(decode=True))
                   for p in mail.walk() if p.get_filename()}
    assert len(attachments["completed.json"]) == 9_000
    assert len(attachments["failed.json"]) == 1_000

    h.restart()  # a new process: the report is read back from the API server, whole
    [report] = h.store.list_reports("big")
    assert len(report.job_states) == N
    assert report.job_states["item-09999"] == "Completed"
    stored = email.message_from_bytes(report.message)
    assert {p.get_filename(): len(json.loads(p.get_payload(decode=True)))
            for p in stored.walk() if p.get_filename()} == {
        "completed.json": 9_000, "failed.json": 1_000}
    assert h.store.delivered(report.id)
    assert len(h.store.list_items("big", state="Failed")) == 1_000

    sizes = object_sizes(h.cluster, h.settings.namespace)
    biggest = max(sizes, key=lambda k: sizes[k])
    items_cms = [v for k, v in sizes.items() if "-items-" in k]
    print(f"\n{len(sizes)} objects; the largest, {biggest}: {sizes[biggest]} bytes;"
          f" {len(items_cms)} item ConfigMaps, at most {max(items_cms)} bytes;"
          f" report in {sum(1 for k in sizes if '-report-' in k)} ConfigMaps;"
          f" the Batch {sizes['batch/big']} bytes")
    assert sizes[biggest] < LIMIT // 2, f"{biggest} is {sizes[biggest]} bytes"
    assert sum(1 for k in sizes if "-report-" in k) > 1  # the report needed several parts


def test_an_inline_manifest_stays_out_of_the_batch_object(h: Harness) -> None:
    items = [{"id": f"map-{n:04d}", "url": f"http://payloads.invalid/maps/{n:04d}.tif",
              "title": f"Map {n} of the Oakland survey"} for n in range(2_000)]
    h.repo.write("profiles/test.yaml", profile_doc("http://payloads.invalid/"))
    h.repo.write("batches/inline.yaml", batch_doc(items))
    h.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"paused": True}})  # no Job: only the sizes count
    h.repo.commit("2,000 items inline")
    h.sync()
    batch = h.batch("inline")
    assert batch.spec is not None and batch.spec.items is not None
    assert [it.id for it in batch.spec.items] == [it["id"] for it in items]  # whole, in order
    h.reconcile()  # a status write: the batch waits, seen at its generation
    obj = h.cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{h.settings.namespace}"
                                   "/batches/inline")
    assert obj["status"]["observedGeneration"] == 1
    assert obj["spec"]["manifest"] == {"itemsFrom": {
        "configMap": "inline-spec", "key": "spec.json.gz", "count": 2_000,
        "sha256": hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":"))
                                 .encode()).hexdigest()}}
    assert len(json.dumps(obj)) < 16 * 1024, len(json.dumps(obj))
