"""Issue 7 on a real API server: what the Job controller and the Secrets API do with
batchq's Jobs (kwok holds the pods running; nothing runs a worker)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from tests.fixtures import PayloadServer, batch_doc, profile_doc
from tests.harness import Harness
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes


def kubectl_json(cluster: Any, ns: str, *what: str) -> Any:
    return json.loads(cluster.kubectl("-n", ns, "get", *what, "-o", "json").stdout)


def test_a_job_past_its_deadline_is_failed_by_the_job_controller_with_the_reason(
        kube: tuple[Harness, KubeWorld, Any]) -> None:
    h, world, _ = kube
    profile = profile_doc(world.prefix)
    profile["spec"]["job"] = {"activeDeadlineSeconds": 2}
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/late.yaml", batch_doc([world.item("never")]))  # held running
    h.repo.commit("a job that never ends")
    h.sync()
    h.until(lambda: h.state("late") == "Failed", "the Job controller to end the job",
            timeout=120)
    [item] = h.store.list_items("late")
    assert item.message == "DeadlineExceeded: job ran longer than 2 s"


def test_payload_credentials_go_to_a_secret_of_the_batch_and_nowhere_else(
        kube: tuple[Harness, KubeWorld, Any], payloads: PayloadServer) -> None:
    h, world, cluster = kube
    ns = h.settings.namespace
    secret_word = "s3cret-Pa55"
    items = [world.item(f"c{i}") for i in (1, 2)]
    for item in items:  # as Merritt manifests carry them: userinfo in the file URL
        item["url"] = item["url"].replace("http://", f"http://robot:{secret_word}@")
    manifest = payloads.add("manifest.yaml", yaml.safe_dump(items).encode())
    profile = profile_doc(world.prefix)
    profile["spec"]["allowedUrlPrefixes"].append(manifest["url"])
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/creds.yaml", batch_doc(url=manifest["url"]))
    h.repo.commit("a remote manifest whose file URLs carry credentials")
    h.sync()
    h.until(lambda: len(h.job_names("creds")) == 2, "the two jobs", timeout=120)

    batch = kubectl_json(cluster, ns, "batch", "creds")
    secrets = [s for s in kubectl_json(cluster, ns, "secrets")["items"]
               if s["metadata"]["name"].startswith("creds-credentials-")]
    assert secrets, "no credentials Secret"
    stored = {}
    for s in secrets:  # owned by nothing: a hand-deleted Batch must not take them (issue 9)
        assert not s["metadata"].get("ownerReferences")
        assert s["metadata"]["labels"]["batchq.dev/batch"] == "creds"
        stored.update({k: base64.b64decode(v).decode() for k, v in s["data"].items()})
    assert stored == {"c1": f"robot:{secret_word}", "c2": f"robot:{secret_word}"}

    for job in kubectl_json(cluster, ns, "jobs", "-l", "batchq.dev/batch=creds")["items"]:
        item = job["metadata"]["labels"]["batchq.dev/item"]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        secret = volumes["credentials"]["secret"]
        assert [i["key"] for i in secret["items"]] == [item]  # its own item's key only
        assert secret["secretName"] in {s["metadata"]["name"] for s in secrets}
        assert secret_word not in json.dumps(job)
    # nothing else the reconciler wrote holds them: the Batch, its ConfigMaps, the events
    shown = json.dumps([batch, kubectl_json(cluster, ns, "configmaps")])
    assert secret_word not in shown
    assert "http://***@payloads.invalid/c1" in shown  # the item record keeps it redacted
    world.release("c1", "c2")
    h.until(lambda: h.state("creds") == "Completed", "the batch to complete", timeout=120)
    assert secret_word not in json.dumps(kubectl_json(cluster, ns, "batch", "creds"))
