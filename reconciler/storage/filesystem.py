"""OCFL objects in a directory tree (a local disk, or a PersistentVolumeClaim).

A deposit runs under a per-object lock file (flock: a killed process releases it), so two
batches depositing the same object take turns instead of corrupting it. The new version is
built in batchq's working area inside the storage root (same filesystem), fsynced, and
renamed into the object in one step; the root inventory is replaced last (inventory, then
its sidecar), which is the commit point. A deposit killed anywhere leaves the previous
version valid; the next deposit removes its leftovers, or completes a version that was
already in place but not yet committed, before it plans its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler.storage.inventory import (
    INVENTORY,
    SIDECAR,
    Inventory,
    decode,
    encode,
    extends,
    plan_version,
    sidecar_for,
    sidecar_matches,
    stored_digests,
    version_number,
)
from reconciler.storage.layout import (
    DEPOSITS,
    OBJECT_DECLARATION,
    object_hash,
    object_key,
    root_files,
)
from reconciler.storage.model import DepositResult, ObjectInfo, StagedFile, StorageError
from reconciler.support.failpoints import hit


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _place(source: Path, target: Path) -> None:
    """Put the staged file's bytes at `target`: a hard link when the staging area is on the
    same filesystem (no second copy of the bytes), a copy otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    with target.open("rb") as fh:
        os.fsync(fh.fileno())


def _sync_tree(top: Path) -> None:
    """fsync every directory under `top` (files were fsynced as written), deepest first."""
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        _fsync_dir(Path(dirpath))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FilesystemTarget:
    """An OCFL storage root on a filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"FilesystemTarget({str(self.root)!r})"

    # -- reading ------------------------------------------------------------------------

    def object_path(self, object_id: str) -> Path:
        return self.root / object_key(object_id)

    def _head(self, obj: Path) -> Inventory | None:
        """The committed inventory (root inventory.json, checked against its sidecar, or
        against the head version's own copy when a deposit died between the two)."""
        data = _read(obj / INVENTORY)
        if data is None:
            if obj.exists():
                raise StorageError(f"{obj} exists but holds no OCFL inventory: move it away")
            return None
        inventory = decode(data, str(obj / INVENTORY))
        if not sidecar_matches(data, _read(obj / SIDECAR)):
            version = obj / inventory["head"]
            if not (_read(version / INVENTORY) == data
                    and sidecar_matches(data, _read(version / SIDECAR))):
                raise StorageError(f"{obj / INVENTORY} does not match its sidecar {SIDECAR}")
        return inventory

    def stored_files(self, object_id: str) -> dict[str, Mapping[str, str]]:
        inventory = self._head(self.object_path(object_id))
        return dict(stored_digests(inventory)) if inventory else {}

    # -- writing ------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        """Declare the storage root (once; each file written atomically). A directory that
        already holds something else is refused: OCFL objects never mix with other files
        (payloads stored by the content-addressed layout before OCFL, for instance)."""
        declaration = next(iter(root_files()))
        if self.root.is_dir() and not (self.root / declaration).exists():
            ours = {"extensions", *(name.split("/")[0] for name in root_files())}
            other = sorted(p.name for p in self.root.iterdir()  # a concurrent deposit's
                           if p.name not in ours and not p.name.startswith("."))  # temps
            if other and not (self.root / declaration).exists():  # a racing deposit's
                raise StorageError(
                    f"{self.root} is not an OCFL storage root and is not empty (it holds"
                    f" {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): give the"
                    " profile a storage.path of its own, or move those files away")
        for name, data in root_files().items():
            path = self.root / name
            if not path.exists():
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
                _write(tmp, data)
                os.replace(tmp, path)
                _fsync_dir(path.parent)

    @contextlib.contextmanager
    def _locked(self, object_id: str) -> Iterator[None]:
        locks = self.root / DEPOSITS / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{object_hash(object_id)}.lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @property
    def _staging(self) -> Path:
        return self.root / DEPOSITS / "staging"

    def _commit_root(self, obj: Path, data: bytes, sidecar: bytes, scratch: Path) -> None:
        """Replace the root inventory, then its sidecar: the commit point."""
        scratch.mkdir(parents=True, exist_ok=True)
        _write(scratch / INVENTORY, data)
        _write(scratch / SIDECAR, sidecar)
        os.replace(scratch / INVENTORY, obj / INVENTORY)
        hit("storage-root-inventory-replaced")
        os.replace(scratch / SIDECAR, obj / SIDECAR)
        _fsync_dir(obj)

    def _recover(self, object_id: str, scratch: Path) -> Inventory | None:
        """Under the lock: drop dead deposits' staging, repair a sidecar left behind, and
        commit a version that was placed but not committed. Return the head inventory."""
        staging = self._staging
        for old in staging.glob(f"{object_hash(object_id)}-*") if staging.is_dir() else ():
            if old != scratch.parent:
                shutil.rmtree(old, ignore_errors=True)
        obj = self.object_path(object_id)
        inventory = self._head(obj)
        if inventory is None:
            return None
        data = _read(obj / INVENTORY)
        assert data is not None
        if not sidecar_matches(data, _read(obj / SIDECAR)):
            self._commit_root(obj, data, sidecar_for(data), scratch)
        following = obj / f"v{version_number(inventory['head']) + 1}"
        if following.exists():
            newer = _read(following / INVENTORY)
            sidecar = _read(following / SIDECAR)
            if (newer is not None and sidecar is not None and sidecar_matches(newer, sidecar)
                    and extends(decode(newer, str(following / INVENTORY)), inventory)):
                self._commit_root(obj, newer, sidecar, scratch)
                return decode(newer, str(obj / INVENTORY))
            shutil.rmtree(following)
            _fsync_dir(obj)
        return inventory

    def deposit(self, info: ObjectInfo, files: Sequence[StagedFile], *,
                message: str) -> DepositResult:
        self._ensure_root()
        with self._locked(info.object_id):
            work = self._staging / (
                f"{object_hash(info.object_id)}-{uuid.uuid4().hex[:12]}")
            try:
                return self._deposit(info, files, message, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _deposit(self, info: ObjectInfo, files: Sequence[StagedFile], message: str,
                 work: Path) -> DepositResult:
        previous = self._recover(info.object_id, work / "root")
        plan = plan_version(previous, info, files, message=message, created=_now())
        if plan is None:
            assert previous is not None
            return DepositResult(previous["head"], False, 0, len(files))
        built = work / "object"
        for path, staged in plan.copies:
            _place(staged.path, built / path)
            hit("storage-file-placed")
        data, sidecar = encode(plan.inventory)
        _write(built / plan.version / INVENTORY, data)
        _write(built / plan.version / SIDECAR, sidecar)
        obj = self.object_path(info.object_id)
        if previous is None:
            _write(built / OBJECT_DECLARATION[0], OBJECT_DECLARATION[1].encode())
            _write(built / INVENTORY, data)
            _write(built / SIDECAR, sidecar)
            _sync_tree(built)
            hit("storage-version-staged")
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.rename(built, obj)
            _fsync_dir(obj.parent)
        else:
            _sync_tree(built)
            hit("storage-version-staged")
            os.rename(built / plan.version, obj / plan.version)
            _fsync_dir(obj)
            hit("storage-version-placed")
            self._commit_root(obj, data, sidecar, work / "root")
        return DepositResult(plan.version, True, len(plan.copies), plan.reused)

