"""Benchmark: preservation storage, 100 OCFL objects x 10 files, on both targets.

Deposits through the storage interface the worker uses (`reconciler.storage`), one object
after another in one process, then a second pass of the same deposits (each must find the
head unchanged and write nothing), then validates the whole storage root with ocfl-py.
Targets: a filesystem root on local disk (files staged inside the root's working area, as
the worker stages them, so a deposit hard-links; and staged elsewhere, so it copies), and
S3 on the test SeaweedFS (scripts/build-test-s3) on loopback.

Run: `python bench/bench_storage.py [--objects 100] [--files 10] [--size 65536]
[--targets fs-link,fs-copy,s3]`; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocfl.storage_root import StorageRoot  # noqa: E402

from reconciler.storage import FilesystemTarget, ObjectInfo, StagedFile, Target  # noqa: E402
from reconciler.storage.s3 import S3Target  # noqa: E402


def stage(where: Path, objects: int, files: int, size: int) -> list[list[StagedFile]]:
    """Distinct content per file (so nothing deduplicates), hashed as the worker hashes."""
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for o in range(objects):
        staged = []
        for f in range(files):
            seed = hashlib.sha512(f"{o}/{f}".encode()).digest()
            data = (seed * (size // len(seed) + 1))[:size]
            path = where / f"{o:03d}-{f:02d}"
            path.write_bytes(data)
            staged.append(StagedFile(f"file-{f:02d}.bin", path, size, {
                a: hashlib.new(a, data).hexdigest() for a in ("sha512", "sha256", "md5")}))
        out.append(staged)
    return out


def run(target: Target, objects: list[list[StagedFile]]) -> dict[str, float]:
    t0 = time.monotonic()
    for o, files in enumerate(objects):
        r = target.deposit(ObjectInfo(f"bench/object-{o:03d}", "bench", f"object-{o:03d}"),
                           files, message="bench")
        assert r.created and r.version == "v1", r
    first = time.monotonic() - t0
    t0 = time.monotonic()
    for o, files in enumerate(objects):
        r = target.deposit(ObjectInfo(f"bench/object-{o:03d}", "bench", f"object-{o:03d}"),
                           files, message="bench")
        assert not r.created and r.copied == 0, r
    again = time.monotonic() - t0
    count = len(objects)
    total = sum(f.size for files in objects for f in files)
    return {"objects": count, "bytes": total, "seconds": round(first, 2),
            "objects_per_s": round(count / first, 1),
            "MiB_per_s": round(total / first / 2**20, 1),
            "unchanged_pass_seconds": round(again, 2)}


def validate(root: Any) -> float:
    logging.getLogger().setLevel(logging.WARNING)
    t0 = time.monotonic()
    sr = StorageRoot(root=root)
    assert sr.validate() and sr.good_objects == sr.num_objects, sr.errors
    return round(time.monotonic() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--targets", default="fs-link,fs-copy,s3")
    args = ap.parse_args()
    results: dict[str, Any] = {"objects": args.objects, "files_per_object": args.files,
                               "file_size": args.size, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        cases: dict[str, Callable[[], None]] = {}

        def fs(name: str, link: bool) -> None:
            root = base / name
            where = root / "extensions" / "batchq-deposits" / "incoming" if link else \
                base / f"{name}-staged"
            objects = stage(where, args.objects, args.files, args.size)
            results[name] = run(FilesystemTarget(root), objects)
            results[name]["validate_seconds"] = validate(str(root))

        def s3() -> None:
            from tests.ocfl_check import s3_root
            from tests.s3.server import S3Server, weed_binary

            server = S3Server(base / "s3", weed_binary())
            try:
                bucket = server.bucket()
                objects = stage(base / "s3-staged", args.objects, args.files, args.size)
                target = S3Target.from_env(f"s3://{bucket}/ocfl", server.env(bucket))
                results["s3"] = run(target, objects)
                results["s3"]["validate_seconds"] = validate(s3_root(server, bucket))
            finally:
                server.close()

        cases = {"fs-link": lambda: fs("fs-link", True), "fs-copy": lambda: fs("fs-copy", False),
                 "s3": s3}
        for name in args.targets.split(","):
            cases[name]()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
