"""Benchmark: Job creation rate of the reconciler against a raw client loop, one API server.

Starts the test control plane (scripts/build-test-cluster must have built it), then:
1. raw: `BatchV1Api.create_namespaced_job` in a loop, N small Jobs (labels, one
   container), one after another, then N more from `--concurrency` threads (behind the
   same token bucket as batchq's, `--qps`/`--burst`; 0: none);
2. batchq: one batch of N items; the pass that reads the manifest creates every Job, with
   the same concurrency and rate limit; the ratio is to the concurrent raw loop;
3. the API writes of passes with no new commit once the batch settled (goal: none;
   `--no-settle` skips 3 and the big batch's settling);
4. the concurrent raw loop again with batchq's very bodies (owner, finalizer, hardened pod
   spec), once batchq's reconciler is closed: what the API server allows for these Jobs;
5. a `--big`-item batch (2,000): from its commit to every Job created, and to settled
   (kwok completes the pods by its stages).
For each loop: the client's CPU seconds, and each control-plane process's (from /proc).
`--profile`: batchq's creating pass once more under cProfile in every thread, hotspots on
stderr. Run: `python bench/bench_kubernetes.py [--jobs 500] [--big 2000]`; figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import threading
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
from reconciler.store.base import JobSpec  # noqa: E402
from reconciler.store.kubernetes.jobs import job_manifest  # noqa: E402
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


def raw_concurrent(jobs: client.BatchV1Api, ns: str, bodies: list[dict[str, Any]],
                   concurrency: int, bucket: TokenBucket) -> float:
    """The creates of `bodies` from `concurrency` threads, each behind `bucket`; the
    seconds taken."""
    def create(body: dict[str, Any]) -> None:
        bucket.take()
        jobs.create_namespaced_job(ns, body)

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(create, bodies))
    return time.monotonic() - t0


def record_specs(rec: Reconciler) -> tuple[list[JobSpec], list[float]]:
    """The JobSpecs the reconciler's store is asked to create (observed, passed on), and
    the seconds each `create_jobs` call took (the rest of the pass is not creates)."""
    specs: list[JobSpec] = []
    seconds: list[float] = []
    create_jobs = rec.store.create_jobs

    def recording(batch: Any) -> Any:
        specs.extend(batch)
        t0 = time.monotonic()
        try:
            return create_jobs(batch)
        finally:
            seconds.append(time.monotonic() - t0)

    rec.store.create_jobs = recording  # type: ignore[method-assign,assignment]
    return specs, seconds


def batchq_bodies(specs: list[JobSpec], owner: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The very bodies batchq sends for `specs`, named and labelled apart."""
    bodies = []
    for i, spec in enumerate(specs):
        body = job_manifest(spec, owner)
        body["metadata"]["name"] = f"rawb-{i:05d}"
        body["metadata"]["labels"]["batchq.dev/batch"] = "rawb"
        bodies.append(body)
    return bodies


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by thread name, from
    /proc: what each thread cost, the GIL holder or not."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        name = names.get(int(task.name), f"tid-{task.name}")
        name = name.rsplit("_", 1)[0] if name.startswith("batchq-create") else name
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def server_cpu(cp: ControlPlane) -> dict[str, float]:
    """CPU seconds so far of each control-plane process (kube-apiserver, etcd, the
    controller manager, kwok...), from /proc: the server's side of a loop of creates."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for proc in list(cp._procs):  # the bench reads what the fixture started
        try:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[proc.name] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}


class ThreadProfiles:
    """cProfile in every thread that starts while this is on (the watch threads, the create
    pool) and in the calling thread: one Profile per thread, merged at the end."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.main = cProfile.Profile()

    def _start_in_thread(self, *_: Any) -> None:
        prof = cProfile.Profile()
        self.profiles.append(prof)
        prof.enable()  # replaces this hook for the thread

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start_in_thread)
        return self

    def __exit__(self, *_: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type,unused-ignore]

    def report(self, top: int = 30) -> str:
        self.main.disable()
        out = io.StringIO()
        stats = pstats.Stats(self.main, stream=out)
        for prof in self.profiles:
            prof.create_stats()
            stats.add(prof)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return out.getvalue()


def profile_create_pass(tmp: Path, kubeconfig: str, n: int, limits: dict[str, Any]) -> None:
    """The pass that creates an N-item batch's Jobs, under cProfile in every thread of the
    reconciler; hotspots and each thread's CPU seconds on stderr."""
    repo = tmp / "prof-repo"
    make_repo(repo, n)
    with ThreadProfiles() as profiles:
        rec = Reconciler(Settings(repo=str(repo), state_dir=tmp / "prof-state",
                                  backend="kubernetes", namespace="prof",
                                  kubeconfig=kubeconfig, leader_election=False, **limits))
        rec.run_pass()  # sync and admit
        cpu0, proc0 = thread_cpu(), time.process_time()
        t0 = time.monotonic()
        profiles.main.enable()
        rec.run_pass()  # read the manifest, create every Job
        profiles.main.disable()
        seconds = time.monotonic() - t0
        cpu1, proc1 = thread_cpu(), time.process_time()
        created = len(rec.store.list_jobs("bench"))
        rec.close()  # ends the watch threads: their profiles are complete
    spent = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in cpu1.items()
             if v - cpu0.get(k, 0.0) > 0.005}
    # the create threads have ended by now: theirs is what the others do not account for
    spent["create threads (the rest)"] = round(proc1 - proc0 - sum(spent.values()), 2)
    print(f"profiled pass: {created} Jobs in {seconds:.2f} s (under cProfile); "
          f"CPU seconds by thread: {json.dumps(spent)}", file=sys.stderr)
    print(profiles.report(), file=sys.stderr)


def big_batch(tmp: Path, kubeconfig: str, n: int, limits: dict[str, Any],
              settle: bool = True) -> dict[str, object]:
    """Commit an N-item batch; seconds to every Job created, and (`settle`) to the batch
    settled."""
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
    settled_s = None
    if settle:
        rec.run_until_idle(timeout=3600)
        settled_s = round(time.monotonic() - t0, 1)
    batch = rec.store.get_batch("bench")
    state = str(batch.status.state) if batch is not None else "missing"
    rec.close()
    return {"big_items": n, "big_jobs_created": created, "big_passes_to_create": passes,
            "big_commit_to_all_created_seconds": round(created_s, 1),
            "big_commit_to_settled_seconds": settled_s, "big_final_state": state}


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
    ap.add_argument("--settle", action=argparse.BooleanOptionalAction, default=True,
                    help="wait for the batch to settle and time a pass with no change")
    ap.add_argument("--profile", action="store_true",
                    help="also profile batchq's creating pass (every thread) after the runs")
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
        c0, s0 = time.process_time(), server_cpu(cp)
        rawc_s = raw_concurrent(jobs, "rawc", [raw_job(f"raw-{i:05d}") for i in range(n)],
                                args.concurrency, TokenBucket(args.qps, args.burst))
        rawc_cpu, rawc_server = time.process_time() - c0, cpu_spent(s0, server_cpu(cp))
        time.sleep(5)

        repo = Path(tmp) / "repo"
        make_repo(repo, n)
        rec = Reconciler(Settings(repo=str(repo), state_dir=Path(tmp) / "state",
                                  backend="kubernetes", namespace="bq",
                                  kubeconfig=str(cp.kubeconfig), leader_election=False,
                                  **limits))
        rec.run_pass()  # sync and admit
        specs, create_s = record_specs(rec)
        owner = rec.store._owner("bench")  # type: ignore[attr-defined]
        writes0 = rec.store.writes
        t1, c1, s1 = time.monotonic(), time.process_time(), server_cpu(cp)
        rec.run_pass()  # read the manifest, create every Job
        bq_s, bq_cpu = time.monotonic() - t1, time.process_time() - c1
        bq_server = cpu_spent(s1, server_cpu(cp))
        created = len(rec.store.list_jobs("bench"))
        pass_writes = rec.store.writes - writes0
        idle_s, idle_writes = None, 0
        if args.settle:
            rec.run_until_idle(timeout=600)
            before = rec.store.writes
            t2 = time.monotonic()
            rec.run_pass()
            rec.run_pass()
            idle_s = round((time.monotonic() - t2) / 2, 3)
            idle_writes = rec.store.writes - before
        state = str(rec.store.get_batch("bench").status.state)  # type: ignore[union-attr]
        rec.close()
        time.sleep(5)
        # the concurrent raw loop again, with batchq's own bodies (owner, finalizer, pod
        # spec): what the API server allows for these Jobs, without batchq's pass
        c2, s2 = time.process_time(), server_cpu(cp)
        rawb_s = raw_concurrent(jobs, "bq", batchq_bodies(specs, owner), args.concurrency,
                                TokenBucket(args.qps, args.burst))
        rawb_cpu, rawb_server = time.process_time() - c2, cpu_spent(s2, server_cpu(cp))
        big = (big_batch(Path(tmp), str(cp.kubeconfig), args.big, limits, args.settle)
               if args.big else {})
        if args.profile:
            cp.kubectl("create", "namespace", "prof")
            profile_create_pass(Path(tmp), str(cp.kubeconfig), n, limits)
        api.close()
    result = {
        "jobs": n, "concurrency": args.concurrency, "qps": args.qps, "burst": args.burst,
        "raw_seconds": round(raw_s, 2), "raw_jobs_per_second": round(n / raw_s, 1),
        "raw_concurrent_seconds": round(rawc_s, 2),
        "raw_concurrent_jobs_per_second": round(n / rawc_s, 1),
        "raw_concurrent_client_cpu_seconds": round(rawc_cpu, 2),
        "raw_concurrent_server_cpu_seconds": rawc_server,
        "batchq_seconds": round(bq_s, 2), "batchq_jobs_created": created,
        "batchq_jobs_per_second": round(created / bq_s, 1),
        "batchq_client_cpu_seconds": round(bq_cpu, 2),
        "batchq_server_cpu_seconds": bq_server,
        "batchq_create_jobs_seconds": round(sum(create_s), 2),
        "ratio_to_sequential": round((created / bq_s) / (n / raw_s), 2),
        "ratio": round((created / bq_s) / (n / rawc_s), 2),
        "raw_concurrent_batchq_bodies_jobs_per_second": round(len(specs) / rawb_s, 1),
        "raw_concurrent_batchq_bodies_client_cpu_seconds": round(rawb_cpu, 2),
        "raw_concurrent_batchq_bodies_server_cpu_seconds": rawb_server,
        "ratio_to_concurrent_batchq_bodies": round((created / bq_s) / (len(specs) / rawb_s),
                                                   2),
        "batchq_writes_in_that_pass": pass_writes, "final_state": state,
        "idle_pass_seconds": idle_s, "idle_pass_api_writes": idle_writes, **big,
    }
    print(json.dumps(result, indent=2))
    if idle_writes or created != n or big.get("big_jobs_created", args.big) != args.big:
        sys.exit(1)


if __name__ == "__main__":
    main()
