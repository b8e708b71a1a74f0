"""The job of an object of several files, or of a container (issue 8 §2).

Its object comes in `BATCHQ_OBJECT` (JSON, at most 64 KiB: `domain.objects.object_json`),
with `BATCHQ_OBJECT_ID`, `BATCHQ_TITLE`, `BATCHQ_CREATOR`, `BATCHQ_DATE` and
`BATCHQ_LOCAL_IDS` (one a line) for the storage record; the rest of the configuration is
the single-file worker's (`reconciler.worker.program`): URL checks on every file URL and
redirect, credentials from the job's file, one deadline (BATCHQ_TIMEOUT) for the whole job.

1. It asks storage which files the object's head version holds (`stored_files`); a file
   stored under its name with the manifest's digest is not fetched again (with no digest
   in the manifest, one stored under its name is kept). Storage can compare sha512 (the
   inventory's own) and sha256, sha1 and md5 (its fixity block); a file given with another
   algorithm is fetched again to be compared, and adds no version when it is the same.
2. Every other file is fetched into the object's staging directory
   (`<staging>/<hash of batch/item>/`, `reconciler.storage.staging_dir`: the storage
   root's working area for a filesystem target, a local directory for S3), hashed while
   it streams (sha512, sha256 and the manifest's algorithm) and checked against its own
   size and digest; a file that
   does not match fails the job with a reason naming the file and both digests in full.
   A verified file stays staged (with a note of its digests) until the deposit, so a
   restart after a failure fetches only the files still missing.
3. A container is fetched and verified the same way, then unpacked (`worker.unpack`): no
   name leaves the object, no links or devices, at most `MAX_MEMBERS` files and
   `unpack_bound` bytes; its members are the object's files.
4. One `deposit` with the full list: storage adds a version only when the state differs
   from the head's. Nothing fetched and no new version: "already stored: <id> <version>".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS, is_hex_digest
from reconciler.domain.objects import Container, ObjectFile, name_problem
from reconciler.manifests.fetch import FetchError, FetchRefused, FetchTooLarge, fetch_to_file
from reconciler.storage import ObjectInfo, StagedFile, StorageError, Target
from reconciler.support.redaction import redact_url
from reconciler.support.urls import UrlRefused
from reconciler.worker.program import (
    EXIT_FAILED,
    EXIT_REFUSED,
    TEMP_PREFIX,
    Config,
    WorkerError,
    _make_dirs,
    staging_key,
)
from reconciler.worker.unpack import MAX_MEMBERS, UnpackRefused, unpack

ALWAYS = ("sha512", "sha256")  # the digests storage keeps of every file


def _hash_file(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}
BOMB_RATIO = 200  # a container may unpack to this many times its own size ...
BOMB_FLOOR = 64 * 1024**2  # ... or to this many bytes, whichever is more


@dataclass(frozen=True)
class ObjectJob:
    """The object part of a job's configuration."""

    info: ObjectInfo
    files: tuple[ObjectFile, ...] = ()
    container: Container | None = None


def _digest(raw: Any, where: str) -> tuple[str, str] | None:
    if raw is None:
        return None
    algorithm, value = raw.get("algorithm"), raw.get("value")
    if algorithm not in DIGEST_HEX_DIGITS or not isinstance(value, str) or not is_hex_digest(
            algorithm, value):
        raise WorkerError(f"BATCHQ_OBJECT: {where}: not a digest: {raw!r}", EXIT_REFUSED)
    return algorithm, value


def object_from_env(env: Mapping[str, str], batch: str, item: str) -> ObjectJob:
    """The object of BATCHQ_OBJECT; raise WorkerError (exit 2) when it is malformed."""
    try:
        body = json.loads(env["BATCHQ_OBJECT"])
        files = tuple(ObjectFile(name=str(f["name"]), url=str(f["url"]),
                                 digest=_digest(f.get("digest"), f"files[{n}]"),
                                 size=int(f["size"]) if f.get("size") is not None else None,
                                 mime=f.get("mime")) for n, f in enumerate(body.get("files") or ()))
        raw = body.get("container")
        container = None if raw is None else Container(
            url=str(raw["url"]), format=raw.get("format"),
            digest=_digest(raw.get("digest"), "container"),
            size=int(raw["size"]) if raw.get("size") is not None else None)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WorkerError(f"BATCHQ_OBJECT is not an object's files or container: {exc}",
                          EXIT_REFUSED) from None
    if bool(files) == (container is not None):
        raise WorkerError("BATCHQ_OBJECT must give files or a container", EXIT_REFUSED)
    seen: set[str] = set()
    for f in files:
        problem = name_problem(f.name)
        if problem or f.name in seen:
            raise WorkerError(f"BATCHQ_OBJECT: file name {f.name!r}"
                              f" {problem or 'appears twice'}", EXIT_REFUSED)
        seen.add(f.name)
    info = ObjectInfo(
        object_id=env.get("BATCHQ_OBJECT_ID", "").strip() or f"{batch}/{item}",
        batch=batch, item=item, title=env.get("BATCHQ_TITLE") or None,
        creator=env.get("BATCHQ_CREATOR") or None, date=env.get("BATCHQ_DATE") or None,
        local_ids=tuple(i for i in env.get("BATCHQ_LOCAL_IDS", "").splitlines() if i))
    return ObjectJob(info, files, container)


def unpack_bound(container_size: int, max_bytes: int) -> int:
    """How many bytes a container of this size may unpack to."""
    return min(max_bytes, max(BOMB_FLOOR, BOMB_RATIO * container_size))


class _Fetcher:
    """Fetches one file into staging, verified; keeps verified files for a restart."""

    def __init__(self, cfg: Config, staging: Path, deadline: float) -> None:
        self.cfg, self.staging, self.deadline = cfg, staging, deadline
        self.container: ObjectFile | None = None  # the container, when fetching one
        self.fetched = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        stem = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.staging / stem, self.staging / f"{stem}.json"

    def staged(self, key: str, f: ObjectFile) -> StagedFile | None:
        """A verified copy from an earlier attempt, if one is staged and still verifies."""
        path, note_path = self._paths(key)
        try:
            note = json.loads(note_path.read_bytes())
            if note.get("url") != redact_url(f.url):
                return None
            digests = _hash_file(path, sorted({*ALWAYS, *(f.digest[:1] if f.digest else ())}))
        except (OSError, ValueError, AttributeError):
            return None
        size = path.stat().st_size
        if digests["sha256"] != note.get("sha256") or self._mismatch(f, size, digests):
            return None
        return StagedFile(f.name, path, size, digests, f.mime)

    def _mismatch(self, f: ObjectFile, size: int, digests: Mapping[str, str]) -> str | None:
        if f.size is not None and size != f.size:
            return f"size mismatch: expected {f.size} bytes, got {size}"
        if f.digest is not None and digests[f.digest[0]] != f.digest[1]:
            return (f"digest mismatch: expected {f.digest[0]} {f.digest[1]}, got"
                    f" {digests[f.digest[0]]}")
        return None

    def fail(self, f: ObjectFile, reason: str, code: int = EXIT_FAILED) -> WorkerError:
        """`reason`, saying which file (or the container) it is about."""
        what = "container" if f is self.container else f"file {f.name!r}"
        return WorkerError(f"{what}: {reason}", code)

    def fetch(self, key: str, f: ObjectFile) -> StagedFile:
        try:
            self.cfg.check(f.url)
        except UrlRefused as exc:
            raise self.fail(f, str(exc), EXIT_REFUSED) from None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(f, f"timed out: the job's {self.cfg.timeout:g} s deadline passed"
                               f" before fetching {redact_url(f.url)}")
        algorithms = sorted({*ALWAYS, *(f.digest[:1] if f.digest else ())})
        hashers = {a: hashlib.new(a) for a in algorithms}

        def on_chunk(chunk: bytes) -> None:
            for h in hashers.values():
                h.update(chunk)

        limit = self.cfg.max_bytes if f.size is None else min(self.cfg.max_bytes, f.size)
        path, note = self._paths(key)
        fd, tmp_name = tempfile.mkstemp(dir=self.staging, prefix=TEMP_PREFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        print(f"fetch: {f.name} from {redact_url(f.url)}", flush=True)
        try:
            try:
                size = fetch_to_file(
                    f.url, tmp, max_bytes=limit, timeout=left, repo=self.cfg.repo,
                    file_roots=self.cfg.file_roots, credentials=self.cfg.credentials,
                    on_chunk=on_chunk,
                    allowed=self.cfg.allows)
            except FetchError as exc:
                if isinstance(exc, FetchTooLarge) and f.size is not None and exc.limit == f.size:
                    got = exc.announced if exc.announced is not None else f"more than {f.size}"
                    raise self.fail(f, f"size mismatch: expected {f.size} bytes, got {got}"
                                    ) from exc
                raise self.fail(f, str(exc), EXIT_REFUSED if isinstance(exc, FetchRefused)
                                else EXIT_FAILED) from exc
            digests = {a: h.hexdigest() for a, h in hashers.items()}
            problem = self._mismatch(f, size, digests)
            if problem:
                raise self.fail(f, problem)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        note.write_text(json.dumps({"name": f.name, "url": redact_url(f.url),
                                    "sha256": digests["sha256"]}), encoding="utf-8")
        self.fetched += 1
        print(f"verified: {f.name} ({size} bytes, sha256 {digests['sha256']})", flush=True)
        return StagedFile(f.name, path, size, digests, f.mime)

    def get(self, key: str, f: ObjectFile) -> StagedFile:
        return self.staged(key, f) or self.fetch(key, f)


def _stored(fetcher: _Fetcher, f: ObjectFile,
            stored: Mapping[str, Mapping[str, str]]) -> StagedFile | None:
    """`f` by reference when the head version holds it as the manifest says: storage never
    reads the path of a file whose sha512 the object already holds."""
    have = stored.get(f.name)
    if have is None or (f.digest is not None and have.get(f.digest[0]) != f.digest[1]):
        return None
    return StagedFile(f.name, fetcher.staging / "stored" / f.name, f.size or 0, have, f.mime)


def _container_files(fetcher: _Fetcher, job: ObjectJob, algorithms: Sequence[str]
                     ) -> list[StagedFile]:
    container = job.container
    assert container is not None
    source = fetcher.container = ObjectFile("container", container.url, container.digest,
                                            container.size)
    staged = fetcher.get("container", source)
    bound = unpack_bound(staged.size, fetcher.cfg.max_bytes)
    try:
        return unpack(staged.path, container.format, fetcher.staging / "members",
                      algorithms=algorithms, max_bytes=bound, max_members=MAX_MEMBERS,
                      bound=f"at most {BOMB_RATIO} times its {staged.size} bytes, or"
                            f" {BOMB_FLOOR // 1024**2} MiB")
    except UnpackRefused as exc:
        shutil.rmtree(fetcher.staging / "members", ignore_errors=True)
        raise WorkerError(str(exc), EXIT_REFUSED) from None


def _object_files(fetcher: _Fetcher, target: Target, job: ObjectJob) -> list[StagedFile]:
    """Every file, stored or staged and verified. A file that fails does not stop the
    others (so that a restart has only the failed ones left to fetch); the first failure
    is raised at the end, with how many more failed."""
    try:
        stored = target.stored_files(job.info.object_id)
    except StorageError as exc:
        raise WorkerError(f"cannot read the stored object: {exc}") from None
    files: list[StagedFile] = []
    failures: list[WorkerError] = []
    for f in job.files:
        have = _stored(fetcher, f, stored)
        if have is not None:
            print(f"stored: {f.name}", flush=True)
            files.append(have)
            continue
        try:
            files.append(fetcher.get(f"file:{f.name}", f))
        except WorkerError as exc:
            print(f"failed: {exc}", flush=True)
            failures.append(exc)
    if failures:
        first = failures[0]
        more = (f"; {len(failures) - 1} more of the object's {len(job.files)} files failed"
                if len(failures) > 1 else "")
        raise WorkerError(f"{first}{more}", first.code)
    return files


def ingest_object(cfg: Config, job: ObjectJob) -> str:
    """Fetch, verify and deposit the object (module docstring); return the done line."""
    deadline = time.monotonic() + cfg.timeout
    info = job.info
    for url in [f.url for f in job.files] + ([job.container.url] if job.container else []):
        try:
            cfg.check(url)
        except UrlRefused as exc:
            raise WorkerError(str(exc), EXIT_REFUSED) from None
    what = f"{len(job.files)} files" if job.files else "a container"
    print(f"start: batch {cfg.batch} item {cfg.item}: object {info.object_id} ({what})",
          flush=True)
    target = cfg.target
    staging = cfg.storage / staging_key(cfg.batch, cfg.item)
    _make_dirs(staging)
    horizon = time.time() - cfg.timeout - 60  # temp files of a killed attempt
    for old in staging.glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < horizon:
                old.unlink()
    fetcher = _Fetcher(cfg, staging, deadline)
    if job.container is not None:
        files = _container_files(fetcher, job, ALWAYS)
    else:
        files = _object_files(fetcher, target, job)
    try:
        result = target.deposit(info, files, message=f"batchq: batch {cfg.batch}, item"
                                                     f" {cfg.item} ({len(files)} files)")
    except StorageError as exc:
        raise WorkerError(f"cannot deposit the object: {exc}") from None
    with contextlib.suppress(OSError):
        shutil.rmtree(staging)
    if not result.created and fetcher.fetched == 0:
        return f"already stored: {info.object_id} {result.version}"
    return (f"done: stored {info.object_id} {result.version} ({len(files)} files,"
            f" {result.copied} copied, {result.reused} reused)")
