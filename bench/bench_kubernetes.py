"""Benchmark: Job creation rate of the reconciler against a raw client loop, one API server.

Starts the test control plane (scripts/build-test-cluster must have built it), then:
1. raw: `BatchV1Api.create_namespaced_job` in a loop, N Jobs shaped like batchq's, one
   after another, then N more from `--concurrency` threads (behind the same token bucket
   as batchq's, `--qps`/`--burst`; 0: none);
2. batchq: one batch of N items; the pass that reads the manifest creates every Job, with
   the same concurrency and rate limit; the ratio is to the concurrent raw loop;
3. the API writes of passes with no new commit once the batch settled (goal: none);
4. a `--big`-item batch (2,000): from its commit to every Job created, and to settled
   (kwok completes the pods by its stages).
Run: `python bench/bench_kubernetes.py [--jobs 500] [--big 2000]`; figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import commit_all  # noqa: E402

from reconciler.app.service import Reconciler, Settings  # noqa: E402
from reconciler.support.ratelimit import TokenBucket  # noqa: E402
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


def raw_concurrent(jobs: client.BatchV1Api, ns: str, n: int, concurrency: int,
                   bucket: TokenBucket) -> float:
    """N creates from `concurrency` threads, each behind `bucket`; the seconds taken."""
    def create(i: int) -> None:
        bucket.take()
        jobs.create_namespaced_job(ns, raw_job(f"raw-{i:05d}"))

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(create, range(n)))
    return time.monotonic() - t0


def big_batch(tmp: Path, kubeconfig: str, n: int, limits: dict[str, Any]) -> dict[str, object]:
    """Commit an N-item batch; seconds to every Job created, and to the batch settled."""
    repo = tmp / "big-repo"
    t0 = time.monotonic()
    make_repo(repo, n)
    rec = Reconciler(Settings(repo=str(repo), state_dir=tmp / "big-state",
                              backend="kubernetes", namespace="big", kubeconfig=kubeconfig,
                              leader_election=False, **limits))
    passes = 0
    while len(rec.store.list_jobs("bench")) < n and passes < 50:
        rec.run_pass()
        passes += 1
    created_s = time.monotonic() - t0
    created = len(rec.store.list_jobs("bench"))
    rec.run_until_idle(timeout=3600)
    settled_s = time.monotonic() - t0
    batch = rec.store.get_batch("bench")
    state = str(batch.status.state) if batch is not None else "missing"
    rec.close()
    return {"big_items": n, "big_jobs_created": created, "big_passes_to_create": passes,
            "big_commit_to_all_created_seconds": round(created_s, 1),
            "big_commit_to_settled_seconds": round(settled_s, 1), "big_final_state": state}


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
    ap.add_argument("--big", type=int, default=2000, help="items of the big batch (0: none)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--qps", type=float, default=0.0, help="0: no rate limit on either side")
    ap.add_argument("--burst", type=int, default=30)
    args = ap.parse_args()
    n = args.jobs
    limits: dict[str, Any] = {"kube_concurrency": args.concurrency, "kube_qps": args.qps,
              "kube_burst": args.burst}
    bin_dir = find_or_build_binaries(build=True)
    assert bin_dir is not None
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(bin_dir, Path(tmp) / "cp") as cp:
        cp.kubectl("apply", "-f", str(ROOT / "deploy/crds/batches.batchq.dev.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/batches.batchq.dev")
        for ns in ("raw", "rawc", "bq", "big"):
            cp.kubectl("create", "namespace", ns)
        api = cp.api_client()
        api.configuration.connection_pool_maxsize = args.concurrency + 4
        api.rest_client = client.rest.RESTClientObject(api.configuration)
        jobs = client.BatchV1Api(api)
        t0 = time.monotonic()
        for i in range(n):
            jobs.create_namespaced_job("raw", raw_job(f"raw-{i:05d}"))
        raw_s = time.monotonic() - t0
        time.sleep(5)  # let the job controller and kwok catch up before the next run
        rawc_s = raw_concurrent(jobs, "rawc", n, args.concurrency,
                                TokenBucket(args.qps, args.burst))
        time.sleep(5)

        repo = Path(tmp) / "repo"
        make_repo(repo, n)
        rec = Reconciler(Settings(repo=str(repo), state_dir=Path(tmp) / "state",
                                  backend="kubernetes", namespace="bq",
                                  kubeconfig=str(cp.kubeconfig), leader_election=False,
                                  **limits))
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
        big = big_batch(Path(tmp), str(cp.kubeconfig), args.big, limits) if args.big else {}
        api.close()
    result = {
        "jobs": n, "concurrency": args.concurrency, "qps": args.qps, "burst": args.burst,
        "raw_seconds": round(raw_s, 2), "raw_jobs_per_second": round(n / raw_s, 1),
        "raw_concurrent_seconds": round(rawc_s, 2),
        "raw_concurrent_jobs_per_second": round(n / rawc_s, 1),
        "batchq_seconds": round(bq_s, 2), "batchq_jobs_created": created,
        "batchq_jobs_per_second": round(created / bq_s, 1),
        "ratio_to_sequential": round((created / bq_s) / (n / raw_s), 2),
        "ratio": round((created / bq_s) / (n / rawc_s), 2),
        "batchq_writes_in_that_pass": pass_writes, "final_state": state,
        "idle_pass_seconds": round(idle_s, 3), "idle_pass_api_writes": idle_writes, **big,
    }
    print(json.dumps(result, indent=2))
    if idle_writes or created != n or big.get("big_jobs_created", args.big) != args.big:
        sys.exit(1)


if __name__ == "__main__":
    main()
