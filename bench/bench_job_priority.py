"""Benchmark: how much CPU a busy loop of the reconciler's priority gets while jobs burn
the CPU, with the jobs grouped as the local runner groups them and with each in a session
of its own (what the runner did before issue 13's sixth round).

Linux's autogroup (`kernel.sched_autogroup_enabled`) gives every session an equal share of
the CPU whatever the nice values inside it, so `--job-nice` holds only for jobs in the
reconciler's session. Run: `python bench/bench_job_priority.py [--jobs 4] [--seconds 3]
[--nice 10]`; it prints the loop's share of one core under each grouping. Figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from reconciler.store.local.runner import (
    job_grouping,
    lower_priority,
    own_session_for_jobs,
)

BURN = [sys.executable, "-c", "while True: pass"]


def loop_share(jobs: int, seconds: float, nice: int, own_session: bool) -> float:
    """The share of one core (0 to 1) this process's loop gets beside `jobs` CPU-bound jobs
    started as the runner starts them (a group of their own, `nice` steps nicer)."""
    procs = [subprocess.Popen(BURN, **job_grouping(own_session)) for _ in range(jobs)]
    try:
        for proc in procs:
            lower_priority(proc.pid, nice)
        time.sleep(0.5)  # the jobs are running
        cpu, wall = time.process_time(), time.monotonic()
        while time.monotonic() - wall < seconds:
            pass
        return (time.process_time() - cpu) / (time.monotonic() - wall)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--nice", type=int, default=10)
    args = ap.parse_args()
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    result = {
        "cores": os.cpu_count(), "jobs": args.jobs, "nice": args.nice,
        "autogroup_enabled": autogroup.read_text().strip() if autogroup.exists() else None,
        "runner_gives_jobs_own_session": own_session_for_jobs(),
        "loop_share_jobs_in_own_sessions": round(
            loop_share(args.jobs, args.seconds, args.nice, own_session=True), 2),
        "loop_share_jobs_in_reconciler_session": round(
            loop_share(args.jobs, args.seconds, args.nice, own_session=False), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
