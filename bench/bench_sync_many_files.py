"""Benchmark: the first sync of a commit that adds N batch files (issue 7 §4).

For each N, one commit adds N small batch files (one inline item each) and a profile to a
fresh repository; a fresh state dir then syncs it once. Two figures per N: reading the
commit (`GitSource.sync`: fetch into the mirror, list the tree, read every file) and
applying it (`apply_sync` in one store transaction: validate each file, store each spec).
A linear sync keeps files/s roughly constant as N grows. Beside wall-clock seconds, each
figure has its CPU seconds (this process and the git processes it waited for), which a
machine shared with other work inflates far less.

`--incremental`: the cost of a commit that changes one file. For each N, a repository of
N batch files is synced once (not timed), then five times one file is edited and committed
and the sync from the last synced commit is timed (`GitSource.sync(last)` + `apply_sync`);
the median is printed, and the ratio of each N to the first (a 1-file repository).
Run: `python bench/bench_sync_many_files.py [--files 2000 10000]` or
`python bench/bench_sync_many_files.py --incremental [--files 1 10000]`; figures in
bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
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


PROFILE: cProfile.Profile | None = None  # --profile: the timed sections only


def profiled(title: str, key: str) -> None:
    """Print the top of the profile of the timed sections (--profile), then start afresh."""
    global PROFILE
    if PROFILE is not None:
        print(f"### {title}, by {key}", flush=True)
        pstats.Stats(PROFILE, stream=sys.stdout).sort_stats(key).print_stats(14)
        PROFILE = cProfile.Profile()


def timing(on: bool) -> None:
    if PROFILE is not None:
        (PROFILE.enable if on else PROFILE.disable)()


def cpu() -> float:
    """CPU seconds of this process and of its finished children (the git commands)."""
    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(files: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        make_repo(repo, files)
        source = GitSource(str(repo), "main", state / "git")
        store = SqliteStore(state / "batchq.sqlite3")
        timing(True)
        t0, c0 = time.monotonic(), cpu()
        result = source.sync(None)
        read, read_cpu = time.monotonic() - t0, cpu() - c0
        t1, c1 = time.monotonic(), cpu()
        with store.transaction():
            apply_sync(store, result)
        applied, apply_cpu = time.monotonic() - t1, cpu() - c1
        timing(False)
        profiled(f"first sync of {files} files", "tottime")
        batches = len(store.list_batches())
        store.close()
    total = read + applied
    return {
        "files": files, "batches_stored": batches,
        "read_seconds": round(read, 2), "apply_seconds": round(applied, 2),
        "total_seconds": round(total, 2),
        "read_cpu_seconds": round(read_cpu, 2), "apply_cpu_seconds": round(apply_cpu, 2),
        "total_cpu_seconds": round(read_cpu + apply_cpu, 2),
        "read_files_per_second": round(files / read, 1),
        "files_per_second": round(files / total, 1),
    }


def commit_edit(root: Path, round_: int) -> None:
    """Edit one batch file (a new item URL each round) and commit it."""
    path = root / "batches" / "b-00000.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["manifest"]["items"][0]["url"] = f"http://127.0.0.1/edit-{round_}"
    path.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.org")
    subprocess.run(["git", "commit", "-q", "-am", f"edit {round_}"], cwd=root, env=env,
                   check=True)


def measure_incremental(files: int, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        make_repo(repo, files)
        source = GitSource(str(repo), "main", state / "git")
        store = SqliteStore(state / "batchq.sqlite3")
        with store.transaction():
            result = source.sync(None)
            apply_sync(store, result)
        last, times, cpus, writes = result.head, [], [], []
        for n in range(rounds):
            commit_edit(repo, n)
            before = store.writes
            timing(True)
            t0, c0 = time.monotonic(), cpu()
            result = source.sync(last)
            with store.transaction():
                apply_sync(store, result)
            times.append(time.monotonic() - t0)
            cpus.append(cpu() - c0)
            timing(False)
            writes.append(store.writes - before)
            assert [f.path for f in result.changed] == ["batches/b-00000.yaml"]
            last = result.head
        generation = store.get_batch("b-00000").generation  # type: ignore[union-attr]
        profiled(f"{rounds} commits changing 1 of {files} files", "cumulative")
        store.close()
    return {"files": files, "rounds": rounds, "changed_per_commit": 1,
            "median_seconds": round(statistics.median(times), 4),
            "times": [round(t, 4) for t in times],
            "median_cpu_seconds": round(statistics.median(cpus), 4),
            "cpu": [round(t, 4) for t in cpus], "store_writes": writes,
            "generation": generation}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, nargs="+")
    ap.add_argument("--incremental", action="store_true",
                    help="time a commit that changes 1 file, for each N (default 1 10000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="also print the top of a cProfile of the timed sections")
    args = ap.parse_args()
    if args.profile:
        global PROFILE
        PROFILE = cProfile.Profile()
    if args.incremental:
        runs = [measure_incremental(n, args.rounds) for n in args.files or [1, 10000]]
        for r in runs:
            for key in ("median_seconds", "median_cpu_seconds"):
                r[f"ratio_to_first_{key.split('_')[1]}"] = round(
                    float(str(r[key])) / float(str(runs[0][key])), 2)
            print(json.dumps(r), flush=True)
        print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()],
                          "cpus": os.cpu_count()}))
        if any(r["generation"] != 1 + args.rounds for r in runs):
            sys.exit(1)
        return
    results = []
    for n in args.files or [2000, 10000]:
        results.append(measure(n))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()],
                      "cpus": os.cpu_count()}))
    if any(r["batches_stored"] != r["files"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
