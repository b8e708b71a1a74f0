"""The content-addressed store (DESIGN §6) behind the `Target` shape (`worker.target`), for
objects of several files until OCFL storage replaces it (issue 8 §3).

Bytes live at `<root>/sha256/<2 hex>/<sha256>` as for single-file items, so a file that
two objects (or two versions) share is stored once. An object's record,
`<root>/objects/<sha256 of the object id>.json` (an id never becomes a path), holds its
head version's state (name -> sha256, size, digests) and the list of its versions; it is
replaced atomically, after the bytes it names are durable, so a killed deposit leaves the
previous version whole. A deposit whose state equals the head's adds no version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.domain.model import is_hex_digest
from reconciler.worker.program import _atomic_write as atomic_write
from reconciler.worker.program import _fsync_dir as fsync_dir
from reconciler.worker.program import _hash_file as hash_file
from reconciler.worker.program import _make_dirs as make_dirs
from reconciler.worker.program import cas_path
from reconciler.worker.target import DepositResult, ObjectInfo, StagedFile


class CasTarget:
    """Objects as records over the content-addressed store under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def record_path(self, object_id: str) -> Path:
        return self.root / "objects" / f"{hashlib.sha256(object_id.encode()).hexdigest()}.json"

    def _record(self, object_id: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path(object_id).read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("state"),
                                                                 dict) else None

    def stored_copy(self, digests: Mapping[str, str]) -> Path:
        """Where the bytes with these digests are kept."""
        return cas_path(self.root, digests["sha256"])

    def stored_files(self, object_id: str) -> dict[str, Mapping[str, str]]:
        """name -> digests of the head version's files whose stored bytes still re-hash to
        their sha256 (a rotten or missing copy is left out, so it is fetched again)."""
        record = self._record(object_id)
        out: dict[str, Mapping[str, str]] = {}
        for name, entry in (record or {}).get("state", {}).items():
            digests = entry.get("digests") if isinstance(entry, dict) else None
            sha = digests.get("sha256") if isinstance(digests, dict) else None
            if not (isinstance(sha, str) and is_hex_digest("sha256", sha)):
                continue
            try:
                ok = hash_file(cas_path(self.root, sha), ["sha256"])["sha256"] == sha
            except OSError:
                ok = False
            if ok:
                out[name] = dict(digests)  # type: ignore[arg-type]
        return out

    def deposit(self, info: ObjectInfo, files: Sequence[StagedFile], *,
                message: str) -> DepositResult:
        copied = reused = 0
        for f in files:
            final = cas_path(self.root, f.digests["sha256"])
            if f.path == final or _holds(final, f.digests["sha256"]):
                reused += 1
                continue
            make_dirs(final.parent)
            os.chmod(f.path, 0o644)
            with f.path.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(f.path, final)
            fsync_dir(final.parent)
            copied += 1
        state = {f.name: {"size": f.size, "digests": dict(sorted(f.digests.items())),
                          **({"mime": f.mime} if f.mime else {})} for f in files}
        record = self._record(info.object_id)
        versions: list[Any] = list((record or {}).get("versions") or [])
        if record is not None and record["state"] == state and versions:
            return DepositResult(str(record.get("head")), False, copied, reused)
        head = f"v{len(versions) + 1}"
        versions.append({"version": head, "created": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "message": message, "files": len(state)})
        new = {"objectId": info.object_id, "batch": info.batch, "item": info.item,
               "title": info.title, "creator": info.creator, "date": info.date,
               "localIds": list(info.local_ids), "head": head, "state": state,
               "versions": versions}
        atomic_write(self.record_path(info.object_id),
                     json.dumps(new, sort_keys=True, indent=1).encode() + b"\n")
        return DepositResult(head, True, copied, reused)


def _holds(path: Path, sha256: str) -> bool:
    """The store already has these bytes (re-hashed: a rotten copy is replaced)."""
    try:
        return hash_file(path, ["sha256"])["sha256"] == sha256
    except OSError:
        return False
