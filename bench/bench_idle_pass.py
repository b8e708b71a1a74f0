"""Benchmark: one pass with no new commit over a store holding 100,000 settled items.

Ten batches of 10,000 items are committed to a Git repository and run through the real
reconciler (sync, controller, reports); only the jobs' processes are left out: each pass's
new jobs are moved to Completed with the local runner's own store methods (one
transaction), so filling the store takes seconds, not hours. Then one more full pass
(`run_pass`: fetch, runner, controller) is timed with nothing new: it must write nothing
(goal: 0 writes, under 0.5 s; issue 13 goal 3).
Run: `python bench/bench_idle_pass.py [--batches 10] [--items 10000]`; figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import commit_all

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState


def make_repo(root: Path, batches: int, items: int, parallel: int = 10_000) -> None:
    """bench_local.py's repository (no-op profile, `parallel` job slots), its files written
    as JSON (a YAML subset): yaml.safe_dump of 100,000 items alone takes minutes."""
    def put(rel: str, doc: dict[str, object]) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(doc, indent=1))

    put("profiles/noop.yaml", {
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"job": {"command": ["/bin/true"]}, "allowedUrlPrefixes": ["http://127.0.0.1/"],
                 "notification": {"from": "batchq@example.org"}}})
    put("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                       "spec": {"maxActiveBatches": max(batches, 10), "maxActiveJobs": parallel,
                                "maxDeletesPerSync": 10}})
    for b in range(batches):
        put(f"batches/bench-{b:04d}.yaml", {
            "apiVersion": "batchq.dev/v1", "kind": "Batch", "metadata": {"name": f"bench-{b:04d}"},
            "spec": {"profile": "noop", "depositor": {"name": "Bench", "email": "b@example.org"},
                     "manifest": {"items": [{"id": f"item-{i:05d}",
                                             "url": f"http://127.0.0.1/{b}/{i}"}
                                            for i in range(items)]}}})
    commit_all(root)


def finish_new_jobs(rec: Reconciler) -> int:
    """Move every Pending job to Completed, as the runner would, in one transaction."""
    store = rec.store
    pending = [j.name for j in store.list_jobs() if j.state == JobState.PENDING]
    with store.transaction():
        for name in pending:
            store.mark_job_started(name, os.getpid())  # type: ignore[attr-defined]
            store.mark_job_finished(name, 0, "")  # type: ignore[attr-defined]
    return len(pending)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--items", type=int, default=10_000)
    args = ap.parse_args()
    total = args.batches * args.items
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        make_repo(repo, args.batches, args.items)
        rec = Reconciler(Settings(repo=str(repo), state_dir=state, interval=0.1))
        t0 = time.monotonic()
        repo_state = rec.sync()
        passes = 0
        while True:
            passes += 1
            progressed = rec.reconcile(repo_state)
            progressed |= bool(finish_new_jobs(rec))
            if not progressed:
                break
        fill = time.monotonic() - t0
        states: dict[str, int] = {}
        for b in rec.store.list_batches():
            states[str(b.status.state)] = states.get(str(b.status.state), 0) + 1
        rec.run_pass()  # the first full pass after filling (the runner's first look)
        figures = []
        for _ in range(3):
            before = rec.store.writes
            t1 = time.monotonic()
            rec.run_pass()
            figures.append((time.monotonic() - t1, rec.store.writes - before))
        alone = []
        for _ in range(3):
            t2 = time.monotonic()
            rec.reconcile(repo_state)
            alone.append(time.monotonic() - t2)
        controller_only = sorted(alone)[1]
        rec.close()
    seconds = sorted(f[0] for f in figures)[1]
    result = {
        "batches": args.batches, "items": total, "fill_seconds": round(fill, 1),
        "fill_passes": passes, "states": states,
        "idle_pass_seconds_median_of_3": round(seconds, 3),
        "idle_pass_writes": max(f[1] for f in figures),
        "idle_controller_pass_seconds_median_of_3": round(controller_only, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    if result["idle_pass_writes"] or states != {"Completed": args.batches}:
        sys.exit(1)


if __name__ == "__main__":
    main()
