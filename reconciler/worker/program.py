"""batchq-worker — the ingest job: fetch one item's payload, verify it, store it (DESIGN §6).

Configured only by environment variables, so the same program runs as a local subprocess
and as a Kubernetes container (`python -m reconciler.worker`, or `batchq-worker`):

    BATCHQ_BATCH              batch name                                        (required)
    BATCHQ_ITEM_ID            item id                                           (required)
    BATCHQ_ITEM_URL           payload URL: http, https, file; userinfo shown as `***@`
                              means "the credentials are in BATCHQ_CREDENTIALS_FILE" (required)
    BATCHQ_STORAGE            storage root directory                            (required)
    BATCHQ_ITEM_SIZE          expected size in bytes
    BATCHQ_DIGEST_ALGORITHM   md5 | sha1 | sha224 | sha256 | sha384 | sha512 | sha3_224 |
                              sha3_256 | sha3_384 | sha3_512 (DIGEST_HEX_DIGITS), with
                              BATCHQ_DIGEST_VALUE (lowercase hex)
    BATCHQ_ALLOWED_PREFIXES   newline-separated URL prefixes; unset allows any URL, set but
                              empty allows none (`reconciler.support.urls` decides either way)
    BATCHQ_GIT_DIR            the reconciler's Git mirror, read-only: a relative `file:` URL
                              is read from it at BATCHQ_GIT_COMMIT (the batch's commit)
    BATCHQ_GIT_COMMIT         the commit the batch was synced from
    BATCHQ_FILE_ROOTS         newline-separated host directories an operator allowed for
                              absolute `file:` URLs; none: absolute `file:` URLs are refused
    BATCHQ_CREDENTIALS_FILE   a file (mode 0600) holding `user:password` for the URL's `***@`
    BATCHQ_TIMEOUT            deadline in seconds for the whole download (default 300)
    BATCHQ_MAX_BYTES          payload size limit (default 10 GiB)
    BATCHQ_TERMINATION_LOG    file that receives the one-line failure reason (default
                              /dev/termination-log when that file exists, as Kubernetes
                              mounts it; otherwise none)
    BATCHQ_OBJECT             an object of several files or a container (JSON; at most
                              64 KiB): the job is then `reconciler.worker.objectjob`'s,
                              with BATCHQ_OBJECT_ID, BATCHQ_TITLE, BATCHQ_CREATOR,
                              BATCHQ_DATE and BATCHQ_LOCAL_IDS (one a line) for storage

Storage: the bytes go to a temp file inside the storage root, hashed while streaming
(sha256 always, and the manifest's algorithm), are verified against the expected size and
digest, fsynced, and renamed to `<root>/sha256/<2 hex>/<sha256>` (then the directory is
fsynced). A JSON record `<root>/items/<sha256 of "batch/item">.json` (the item id never
becomes a path) says what was stored: batch, item, url, size, sha256, digest, and `stored`,
the payload's path relative to the root. A restarted item whose record (same URL) and
stored file still verify, or whose sha256 manifest digest names a stored file that
verifies, exits 0 without downloading ("already stored: ...").

Exit codes:
    0  stored, or already stored
    1  failed: the payload could not be fetched, did not verify (size, digest), could not
       be stored, or the worker was terminated (SIGTERM)
    2  refused input: URL not allowed by the prefixes, unsupported URL, `file:` path outside
       the base directory, missing or malformed configuration

On failure the reason is ONE line, `batchq-worker: <reason>` on stderr, and the reason alone
(at most 1024 characters) in the termination log; no temp file is left behind. Progress
goes to stdout. No output, record or message ever shows the credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS, is_hex_digest
from reconciler.manifests.fetch import FetchError, FetchRefused, FetchTooLarge, fetch_to_file
from reconciler.manifests.repofiles import RepoSnapshot
from reconciler.support.redaction import redact_text, redact_url
from reconciler.support.urls import UrlRefused, check_url, parse_url

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
MESSAGE_LIMIT = 1024
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_BYTES = 10 * 1024**3
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
PROGRESS_SECONDS = 5.0
TEMP_PREFIX = ".incoming-"


class WorkerError(Exception):
    """A failure with its one-line reason and exit code."""

    def __init__(self, reason: str, code: int = EXIT_FAILED) -> None:
        super().__init__(reason)
        self.code = code


class Terminated(BaseException):
    """SIGTERM arrived (deadline, deletion): unwind so that temp files are removed."""


@dataclass(frozen=True)
class Config:
    batch: str
    item: str
    url: str
    storage: Path
    size: int | None = None
    digest: tuple[str, str] | None = None  # (algorithm, lowercase hex)
    allowed: tuple[str, ...] | None = None  # None: any URL
    repo: RepoSnapshot | None = None
    file_roots: tuple[str, ...] = ()
    credentials: str | None = None  # `user:password` for a URL shown with `***@`
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES

    def check(self, url: str) -> None:
        """Raise UrlRefused unless `url` passes the one URL check (any prefix when
        `allowed` is None; what it refuses before comparing is refused either way)."""
        if self.allowed is None:
            parse_url(url)
        else:
            check_url(url, self.allowed, file_roots=self.file_roots)

    def allows(self, url: str) -> bool:
        """For redirect targets: `check` as a yes or no."""
        try:
            self.check(url)
        except UrlRefused:
            return False
        return True


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value.strip():
        raise WorkerError(f"{name} is not set", EXIT_REFUSED)
    return value.strip()


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise WorkerError(f"{name} must be a positive number of seconds, not {text!r}",
                          EXIT_REFUSED)
    return value


def _whole(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise WorkerError(f"{name} must be a whole number of bytes, not {text!r}",
                          EXIT_REFUSED)
    return int(text)


def _lines(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in env.get(name, "").splitlines() if line.strip())


def _repository(env: Mapping[str, str]) -> RepoSnapshot | None:
    git_dir = env.get("BATCHQ_GIT_DIR", "").strip()
    commit = env.get("BATCHQ_GIT_COMMIT", "").strip()
    if bool(git_dir) != bool(commit):
        raise WorkerError("BATCHQ_GIT_DIR and BATCHQ_GIT_COMMIT go together", EXIT_REFUSED)
    return RepoSnapshot(Path(git_dir), commit) if git_dir else None


def _credentials(env: Mapping[str, str]) -> str | None:
    """`user:password` from the job's credentials file, if it has one."""
    path = env.get("BATCHQ_CREDENTIALS_FILE", "").strip()
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None  # this item has no credentials
    except OSError as exc:
        raise WorkerError(f"cannot read BATCHQ_CREDENTIALS_FILE: {exc.strerror or exc}",
                          EXIT_REFUSED) from None
    return text or None


def config_from_env(env: Mapping[str, str]) -> Config:
    """The job's configuration; raise WorkerError (exit 2) for anything missing or wrong."""
    algorithm = env.get("BATCHQ_DIGEST_ALGORITHM", "").strip().lower()
    value = env.get("BATCHQ_DIGEST_VALUE", "").strip().lower()
    digest = None
    if algorithm or value:
        if algorithm not in DIGEST_HEX_DIGITS:
            raise WorkerError(f"BATCHQ_DIGEST_ALGORITHM must be one of"
                              f" {', '.join(DIGEST_HEX_DIGITS)}, not {algorithm!r}",
                              EXIT_REFUSED)
        if not is_hex_digest(algorithm, value):
            raise WorkerError(f"BATCHQ_DIGEST_VALUE {value!r} is not a {algorithm} digest"
                              f" ({DIGEST_HEX_DIGITS[algorithm]} hex digits)", EXIT_REFUSED)
        digest = (algorithm, value)
    prefixes = env.get("BATCHQ_ALLOWED_PREFIXES")
    max_bytes = _whole(env, "BATCHQ_MAX_BYTES", DEFAULT_MAX_BYTES)
    assert max_bytes is not None
    return Config(
        batch=_required(env, "BATCHQ_BATCH"),
        item=_required(env, "BATCHQ_ITEM_ID"),
        url=_required(env, "BATCHQ_ITEM_URL"),
        storage=Path(_required(env, "BATCHQ_STORAGE")),
        size=_whole(env, "BATCHQ_ITEM_SIZE", None),
        digest=digest,
        allowed=None if prefixes is None else _lines(env, "BATCHQ_ALLOWED_PREFIXES"),
        repo=_repository(env),
        file_roots=_lines(env, "BATCHQ_FILE_ROOTS"),
        credentials=_credentials(env),
        timeout=_number(env, "BATCHQ_TIMEOUT", DEFAULT_TIMEOUT),
        max_bytes=max_bytes,
    )


def cas_path(root: Path, sha256: str) -> Path:
    """Where content with this sha256 is stored."""
    return root / "sha256" / sha256[:2] / sha256


def record_key(batch: str, item: str) -> str:
    return hashlib.sha256(f"{batch}/{item}".encode()).hexdigest()


def record_path(root: Path, batch: str, item: str) -> Path:
    """The item's record; named by a hash, so an item id never becomes a path."""
    return root / "items" / f"{record_key(batch, item)}.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each new directory's parent so the new entry is durable."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent worker made it
            directory.mkdir()
        _fsync_dir(directory.parent)


def _hash_file(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _atomic_write(path: Path, data: bytes) -> None:
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_record(cfg: Config, size: int, sha256: str) -> None:
    record = {
        "batch": cfg.batch,
        "item": cfg.item,
        "url": redact_url(cfg.url),
        "size": size,
        "sha256": sha256,
        "digest": {"algorithm": cfg.digest[0], "value": cfg.digest[1]} if cfg.digest else None,
        "stored": cas_path(Path(), sha256).as_posix(),
    }
    data = json.dumps(record, sort_keys=True, indent=1).encode() + b"\n"
    _atomic_write(record_path(cfg.storage, cfg.batch, cfg.item), data)


def _mismatch(cfg: Config, size: int, digests: Mapping[str, str]) -> str | None:
    """Why the content does not match the manifest, or None."""
    if cfg.size is not None and size != cfg.size:
        return f"size mismatch: expected {cfg.size} bytes, got {size}"
    if cfg.digest is not None and digests[cfg.digest[0]] != cfg.digest[1]:
        algorithm, want = cfg.digest
        return f"digest mismatch: expected {algorithm} {want}, got {digests[algorithm]}"
    return None


def _verified(cfg: Config, path: Path, sha256: str) -> bool:
    """The stored file exists, re-hashes to `sha256`, and matches the manifest."""
    try:
        size = path.stat().st_size
        if cfg.size is not None and size != cfg.size:
            return False
        algorithms = ["sha256"] + ([cfg.digest[0]] if cfg.digest and
                                   cfg.digest[0] != "sha256" else [])
        digests = _hash_file(path, algorithms)
    except OSError:
        return False
    return digests["sha256"] == sha256 and _mismatch(cfg, size, digests) is None


def already_stored(cfg: Config) -> Path | None:
    """The stored payload when this item needs no download: its record (same URL) and file
    still verify, or the manifest's sha256 names a stored file that verifies."""
    try:
        record: Any = json.loads(record_path(cfg.storage, cfg.batch, cfg.item).read_bytes())
    except (OSError, ValueError):
        record = None
    if (isinstance(record, dict) and record.get("url") == redact_url(cfg.url)
            and isinstance(record.get("sha256"), str)
            and is_hex_digest("sha256", record["sha256"])):
        stored = cas_path(cfg.storage, record["sha256"])
        if _verified(cfg, stored, record["sha256"]):
            return stored
    if cfg.digest is not None and cfg.digest[0] == "sha256":
        stored = cas_path(cfg.storage, cfg.digest[1])
        if _verified(cfg, stored, cfg.digest[1]):
            _write_record(cfg, stored.stat().st_size, cfg.digest[1])
            return stored
    return None


def _remove_stale_temps(cfg: Config, prefix: str) -> None:
    """Temp files of this item left by a killed attempt (SIGKILL, node loss): older than
    the deadline, so no live attempt can still be writing them."""
    horizon = time.time() - cfg.timeout - 60
    for old in cfg.storage.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < horizon:
                old.unlink()


def _fetch_reason(cfg: Config, exc: FetchError) -> WorkerError:
    if isinstance(exc, FetchTooLarge) and cfg.size is not None and exc.limit == cfg.size:
        got = exc.announced if exc.announced is not None else f"more than {cfg.size}"
        return WorkerError(f"size mismatch: expected {cfg.size} bytes, got {got}")
    return WorkerError(str(exc), EXIT_REFUSED if isinstance(exc, FetchRefused) else EXIT_FAILED)


def ingest(cfg: Config) -> Path:
    """Store the item's payload (or find it stored); return its path. Raise WorkerError."""
    try:
        cfg.check(cfg.url)
    except UrlRefused as exc:
        raise WorkerError(str(exc), EXIT_REFUSED) from None
    print(f"start: batch {cfg.batch} item {cfg.item} from {redact_url(cfg.url)}", flush=True)
    _make_dirs(cfg.storage)
    done = already_stored(cfg)
    if done is not None:
        print(f"already stored: {cfg.item} at {done}", flush=True)
        return done

    algorithms = ["sha256"] + ([cfg.digest[0]] if cfg.digest and cfg.digest[0] != "sha256"
                               else [])
    hashers = {name: hashlib.new(name) for name in algorithms}
    seen = [0, time.monotonic()]

    def on_chunk(chunk: bytes) -> None:
        for h in hashers.values():
            h.update(chunk)
        seen[0] += len(chunk)
        if time.monotonic() - seen[1] >= PROGRESS_SECONDS:
            seen[1] = time.monotonic()
            print(f"progress: {int(seen[0])} bytes", flush=True)

    prefix = f"{TEMP_PREFIX}{record_key(cfg.batch, cfg.item)[:16]}-"
    _remove_stale_temps(cfg, prefix)
    limit = cfg.max_bytes if cfg.size is None else min(cfg.max_bytes, cfg.size)
    fd, tmp_name = tempfile.mkstemp(dir=cfg.storage, prefix=prefix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            size = fetch_to_file(cfg.url, tmp, max_bytes=limit, timeout=cfg.timeout,
                                 repo=cfg.repo, file_roots=cfg.file_roots,
                                 credentials=cfg.credentials, on_chunk=on_chunk,
                                 allowed=cfg.allows)
        except FetchError as exc:
            raise _fetch_reason(cfg, exc) from exc
        digests = {name: h.hexdigest() for name, h in hashers.items()}
        print(f"fetched: {size} bytes, sha256 {digests['sha256']}", flush=True)
        problem = _mismatch(cfg, size, digests)
        if problem:
            raise WorkerError(problem)
        final = cas_path(cfg.storage, digests["sha256"])
        _make_dirs(final.parent)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _write_record(cfg, size, digests["sha256"])
    print(f"done: stored {cfg.item} ({size} bytes) at {final}", flush=True)
    return final


def _termination_log(env: Mapping[str, str]) -> Path | None:
    configured = env.get("BATCHQ_TERMINATION_LOG", "").strip()
    if configured:
        return Path(configured)
    # Kubernetes mounts this file into the container; elsewhere (a developer's machine)
    # /dev exists too, and nothing should be created in it.
    return DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.is_file() else None


def one_line(reason: str) -> str:
    """The reason as one line of at most MESSAGE_LIMIT characters, credentials hidden."""
    text = redact_text(" ".join(reason.split()))
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run(env: Mapping[str, str]) -> tuple[int, str]:
    """Do the job; return (exit code, one-line reason or "")."""
    try:
        cfg = config_from_env(env)
        if env.get("BATCHQ_OBJECT", "").strip():
            # imported here: objectjob builds on this module's helpers
            from reconciler.worker.objectjob import ingest_object, object_from_env
            print(ingest_object(cfg, object_from_env(env, cfg.batch, cfg.item)), flush=True)
        else:
            ingest(cfg)
        return EXIT_OK, ""
    except WorkerError as exc:
        return exc.code, one_line(str(exc))
    except Terminated:
        return EXIT_FAILED, "terminated by SIGTERM (deadline exceeded or job deleted)"
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return EXIT_FAILED, one_line(f"cannot store the payload: {exc.strerror or exc}{where}")
    except Exception as exc:  # a bug: still one line, and the log
        return EXIT_FAILED, one_line(f"internal error: {type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the configuration is the environment (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return EXIT_OK
    env = dict(os.environ)
    if args:
        code, reason = EXIT_REFUSED, ("batchq-worker takes no arguments; it is configured"
                                      " by BATCHQ_* environment variables (see --help)")
    else:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            code, reason = run(env)
        finally:
            signal.signal(signal.SIGTERM, previous)
    if code == EXIT_OK:
        return code
    print(f"batchq-worker: {reason}", file=sys.stderr, flush=True)
    log = _termination_log(env)
    if log is not None:
        with contextlib.suppress(OSError):
            log.write_text(reason + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
