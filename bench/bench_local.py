"""Benchmark: batches of no-op jobs on the embedded default, against the bare shim.

Measures the time for the queue to settle (every batch Completed and reported), the store
writes that took, a second pass with no new commit (must write nothing), and peak memory;
and, in the same run, the baseline of issue 13: the same number of no-op jobs run through
the runner's own shim (`reconciler/store/local/runner.py: SHIM`) with plain
`subprocess.Popen` + wait, `--parallel` at a time. It prints the jobs/s of both and their
ratio (median of `--rounds`; and each round's ratio to the bare shim run next to it, just
before it in even rounds and just after it in odd ones, with their median), and the CPU
each costs per job: this process's own (the reconciler runs in it; the bare shim's parent) and
its children's (the shims and their commands), from getrusage SELF and CHILDREN; and when
the first job started (`first_job_seconds`: the end of the first pass that had started one).
Run: `python bench/bench_local.py [--batches 1000] [--items 10] [--rounds 1]
[--timeout 3600] [--job-nice 10] [--dir DIR]`; figures in bench/README.md. `--dir` puts
both sides' files (batchq's repository and state dir with its job dirs, the bare shim's job
dirs) in a temporary directory under DIR: on tmpfs (`/dev/shm`) a job dir's two `mkdir`s
cost both sides little, and the ratio shows batchq's own cost alone. A run that does not
settle within `--timeout` reports the jobs done and their rate.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from common import commit_all

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState
from reconciler.store.local.runner import (
    SHIM,
    job_environment,
    job_grouping,
    lower_priority,
    own_session_for_jobs,
)
from reconciler.store.local.sqlite import SqliteStore

NOOP = ["/bin/true"]


def make_repo(root: Path, batches: int, items: int, parallel: int) -> None:
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "noop.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"job": {"command": NOOP}, "allowedUrlPrefixes": ["http://127.0.0.1/"],
                 "notification": {"from": "batchq@example.org"}}}))
    (root / "queue.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Queue",
        "spec": {"maxActiveBatches": 10, "maxActiveJobs": parallel,
                 "maxDeletesPerSync": 10}}))
    for b in range(batches):
        doc = {"apiVersion": "batchq.dev/v1", "kind": "Batch",
               "metadata": {"name": f"bench-{b:04d}"},
               "spec": {"profile": "noop", "depositor": {"name": "Bench", "email": "b@example.org"},
                        "manifest": {"items": [
                            {"id": f"item-{i:05d}", "url": f"http://127.0.0.1/{b}/{i}"}
                            for i in range(items)]}}}
        (root / "batches" / f"bench-{b:04d}.yaml").write_text(yaml.safe_dump(doc))
    commit_all(root)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its children reaped so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_per_job(since: tuple[float, float], jobs: int) -> dict[str, float]:
    """The CPU ms per job spent since `since` (a `cpu_seconds()`)."""
    now = cpu_seconds()
    return {"self_cpu_ms_per_job": round((now[0] - since[0]) * 1000 / max(jobs, 1), 2),
            "children_cpu_ms_per_job": round((now[1] - since[1]) * 1000 / max(jobs, 1), 2)}


def bare_shim(jobs: int, parallel: int, root: Path, nice: int = 0) -> float:
    """The baseline: `jobs` no-op commands through the runner's shim, `parallel` at a
    time, each started with Popen (its group made `nice` steps nicer, as the runner does)
    and waited for; jobs per second."""
    grouping = job_grouping(own_session_for_jobs())  # as the runner: the nice counts the same

    def one(n: int) -> int:
        jdir = root / f"job-{n:06d}"
        (jdir / "tmp").mkdir(parents=True)
        proc = subprocess.Popen(["/bin/sh", "-c", SHIM, str(jdir), *NOOP],
                                env=job_environment({}, jdir), **grouping,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if nice:
            lower_priority(proc.pid, nice)
        return proc.wait()

    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(one, range(jobs)))
    seconds = time.monotonic() - t0
    if any(codes):
        sys.exit(f"the bare shim failed: exit codes {set(codes)}")
    return jobs / seconds


def done_jobs(rec: Reconciler) -> int:
    return sum(1 for b in rec.store.list_batches() for j in rec.store.list_jobs(b.name)
               if j.state == JobState.COMPLETED)


def batchq(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Settle the queue once: the figures of one round."""
    repo, state = tmp / "repo", tmp / "state"
    make_repo(repo, args.batches, args.items, args.parallel)
    rec = Reconciler(Settings(repo=str(repo), state_dir=state,  # the default interval
                              job_nice=getattr(args, "job_nice", 10)))
    try:
        cpu0 = cpu_seconds()
        t0 = time.monotonic()
        first_job: list[float] = []  # when the first pass that started a job ended

        def look(r: Reconciler) -> None:
            store = r.store
            assert isinstance(store, SqliteStore)  # the embedded default
            if not first_job and any(store.count_jobs_in_state(s)
                                     for s in (JobState.PROCESSING, JobState.COMPLETED)):
                first_job.append(time.monotonic() - t0)

        try:
            passes: int | None = rec.run_until_idle(timeout=args.timeout, on_pass=look)
        except TimeoutError:
            passes = None
        settle = time.monotonic() - t0
        done = done_jobs(rec)
        cpu = cpu_per_job(cpu0, done)
        writes = rec.store.writes
        states: dict[str, int] = {}
        for b in rec.store.list_batches():
            states[str(b.status.state)] = states.get(str(b.status.state), 0) + 1
        idle_pass = idle_writes = None
        if passes is not None:
            before = rec.store.writes
            t1 = time.monotonic()
            rec.run_pass()
            idle_pass = round(time.monotonic() - t1, 3)
            idle_writes = rec.store.writes - before
        emails = len(list((state / "outbox").glob("*.eml")))
    finally:
        rec.close()
    return {"settled": passes is not None, "settle_seconds": round(settle, 1),
            "first_job_seconds": round(first_job[0], 3) if first_job else None,
            "passes": passes, "jobs_done": done, "jobs_per_second": round(done / settle, 1),
            **cpu, "store_writes": writes, "states": states, "emails": emails,
            "idle_pass_seconds": idle_pass, "idle_pass_writes": idle_writes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="the median of this many")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds a round may take to settle; then its rate so far")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare shim")
    ap.add_argument("--job-nice", type=int, default=10,
                    help="jobs' niceness above this process's, for batchq (--job-nice) and"
                         " the bare shim alike (default 10, batchq's)")
    ap.add_argument("--dir", default=None,
                    help="where the round's files go (default: the system's temp dir)")
    args = ap.parse_args()
    jobs = args.batches * args.items
    rounds: list[dict[str, Any]] = []
    shim: list[float] = []
    shim_cpu: list[dict[str, float]] = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            # the bare shim before batchq in even rounds and after it in odd ones, so that
            # the paired ratios of a host whose speed drifts one way err both ways
            if n % 2:
                rounds.append(batchq(args, Path(tmp)))
            if not args.no_baseline:
                cpu0 = cpu_seconds()
                shim.append(bare_shim(jobs, args.parallel, Path(tmp) / "shim",
                                      args.job_nice))
                shim_cpu.append(cpu_per_job(cpu0, jobs))
            if not n % 2:
                rounds.append(batchq(args, Path(tmp)))
    median = sorted(rounds, key=lambda r: r["jobs_per_second"])[len(rounds) // 2]
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {
        "batches": args.batches, "items": args.items, "jobs": jobs,
        "parallel": args.parallel, "rounds": args.rounds, **median,
        "jobs_per_second_each_round": [r["jobs_per_second"] for r in rounds],
        "peak_rss_mib": round(me, 1),
    }
    if shim:
        result["bare_shim_jobs_per_second"] = round(statistics.median(shim), 1)
        result["bare_shim_each_round"] = [round(s, 1) for s in shim]
        result["ratio"] = round(median["jobs_per_second"] / statistics.median(shim), 2)
        # each round's batchq against the bare shim run next to it: the machine's speed
        # drifts between rounds (a shared host), less within one
        paired = [r["jobs_per_second"] / s for r, s in zip(rounds, shim, strict=True)]
        result["ratio_each_round"] = [round(p, 2) for p in paired]
        result["paired_ratio_median"] = round(statistics.median(paired), 2)
        for key in ("self_cpu_ms_per_job", "children_cpu_ms_per_job"):
            result[f"bare_shim_{key}"] = statistics.median(c[key] for c in shim_cpu)
        # the CPU a job costs the bare shim against batchq (both with their children): on
        # a machine whose 2 cores are busy throughout, what bounds the jobs/s ratio
        result["cpu_ratio"] = round(
            (result["bare_shim_self_cpu_ms_per_job"] + result["bare_shim_children_cpu_ms_per_job"])
            / statistics.median(r["self_cpu_ms_per_job"] + r["children_cpu_ms_per_job"]
                                for r in rounds), 2)
    print(json.dumps(result, indent=2))
    if median["idle_pass_writes"] or median["states"] != {"Completed": args.batches}:
        sys.exit(1)


if __name__ == "__main__":
    main()
