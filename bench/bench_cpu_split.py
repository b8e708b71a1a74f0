"""Benchmark: where the CPU of a no-op job goes, in batchq and in the bare shim beside it
(issue 13 goal 2: on 2 busy cores the jobs/s ratio follows the ratio of CPU a job costs).

One round of `bench_local` each way (batchq first, then the bare shim, `--parallel` slots,
jobs `--job-nice` steps nicer), with each part below metered by the CPU time of the thread
that runs it (`time.thread_time`), a part's own time only (what it called that is metered
too is that part's): no profiler, so the figures are the unprofiled costs.

- batchq: the sync; the steps of batches by the state they began in (a step's runner
  rounds are the runner's); the runner's rounds, and within them the job starts, the two
  `mkdir`s of a job dir and `Popen`'s fork and exec; the mailer's rounds (its own thread);
  the pass's own work; the rest of the process (the exits' waiting thread, the loop).
  With `--detail`, also the parts of a step (observing its Jobs, loading its items,
  making Jobs, the report, writing the status).
- the bare shim: its `mkdir`s, `Popen`, and the rest (its threads' waits).

Run: `python bench/bench_cpu_split.py [--batches 1000] [--items 10] [--parallel 8]
[--job-nice 10] [--dir DIR] [--detail]`; it prints JSON: ms of CPU a job, by part, for
each (`--dir`: as `bench_local`'s). Figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_local

from reconciler.app.service import Reconciler
from reconciler.control import mailer
from reconciler.control.controller import Controller
from reconciler.store.local.runner import LocalRunner


class Meter:
    """Thread CPU by part, each part's own: a part called inside another is taken out of
    the outer one (a stack per thread)."""

    def __init__(self) -> None:
        self.own: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()

    def measure(self, part: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, metered as `part` (or as what `part` says of its arguments)."""

        @functools.wraps(fn)
        def metered(*args: Any, **kwargs: Any) -> Any:
            name = part if isinstance(part, str) else part(*args, **kwargs)
            stack: list[float] = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # the metered time of what this call calls
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                inner = stack.pop()
                if stack:
                    stack[-1] += spent
                with self._lock:
                    self.own[name] += spent - inner
                    self.calls[name] += 1

        return metered

    def patch(self, owner: Any, attr: str, part: str | Callable[..., str]) -> Callable[[], None]:
        """Meter `owner.attr`; return what puts it back."""
        original = getattr(owner, attr)
        setattr(owner, attr, self.measure(part, original))
        return lambda: setattr(owner, attr, original)


# what a step does, metered with --detail
DETAIL = ("_observe", "_load_items", "_ensure_jobs", "_restart_failed", "_report",
          "_write_status", "_show_readiness", "_settled")


def _step_part(_controller: Controller, batch: Any, *_args: Any, **_kwargs: Any) -> str:
    return f"steps: {batch.status.state}"


def _shared_parts(meter: Meter) -> list[Callable[[], None]]:
    """What both sides do for a job: the job dir's mkdirs and the fork and exec."""
    return [meter.patch(os, "mkdir", "mkdir (the job dir and its tmp)"),
            meter.patch(subprocess.Popen, "_execute_child", "Popen (fork, exec)")]


def split_batchq(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    meter = Meter()
    undo = [
        *_shared_parts(meter),
        meter.patch(Reconciler, "_pass", "the pass's own work"),
        meter.patch(Reconciler, "_sync_step", "sync (the batch files from Git)"),
        meter.patch(Controller, "_step_one", _step_part),
        meter.patch(LocalRunner, "tick", "runner rounds"),
        meter.patch(LocalRunner, "tick_if_exited", "runner rounds"),
        meter.patch(LocalRunner, "_start", "runner: a job's start"),
        meter.patch(mailer, "deliver_due", "mailer (its thread)"),
    ]
    if args.detail:  # what the steps spend on, each part's own as above
        undo += [meter.patch(Controller, name, f"step: {name.strip('_')}")
                 for name in DETAIL]
    try:
        result = bench_local.batchq(args, tmp)
    finally:
        for put_back in undo:
            put_back()
    return _table(meter, result["jobs_done"], result["self_cpu_ms_per_job"],
                  jobs_per_second=result["jobs_per_second"],
                  children_cpu_ms_per_job=result["children_cpu_ms_per_job"])


def split_bare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    meter = Meter()
    jobs = args.batches * args.items
    undo = _shared_parts(meter)
    try:
        cpu0 = bench_local.cpu_seconds()
        rate = bench_local.bare_shim(jobs, args.parallel, tmp, args.job_nice)
        cpu = bench_local.cpu_per_job(cpu0, jobs)
    finally:
        for put_back in undo:
            put_back()
    return _table(meter, jobs, cpu["self_cpu_ms_per_job"], jobs_per_second=round(rate, 1),
                  children_cpu_ms_per_job=cpu["children_cpu_ms_per_job"])


def _table(meter: Meter, jobs: int, self_ms: float, **figures: Any) -> dict[str, Any]:
    parts = {name: round(seconds * 1000 / jobs, 3)
             for name, seconds in sorted(meter.own.items(), key=lambda kv: -kv[1])}
    return {**figures, "self_cpu_ms_per_job": self_ms, "parts_ms_per_job": parts,
            "calls_per_job": {n: round(c / jobs, 2) for n, c in meter.calls.most_common()},
            "rest_ms_per_job": round(self_ms - sum(parts.values()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--job-nice", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--dir", default=None,
                    help="where the round's files go (default: the system's temp dir)")
    ap.add_argument("--detail", action="store_true",
                    help="also meter the parts of a step (" + ", ".join(DETAIL) + ")")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        batchq = split_batchq(args, Path(tmp) / "batchq")
        bare = split_bare(args, Path(tmp) / "bare")
    total = {side: r["self_cpu_ms_per_job"] + r["children_cpu_ms_per_job"]
             for side, r in (("batchq", batchq), ("bare", bare))}
    print(json.dumps({"batches": args.batches, "items": args.items, "parallel": args.parallel,
                      "batchq": batchq, "bare_shim": bare,
                      "own_cpu_more_than_bare_ms_per_job":
                          round(batchq["self_cpu_ms_per_job"] - bare["self_cpu_ms_per_job"], 2),
                      "cpu_ratio": round(total["bare"] / total["batchq"], 2),
                      "jobs_per_second_ratio": round(
                          batchq["jobs_per_second"] / bare["jobs_per_second"], 2)}, indent=2))


if __name__ == "__main__":
    main()
