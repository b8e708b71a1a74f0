"""Benchmark (issue 8): one batch of 100 objects x 10 files, end to end, on both targets.

The real path on the embedded default: a Git repository with one batch whose items are
objects of inline `files:`, the reconciler (in this process) running the real worker as
each job, which fetches every file from a loopback HTTP server, verifies it and deposits
the OCFL object, on a filesystem root or on S3 (SeaweedFS on loopback, as the tests run
it). Reports the time from the reconciler's start to the batch Completed, objects/s,
files/s and MiB/s of payload, then (not timed) checks every object holds its files with
the right bytes and validates the storage root with ocfl-py, and peak memory.
Run: `python bench/bench_objects.py [--target filesystem|s3|both] [--objects 100]
[--files 10] [--size 65536] [--parallel 8]`; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from common import commit_all

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.app.service import Reconciler, Settings  # noqa: E402
from tests.ocfl_check import head, s3_root, validate_root  # noqa: E402

BATCH = "bench-objects"


def body(obj: int, index: int, size: int) -> bytes:
    """Distinct bytes per file (nothing deduplicates), made again on each request so the
    bench holds no payload in memory."""
    seed = hashlib.sha512(f"{obj}/{index}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Payloads(BaseHTTPRequestHandler):
    """GET /<object>/<file> -> that file's bytes."""

    size = 0

    def do_GET(self) -> None:
        try:
            obj, index = (int(p) for p in self.path.strip("/").split("/"))
        except ValueError:
            self.send_error(404)
            return
        data = body(obj, index, self.size)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a thousand requests are not news."""


@contextmanager
def payload_server(size: int) -> Iterator[str]:
    handler = type("SizedPayloads", (Payloads,), {"size": size})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def make_repo(root: Path, base: str, storage: dict[str, str], args: argparse.Namespace
              ) -> None:
    """One profile (the default job: the batchq worker), one queue, ONE batch."""
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"storage": storage, "allowedUrlPrefixes": [base],
                 "notification": {"from": "batchq@example.org"}}}))
    (root / "queue.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Queue",
        "spec": {"maxActiveBatches": 1, "maxActiveJobs": args.parallel}}))
    items = [{"id": f"obj-{o:03d}", "files": [
        {"name": f"file-{f:02d}.bin", "url": f"{base}{o}/{f}", "size": args.size,
         "digest": {"algorithm": "sha256",
                    "value": hashlib.sha256(body(o, f, args.size)).hexdigest()}}
        for f in range(args.files)]} for o in range(args.objects)]
    (root / "batches" / f"{BATCH}.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Batch", "metadata": {"name": BATCH},
        "spec": {"profile": "bench", "depositor": {"name": "Bench", "email": "b@example.org"},
                 "manifest": {"items": items}}}))
    commit_all(root)


class JobMemory:
    """The largest peak RSS of a worker job, sampled from /proc while jobs run: VmHWM is
    the process's own high-water mark since exec (RUSAGE_CHILDREN is not: a child's
    starts at the parent's RSS when it was forked)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            for pid in descendants():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if cmdline[:1] == [b"/bin/sh"] or b"reconciler.worker" not in cmdline:
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                except (OSError, ValueError):  # it exited meanwhile
                    continue

    def close(self) -> float:
        """Stop sampling; the peak in MiB."""
        self.stop.set()
        self.thread.join()
        return round(self.peak_kib / 1024, 1)


def descendants(pid: str = "self") -> list[int]:
    """Every process below `pid` (a job is the runner's shell shim and, below it, the
    worker)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            kids = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found.extend([kid, *descendants(str(kid))])
    return found


def reconcile(base: Path, url: str, storage: dict[str, str], args: argparse.Namespace
              ) -> tuple[float, dict[str, float]]:
    """Seconds from the reconciler's start to the batch Completed (fails otherwise), and
    peak RSS: this process (the reconciler and the payload server; for the second target,
    also the first's checks) and the largest worker job."""
    repo = base / "repo"
    make_repo(repo, url, storage, args)
    completed: list[float] = []

    def on_pass(rec: Reconciler) -> None:
        if not completed and any(b.status.state == "Completed"
                                 for b in rec.store.list_batches()):
            completed.append(time.monotonic())

    jobs = JobMemory()
    t0 = time.monotonic()
    rec = Reconciler(Settings(repo=str(repo), state_dir=base / "state", interval=0.1,
                              storage_root=base / "storage"))
    try:
        rec.run_until_idle(timeout=3600, on_pass=on_pass)
        batches = {b.name: str(b.status.state) for b in rec.store.list_batches()}
        assert batches == {BATCH: "Completed"} and completed, (
            f"the batch did not complete: {batches}; see {base / 'state'}")
    finally:
        rec.close()
        job_peak = jobs.close()
    return completed[0] - t0, {
        "reconciler_process_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_job_mib": job_peak}


def check_storage(root: Any, args: argparse.Namespace) -> int:
    """Every object is stored with its files and their bytes; ocfl-py finds the whole root
    valid. Returns the number of OCFL objects in the root."""
    for o in range(args.objects):
        found = head(root, f"{BATCH}/obj-{o:03d}")
        assert found is not None, f"object obj-{o:03d} is not in storage"
        assert sorted(found.content) == [f"file-{f:02d}.bin" for f in range(args.files)], (
            o, sorted(found.content))
        for f in range(args.files):
            assert found.content[f"file-{f:02d}.bin"] == body(o, f, args.size), (o, f)
    return validate_root(root)[0]


def figures(run: tuple[float, dict[str, float]], objects_found: int,
            args: argparse.Namespace) -> dict[str, Any]:
    seconds, rss = run
    files = args.objects * args.files
    payload = files * args.size
    return {"seconds_to_completed": round(seconds, 2),
            "objects_per_s": round(args.objects / seconds, 2),
            "files_per_s": round(files / seconds, 1),
            "payload_MiB_per_s": round(payload / seconds / 2**20, 2),
            "ocfl_objects_in_root": objects_found, "peak_rss": rss}


def run_filesystem(base: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    run = reconcile(base, url, {"type": "filesystem", "path": "bench"}, args)
    return figures(run, check_storage(base / "storage" / "bench", args), args)


def run_s3(base: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from tests.s3.server import S3Server, weed_binary

    server = S3Server(base / "s3", weed_binary())
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        bucket = server.bucket()
        # the operator's credentials, as the reconciler reads them: its environment
        os.environ.update({k: v for k, v in server.env(bucket).items()
                           if k.startswith("AWS_")})
        run = reconcile(base, url, {"type": "s3", "bucket": bucket, "prefix": "ocfl",
                                        "endpoint": server.endpoint}, args)
        return figures(run, check_storage(s3_root(server, bucket), args), args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=("filesystem", "s3", "both"), default="both")
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    logging.getLogger("reconciler").setLevel(logging.WARNING)  # a line a job: not news
    targets = ("filesystem", "s3") if args.target == "both" else (args.target,)
    results: dict[str, Any] = {
        "objects": args.objects, "files_per_object": args.files, "file_size": args.size,
        "parallel": args.parallel, "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with payload_server(args.size) as url:
        for target in targets:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                run = run_filesystem if target == "filesystem" else run_s3
                results[target] = run(Path(tmp), url, args)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
