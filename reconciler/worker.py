"""The ingest job: fetch one item's payload, verify it, store it content-addressed (DESIGN §6).

Configured only by environment variables, so the same program runs as a local subprocess
and as a Kubernetes container:

    BATCHQ_BATCH, BATCHQ_ITEM_ID, BATCHQ_ITEM_URL       what to ingest (required)
    BATCHQ_ITEM_SIZE, BATCHQ_DIGEST_ALGORITHM, BATCHQ_DIGEST_VALUE   what to expect
    BATCHQ_STORAGE            storage root (required)
    BATCHQ_ALLOWED_PREFIXES   newline-separated URL prefixes; unset allows any
    BATCHQ_BASE_DIR           base for relative file: URLs
    BATCHQ_TIMEOUT            seconds for the whole download (default 300)
    BATCHQ_MAX_BYTES          payload size limit (default 10 GiB)
    BATCHQ_TERMINATION_LOG    where the one-line failure reason goes
                              (default /dev/termination-log when /dev exists, as on Kubernetes)

Storage: `<root>/sha256/<2 hex>/<sha256>` holds the bytes (written to a temp file, fsynced,
renamed), and `<root>/items/<sha256 of batch/item>.json` records what was stored for the
item. A restarted item whose record and file still verify exits 0 without downloading.

Exit codes: 0 stored (or already stored); 1 the payload could not be fetched or did not
verify; 2 refused input (URL not allowed, bad configuration). On failure the reason is one
line on stderr and in the termination log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reconciler.fetch import FetchError, fetch_to_file

MESSAGE_LIMIT = 1024


class WorkerError(Exception):
    def __init__(self, reason: str, code: int = 1) -> None:
        super().__init__(reason)
        self.code = code


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise WorkerError(f"{name} is not set", 2)
    return value


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def cas_path(root: Path, sha256: str) -> Path:
    return root / "sha256" / sha256[:2] / sha256


def record_path(root: Path, batch: str, item: str) -> Path:
    key = hashlib.sha256(f"{batch}/{item}".encode()).hexdigest()
    return root / "items" / f"{key}.json"


def _verify(size: int, digests: dict[str, str], want_size: int | None,
            want: tuple[str, str] | None) -> None:
    if want_size is not None and size != want_size:
        raise WorkerError(f"size mismatch: expected {want_size} bytes, got {size}")
    if want is not None and digests[want[0]] != want[1]:
        raise WorkerError(f"digest mismatch: expected {want[0]} {want[1]},"
                          f" got {digests[want[0]]}")


def _already_stored(root: Path, batch: str, item: str, url: str, want_size: int | None,
                    want: tuple[str, str] | None) -> str | None:
    """The stored path if this item was stored before and still verifies."""
    try:
        record = json.loads(record_path(root, batch, item).read_text())
    except (FileNotFoundError, ValueError):
        record = None
    if record is not None and record.get("url") == url:
        stored = cas_path(root, record["sha256"])
        if stored.exists():
            digests = {"sha256": _hash_file(stored, "sha256")}
            if want is not None and want[0] != "sha256":
                digests[want[0]] = _hash_file(stored, want[0])
            if digests["sha256"] == record["sha256"]:
                try:
                    _verify(stored.stat().st_size, digests, want_size, want)
                    return str(stored)
                except WorkerError:
                    return None
    if want is not None and want[0] == "sha256":
        stored = cas_path(root, want[1])
        if (stored.exists() and _hash_file(stored, "sha256") == want[1]
                and (want_size is None or stored.stat().st_size == want_size)):
            _write_record(root, batch, item, url, stored.stat().st_size, want[1], want)
            return str(stored)
    return None


def _write_record(root: Path, batch: str, item: str, url: str, size: int, sha256: str,
                  want: tuple[str, str] | None) -> None:
    record = {"batch": batch, "item": item, "url": url, "size": size, "sha256": sha256,
              "digest": {"algorithm": want[0], "value": want[1]} if want else None,
              "stored": str(cas_path(root, sha256))}
    _atomic_write(record_path(root, batch, item), json.dumps(record, sort_keys=True).encode())


def ingest() -> str:
    batch = _env("BATCHQ_BATCH")
    item = _env("BATCHQ_ITEM_ID")
    url = _env("BATCHQ_ITEM_URL")
    root = Path(_env("BATCHQ_STORAGE"))
    prefixes = os.environ.get("BATCHQ_ALLOWED_PREFIXES")
    if prefixes is not None:
        allowed = [p for p in prefixes.splitlines() if p]
        if not any(url.startswith(p) for p in allowed):
            raise WorkerError(f"URL {url} is not allowed (allowed prefixes:"
                              f" {', '.join(allowed) or 'none'})", 2)
    size_text = os.environ.get("BATCHQ_ITEM_SIZE")
    want_size = int(size_text) if size_text else None
    alg = os.environ.get("BATCHQ_DIGEST_ALGORITHM")
    want = (alg.lower(), _env("BATCHQ_DIGEST_VALUE").lower()) if alg else None
    if want is not None and want[0] not in ("md5", "sha256", "sha512"):
        raise WorkerError(f"unknown digest algorithm {want[0]}", 2)
    timeout = float(_env("BATCHQ_TIMEOUT", "300"))
    max_bytes = int(_env("BATCHQ_MAX_BYTES", str(10 * 1024**3)))
    base = os.environ.get("BATCHQ_BASE_DIR")
    root.mkdir(parents=True, exist_ok=True)

    done = _already_stored(root, batch, item, url, want_size, want)
    if done is not None:
        print(f"already stored: {item} -> {done}", flush=True)
        return done

    print(f"fetching {url}", flush=True)
    hashers = {"sha256": hashlib.sha256()}
    if want is not None and want[0] != "sha256":
        hashers[want[0]] = hashlib.new(want[0])

    def update(chunk: bytes) -> None:
        for h in hashers.values():
            h.update(chunk)

    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".incoming-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                size = fetch_to_file(url, fh, max_bytes=max_bytes, timeout=timeout,
                                     base_dir=Path(base) if base else None, on_chunk=update)
            except FetchError as exc:
                raise WorkerError(str(exc)) from exc
            fh.flush()
            os.fsync(fh.fileno())
        digests = {name: h.hexdigest() for name, h in hashers.items()}
        _verify(size, digests, want_size, want)
        final = cas_path(root, digests["sha256"])
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _write_record(root, batch, item, url, size, digests["sha256"], want)
    print(f"stored {size} bytes: {item} -> {final}", flush=True)
    return str(final)


def _termination_log() -> Path | None:
    configured = os.environ.get("BATCHQ_TERMINATION_LOG")
    if configured:
        return Path(configured)
    default = Path("/dev/termination-log")
    return default if default.parent.is_dir() and os.access(default.parent, os.W_OK) else None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ingest()
        return 0
    except WorkerError as exc:
        reason, code = str(exc), exc.code
    except (OSError, ValueError) as exc:
        reason, code = f"{type(exc).__name__}: {exc}", 1
    reason = " ".join(reason.split())[:MESSAGE_LIMIT]
    print(f"batchq-worker: {reason}", file=sys.stderr, flush=True)
    log = _termination_log()
    if log is not None:
        with contextlib.suppress(OSError):
            log.write_text(reason + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
