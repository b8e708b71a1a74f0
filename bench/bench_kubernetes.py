"""Benchmark: Job creation rate of the reconciler against a raw client loop, one API server.

Starts the test control plane (scripts/build-test-cluster must have built it), then:
1. raw: `BatchV1Api.create_namespaced_job` in a loop, N Jobs shaped like batchq's;
2. batchq: one batch of N items; the pass that reads the manifest creates every Job;
3. the API writes of passes with no new commit once the batch settled (goal: none).
Run: `python bench/bench_kubernetes.py [--jobs 500]`; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import commit_all  # noqa: E402

from reconciler.app.service import Reconciler, Settings  # noqa: E402
from tests.cluster.controlplane import ControlPlane, find_or_build_binaries  # noqa: E402


def raw_job(name: str) -> dict[str, object]:
    labels = {"batchq.dev/batch": "raw", "batchq.dev/item": name, "batchq.dev/attempt": "1"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": labels, "annotations": {"batchq.dev/simulate": "hold"}},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "worker", "image": "batchq:latest", "command": ["batchq-worker"]}]}}},
    }


def make_repo(root: Path, n: int) -> None:
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "k.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"allowedUrlPrefixes": ["http://payloads.invalid/"]}}))
    (root / "queue.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": {"maxActiveJobs": n}}))
    (root / "batches" / "bench.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Batch",
        "spec": {"profile": "k", "depositor": {"email": "b@example.org"},
                 "manifest": {"items": [{"id": f"i{n:05d}",
                                         "url": f"http://payloads.invalid/{n}"}
                                        for n in range(n)]}}}))
    commit_all(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=500)
    n = ap.parse_args().jobs
    bin_dir = find_or_build_binaries(build=True)
    assert bin_dir is not None
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(bin_dir, Path(tmp) / "cp") as cp:
        cp.kubectl("apply", "-f", str(ROOT / "deploy/crds/batches.batchq.dev.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/batches.batchq.dev")
        for ns in ("raw", "bq"):
            cp.kubectl("create", "namespace", ns)
        api = cp.api_client()
        jobs = client.BatchV1Api(api)
        t0 = time.monotonic()
        for i in range(n):
            jobs.create_namespaced_job("raw", raw_job(f"raw-{i:05d}"))
        raw_s = time.monotonic() - t0
        time.sleep(5)  # let the job controller and kwok catch up before the second run

        repo = Path(tmp) / "repo"
        make_repo(repo, n)
        rec = Reconciler(Settings(repo=str(repo), state_dir=Path(tmp) / "state",
                                  backend="kubernetes", namespace="bq",
                                  kubeconfig=str(cp.kubeconfig), leader_election=False))
        rec.run_pass()  # sync and admit
        writes0 = rec.store.writes
        t1 = time.monotonic()
        rec.run_pass()  # read the manifest, create every Job
        bq_s = time.monotonic() - t1
        created = len(rec.store.list_jobs("bench"))
        pass_writes = rec.store.writes - writes0
        rec.run_until_idle(timeout=600)
        before = rec.store.writes
        t2 = time.monotonic()
        rec.run_pass()
        rec.run_pass()
        idle_s = (time.monotonic() - t2) / 2
        idle_writes = rec.store.writes - before
        state = str(rec.store.get_batch("bench").status.state)  # type: ignore[union-attr]
        rec.close()
        api.close()
    result = {
        "jobs": n, "raw_seconds": round(raw_s, 2), "raw_jobs_per_second": round(n / raw_s, 1),
        "batchq_seconds": round(bq_s, 2), "batchq_jobs_created": created,
        "batchq_jobs_per_second": round(created / bq_s, 1),
        "ratio": round((created / bq_s) / (n / raw_s), 2),
        "batchq_writes_in_that_pass": pass_writes, "final_state": state,
        "idle_pass_seconds": round(idle_s, 3), "idle_pass_api_writes": idle_writes,
    }
    print(json.dumps(result, indent=2))
    if idle_writes or created != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
