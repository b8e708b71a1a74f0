"""batchq-worker — the ingest job: fetch one item's payload, verify it, deposit it as an OCFL
object (DESIGN §6, §10).

Configured only by environment variables, so the same program runs as a local subprocess
and as a Kubernetes container (`python -m reconciler.worker`, or `batchq-worker`):

    BATCHQ_BATCH              batch name                                        (required)
    BATCHQ_ITEM_ID            item id                                           (required)
    BATCHQ_ITEM_URL           payload URL: http, https, file; userinfo shown as `***@`
                              means "the credentials are in BATCHQ_CREDENTIALS_FILE" (required)
    BATCHQ_STORAGE            the OCFL storage root directory, or
    BATCHQ_STORAGE_URL        s3://bucket/prefix, with BATCHQ_S3_ENDPOINT, BATCHQ_S3_REGION
                              and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
                              BATCHQ_S3_CREDENTIALS_FILE)                 (one is required)
    BATCHQ_STAGING            S3 only: where files are fetched before the deposit (default:
                              the temp dir)
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
    BATCHQ_OBJECT_ID          the object's identifier in storage (its primary identifier,
                              else its first local one); default `<batch>/<item id>`

Storage (`reconciler.storage`): the item is the OCFL object BATCHQ_OBJECT_ID holding one
file, named by the URL's last path segment (`content` when that is not a plain name). The
bytes go to a temp file in the staging dir (inside the storage root's batchq working area
for a filesystem root), hashed while streaming (sha512 and sha256 always, and the
manifest's algorithm), are verified against the expected size and digest, and deposited:
a new OCFL version, or none when the head version already holds exactly this file. A
restarted item whose stored file has the manifest's digest (sha512, the inventory's own;
sha256, sha1 or md5, which its fixity block keeps) is not downloaded again ("already
stored: <object> <v>").

Exit codes:
    0  stored, or already stored
    1  failed: the payload could not be fetched, did not verify (size, digest), could not
       be deposited, or the worker was terminated (SIGTERM)
    2  refused input: URL not allowed by the prefixes, unsupported URL, `file:` path outside
       the base directory, missing or malformed configuration

On failure the reason is ONE line, `batchq-worker: <reason>` on stderr, and the reason alone
(at most 1024 characters) in the termination log; no temp file is left behind. Progress
goes to stdout. No output, record or message ever shows the credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from urllib.parse import unquote, urlsplit

from reconciler.domain.model import DIGEST_HEX_DIGITS, is_hex_digest
from reconciler.manifests.fetch import FetchError, FetchRefused, FetchTooLarge, fetch_to_file
from reconciler.manifests.repofiles import RepoSnapshot
from reconciler.storage import (
    DepositResult,
    ObjectInfo,
    StagedFile,
    StorageError,
    Target,
    open_target,
    staging_dir,
)
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
    storage: Path  # the staging dir (see reconciler.storage.staging_dir)
    target: Target
    size: int | None = None
    digest: tuple[str, str] | None = None  # (algorithm, lowercase hex)
    allowed: tuple[str, ...] | None = None  # None: any URL
    repo: RepoSnapshot | None = None
    file_roots: tuple[str, ...] = ()
    credentials: str | None = None  # `user:password` for a URL shown with `***@`
    object_id: str | None = None  # BATCHQ_OBJECT_ID; None: `<batch>/<item>`
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
    batch = _required(env, "BATCHQ_BATCH")
    item = _required(env, "BATCHQ_ITEM_ID")
    url = _required(env, "BATCHQ_ITEM_URL")
    try:
        target = open_target(env)
    except StorageError as exc:
        raise WorkerError(str(exc), EXIT_REFUSED) from None
    return Config(
        batch=batch,
        item=item,
        url=url,
        storage=staging_dir(target, env),
        target=target,
        size=_whole(env, "BATCHQ_ITEM_SIZE", None),
        digest=digest,
        allowed=None if prefixes is None else _lines(env, "BATCHQ_ALLOWED_PREFIXES"),
        repo=_repository(env),
        file_roots=_lines(env, "BATCHQ_FILE_ROOTS"),
        credentials=_credentials(env),
        object_id=env.get("BATCHQ_OBJECT_ID", "").strip() or None,
        timeout=_number(env, "BATCHQ_TIMEOUT", DEFAULT_TIMEOUT),
        max_bytes=max_bytes,
    )


def object_info(cfg: Config) -> ObjectInfo:
    """The OCFL object of this item: its identifier (BATCHQ_OBJECT_ID: primary, else first
    local identifier), else `<batch>/<item>`."""
    return ObjectInfo(object_id=cfg.object_id or f"{cfg.batch}/{cfg.item}", batch=cfg.batch,
                      item=cfg.item)


def file_name(url: str) -> str:
    """The file's name within the object: the URL path's last segment when that is a plain
    file name, else `content`."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    plain = (segment not in ("", ".", "..") and "/" not in segment and "\\" not in segment
             and segment.isprintable())
    return segment if plain else "content"


def staging_key(batch: str, item: str) -> str:
    return hashlib.sha256(f"{batch}/{item}".encode()).hexdigest()


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


def _mismatch(cfg: Config, size: int, digests: Mapping[str, str]) -> str | None:
    """Why the content does not match the manifest, or None."""
    if cfg.size is not None and size != cfg.size:
        return f"size mismatch: expected {cfg.size} bytes, got {size}"
    if cfg.digest is not None and digests[cfg.digest[0]] != cfg.digest[1]:
        algorithm, want = cfg.digest
        return f"digest mismatch: expected {algorithm} {want}, got {digests[algorithm]}"
    return None


def _unchanged(cfg: Config, stored: Mapping[str, str] | None) -> bool:
    """The object's head already holds this file with the manifest's digest."""
    return (stored is not None and cfg.digest is not None
            and stored.get(cfg.digest[0]) == cfg.digest[1])


def _deposit(cfg: Config, files: Sequence[StagedFile]) -> DepositResult:
    try:
        return cfg.target.deposit(object_info(cfg), files,
                                  message=f"batchq: batch {cfg.batch}, item {cfg.item}")
    except StorageError as exc:
        raise WorkerError(f"cannot deposit the object: {exc}") from None


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


def ingest(cfg: Config) -> DepositResult:
    """Deposit the item's payload (or find it stored). Raise WorkerError."""
    try:
        cfg.check(cfg.url)
    except UrlRefused as exc:
        raise WorkerError(str(exc), EXIT_REFUSED) from None
    print(f"start: batch {cfg.batch} item {cfg.item} from {redact_url(cfg.url)}", flush=True)
    info, filename = object_info(cfg), file_name(cfg.url)
    try:
        stored = cfg.target.stored_files(info.object_id)
    except StorageError as exc:
        raise WorkerError(f"cannot read the stored object: {exc}") from None
    if _unchanged(cfg, stored.get(filename)):  # the stored copy is passed by reference
        result = _deposit(cfg, [StagedFile(filename, cfg.storage / filename, cfg.size or 0,
                                           stored[filename])])
        if not result.created:
            print(f"already stored: {info.object_id} {result.version}", flush=True)
            return result
        print(f"done: {info.object_id} {result.version} (stored file kept)", flush=True)
        return result

    _make_dirs(cfg.storage)
    algorithms = ["sha512", "sha256"] + ([cfg.digest[0]] if cfg.digest and
                                         cfg.digest[0] not in ("sha512", "sha256") else [])
    hashers = {name: hashlib.new(name) for name in algorithms}
    seen = [0, time.monotonic()]

    def on_chunk(chunk: bytes) -> None:
        for h in hashers.values():
            h.update(chunk)
        seen[0] += len(chunk)
        if time.monotonic() - seen[1] >= PROGRESS_SECONDS:
            seen[1] = time.monotonic()
            print(f"progress: {int(seen[0])} bytes", flush=True)

    prefix = f"{TEMP_PREFIX}{staging_key(cfg.batch, cfg.item)[:16]}-"
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
        os.chmod(tmp, 0o644)
        result = _deposit(cfg, [StagedFile(filename, tmp, size, digests)])
    finally:
        tmp.unlink(missing_ok=True)
    if not result.created:
        print(f"already stored: {info.object_id} {result.version}", flush=True)
    else:
        print(f"done: stored {info.object_id} {result.version} ({size} bytes,"
              f" {result.copied} file(s) written, {result.reused} reused)", flush=True)
    return result


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
