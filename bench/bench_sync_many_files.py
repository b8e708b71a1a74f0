"""Benchmark: the first sync of a commit that adds N batch files (issue 7 §4).

For each N, one commit adds N small batch files (one inline item each) and a profile to a
fresh repository; a fresh state dir then syncs it once. Two figures per N: reading the
commit (`GitSource.sync`: fetch into the mirror, list the tree, read every file) and
applying it (`apply_sync` in one store transaction: validate each file, store each spec).
A linear sync keeps files/s roughly constant as N grows.
Run: `python bench/bench_sync_many_files.py [--files 2000 10000]`; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import commit_all

from reconciler.source.gitrepo import GitSource
from reconciler.source.sync import apply_sync
from reconciler.store.local.sqlite import SqliteStore


def make_repo(root: Path, files: int) -> None:
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"allowedUrlPrefixes": ["http://127.0.0.1/"]}}))
    for n in range(files):
        doc = {"apiVersion": "batchq.dev/v1", "kind": "Batch",
               "spec": {"profile": "bench",
                        "depositor": {"name": "Bench", "email": "b@example.org"},
                        "manifest": {"items": [{"id": "item-1",
                                                "url": f"http://127.0.0.1/{n}"}]}}}
        (root / "batches" / f"b-{n:05d}.yaml").write_text(yaml.safe_dump(doc))
    commit_all(root, f"add {files} batch files")


def measure(files: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        make_repo(repo, files)
        source = GitSource(str(repo), "main", state / "git")
        store = SqliteStore(state / "batchq.sqlite3")
        t0 = time.monotonic()
        result = source.sync(None)
        read = time.monotonic() - t0
        t1 = time.monotonic()
        with store.transaction():
            apply_sync(store, result)
        applied = time.monotonic() - t1
        batches = len(store.list_batches())
        store.close()
    total = read + applied
    return {
        "files": files, "batches_stored": batches,
        "read_seconds": round(read, 2), "apply_seconds": round(applied, 2),
        "total_seconds": round(total, 2),
        "read_files_per_second": round(files / read, 1),
        "files_per_second": round(files / total, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, nargs="+", default=[2000, 10000])
    args = ap.parse_args()
    results = []
    for n in args.files:
        results.append(measure(n))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()],
                      "cpus": os.cpu_count()}))
    if any(r["batches_stored"] != r["files"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
