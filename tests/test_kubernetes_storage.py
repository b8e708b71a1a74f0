"""Storage on Kubernetes (issue 8 §3), on a real API server: a filesystem profile's Job
mounts the operator's PersistentVolumeClaim at the storage root, so payloads outlive the
pod; an S3 profile's Job takes the credentials from the operator's Secret by reference,
and no credential value is ever written into the Job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import GitRepo, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes


def test_jobs_mount_the_storage_claim_or_take_s3_credentials_from_a_secret_reference(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the reconciler's own S3 credentials must not leak into a Job either
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "reconciler-own-secret")
    api = k8s_cluster.api_client()
    world = KubeWorld(api, k8s_namespace)
    h = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig),
                leader_election=False, storage_root=Path("/var/lib/batchq-storage"),
                storage_claim="batchq-storage", s3_secret="ops-s3")
    try:
        on_disk = profile_doc(world.prefix)
        on_disk["metadata"]["name"] = "disk"
        on_disk["spec"]["storage"] = {"path": "maps"}
        in_bucket = profile_doc(world.prefix)
        in_bucket["metadata"]["name"] = "bucket"
        in_bucket["spec"]["storage"] = {"type": "s3", "bucket": "preservation",
                                        "prefix": "ocfl", "region": "us-west-2",
                                        "endpoint": "http://127.0.0.1:8333"}
        git_repo.write("profiles/disk.yaml", on_disk)
        git_repo.write("profiles/bucket.yaml", in_bucket)
        for name, profile in (("fsb", "disk"), ("s3b", "bucket")):
            doc = batch_doc([world.item(f"{name}-1")])
            doc["spec"]["profile"] = profile
            git_repo.write(f"batches/{name}.yaml", doc)
        git_repo.commit("one batch per storage type")
        h.sync()
        h.until(lambda: len(h.job_names("fsb")) == len(h.job_names("s3b")) == 1,
                "one Job per batch", timeout=120)
        out = k8s_cluster.kubectl("-n", k8s_namespace, "get", "jobs", "-o", "json").stdout
        jobs = {j["metadata"]["labels"]["batchq.dev/batch"]: j
                for j in json.loads(out)["items"]}

        pod = jobs["fsb"]["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        env = {e["name"]: e for e in worker["env"]}
        assert {"name": "storage", "persistentVolumeClaim": {"claimName": "batchq-storage"}
                } in pod["volumes"]
        assert {"name": "storage", "mountPath": "/var/lib/batchq-storage"
                } in worker["volumeMounts"]
        assert env["BATCHQ_STORAGE"]["value"] == "/var/lib/batchq-storage/maps"
        assert "AWS_ACCESS_KEY_ID" not in env and "BATCHQ_STORAGE_URL" not in env

        pod = jobs["s3b"]["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        env = {e["name"]: e for e in worker["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {
                "name": "ops-s3", "key": key}}}
        assert env["BATCHQ_STORAGE_URL"]["value"] == "s3://preservation/ocfl"
        assert env["BATCHQ_S3_ENDPOINT"]["value"] == "http://127.0.0.1:8333"
        assert env["BATCHQ_S3_REGION"]["value"] == "us-west-2"
        assert "BATCHQ_STORAGE" not in env
        assert "persistentVolumeClaim" not in json.dumps(pod)
        assert "reconciler-own-secret" not in out
    finally:
        h.close()
        world.close()
        api.close()
