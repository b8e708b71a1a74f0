"""Benchmark: the same no-op jobs as one big batch and as 10-item batches, in one run.

Issue 13 goal 1: a 10,000-item batch runs at >= 0.8x the jobs/s of the same jobs split
into 10-item batches. Each shape runs on a fresh state dir with the real reconciler and
local runner (`/bin/true` jobs, as bench_local.py, whose repository layout it uses) for at
most `--seconds`, or until idle; the figure is the jobs Completed per second of that
time (the first sync of the files is done before the clock starts), so a shape too slow
to finish in a bounded run still gets a figure.
Run: `python bench/bench_big_batch.py [--items 10000] [--seconds 150] [--parallel 8]`;
`--batches 10 --no-split` runs 10 batches of `--items` alone (does it settle, how fast).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import bench_idle_pass
from bench_local import make_repo

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState


def run(batches: int, items: int, parallel: int, seconds: float,
        as_json: bool = False) -> tuple[float, dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        if as_json:  # the same repository, written fast (bench_idle_pass.make_repo)
            bench_idle_pass.make_repo(repo, batches, items, parallel)
        else:
            make_repo(repo, batches, items, parallel)
        rec = Reconciler(Settings(repo=str(repo), state_dir=state))  # interval as run
        setup = time.monotonic()
        rec.sync()  # the first sync of the files (issue 13 goal 4, not this bench's) untimed
        setup = time.monotonic() - setup
        t0 = time.monotonic()
        passes, settled = 0, False
        while time.monotonic() - t0 < seconds:
            rec.wake.clear()
            progressed = rec.run_pass(sync=rec.sync_due())  # as the loop passes
            passes += 1
            if not progressed:
                if not rec.busy():
                    settled = True
                    break
                rec.wake.wait(0.5)
        elapsed = time.monotonic() - t0
        done = sum(1 for j in rec.store.list_jobs() if j.state == JobState.COMPLETED)
        rec.close()
    rate = done / elapsed
    return rate, {"shape": f"{batches} x {items}", "first_sync_seconds": round(setup, 1),
                  "seconds": round(elapsed, 1),
                  "passes": passes, "jobs_completed": done, "settled": settled,
                  "jobs_per_second": round(rate, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--batches", type=int, default=1, help="big batches of --items each")
    ap.add_argument("--no-split", action="store_true", help="only the big batches")
    ap.add_argument("--json", action="store_true", help="write the batch files as JSON")
    args = ap.parse_args()
    big_rate, big = run(args.batches, args.items, args.parallel, args.seconds, args.json)
    out: dict[str, object] = {"big": big}
    if not args.no_split:
        small_rate, small = run(args.batches * args.items // 10, 10, args.parallel,
                                args.seconds)
        out.update(small=small, ratio_big_to_small=round(big_rate / max(small_rate, 1e-9), 2))
    out.update(load_average=os.getloadavg(), peak_rss_mib=round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
