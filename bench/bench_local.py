"""Benchmark: 1,000 batches x 10 items on the embedded default, with a no-op job command.

Measures the time for the queue to settle (every batch Completed and reported), the store
writes that took, a second pass with no new commit (must write nothing), and peak memory.
Run: `python bench/bench_local.py [--batches 1000] [--items 10]`; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import commit_all

from reconciler.app.service import Reconciler, Settings


def make_repo(root: Path, batches: int, items: int, parallel: int) -> None:
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "noop.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"job": {"command": ["/bin/true"]}, "allowedUrlPrefixes": ["http://127.0.0.1/"],
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
                            {"id": f"item-{i:02d}", "url": f"http://127.0.0.1/{b}/{i}"}
                            for i in range(items)]}}}
        (root / "batches" / f"bench-{b:04d}.yaml").write_text(yaml.safe_dump(doc))
    commit_all(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        make_repo(repo, args.batches, args.items, args.parallel)
        rec = Reconciler(Settings(repo=str(repo), state_dir=state, interval=0.1))
        t0 = time.monotonic()
        passes = rec.run_until_idle(timeout=3600)
        settle = time.monotonic() - t0
        writes = rec.store.writes
        states: dict[str, int] = {}
        for b in rec.store.list_batches():
            states[str(b.status.state)] = states.get(str(b.status.state), 0) + 1
        before = rec.store.writes
        t1 = time.monotonic()
        rec.run_pass()
        idle_pass = time.monotonic() - t1
        idle_writes = rec.store.writes - before
        emails = len(list((state / "outbox").glob("*.eml")))
        rec.close()
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "batches": args.batches, "items": args.items, "jobs": args.batches * args.items,
        "parallel": args.parallel, "settle_seconds": round(settle, 1), "passes": passes,
        "jobs_per_second": round(args.batches * args.items / settle, 1),
        "store_writes": writes, "states": states, "emails": emails,
        "idle_pass_seconds": round(idle_pass, 3), "idle_pass_writes": idle_writes,
        "peak_rss_mib": round(me, 1),
    }
    print(json.dumps(result, indent=2))
    if idle_writes or states != {"Completed": args.batches}:
        sys.exit(1)


if __name__ == "__main__":
    main()
