"""Checking what batchq stored with an independent OCFL implementation (ocfl-py's validator),
and reading a stored file back the way any OCFL client would: through the inventory."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocfl.storage_root import StorageRoot

from reconciler.storage.layout import object_key


def validate_root(root: Any) -> tuple[int, str]:
    """Validate a whole storage root (path, or an fsspec filesystem rooted at it), every
    object and every digest; return (objects, messages) or fail with ocfl-py's report."""
    logging.getLogger().setLevel(logging.WARNING)  # ocfl-py logs INFO chatter
    sr = StorageRoot(root=str(root) if isinstance(root, Path) else root)
    valid = sr.validate(validate_objects=True, check_digests=True, log_warnings=False)
    errors = "\n".join(message for _path, message in sr.errors)
    assert valid and sr.good_objects == sr.num_objects, f"{sr.log}\n{errors}"
    return sr.num_objects, errors


def inventory(root: Path, object_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / object_key(object_id) / "inventory.json")
                                      .read_text())
    return data


@dataclass(frozen=True)
class Head:
    """An object's head version as an OCFL client reads it: through the inventory only."""

    object_id: str
    version: str  # the head: "v1", "v2", ...
    versions: tuple[str, ...]  # every version, oldest first
    digests: dict[str, dict[str, str]]  # name -> sha512 (the state) and its fixity digests
    content: dict[str, bytes]  # name -> the bytes at the manifest's first content path


def _read(root: Any, path: str) -> bytes | None:
    """A file of the storage root: `root` is a directory, or an fsspec filesystem."""
    if isinstance(root, Path):
        file = root / path
        return file.read_bytes() if file.is_file() else None
    return bytes(root.cat_file(path)) if root.exists(path) else None


def head(root: Any, object_id: str) -> Head | None:
    """The head version of `object_id` in the storage root (a path or an fsspec filesystem,
    `s3_root`), or None when the root holds no such object."""
    key = object_key(object_id)
    data = _read(root, f"{key}/inventory.json")
    if data is None:
        return None
    inv = json.loads(data)
    assert inv["id"] == object_id, (inv["id"], object_id)
    fixity: dict[str, dict[str, str]] = {}
    for algorithm, block in (inv.get("fixity") or {}).items():
        for digest, paths in block.items():
            for path in paths:
                fixity.setdefault(path, {})[algorithm] = digest
    digests: dict[str, dict[str, str]] = {}
    content: dict[str, bytes] = {}
    for digest, names in inv["versions"][inv["head"]]["state"].items():
        path = inv["manifest"][digest][0]
        body = _read(root, f"{key}/{path}")
        assert body is not None, f"{object_id}: {path} is in the manifest but not stored"
        for name in names:
            digests[name] = {**fixity.get(path, {}), inv["digestAlgorithm"]: digest}
            content[name] = body
    versions = tuple(sorted(inv["versions"], key=lambda v: int(v[1:])))
    return Head(object_id, inv["head"], versions, digests, content)


def head_file(root: Path, object_id: str, name: str) -> bytes:
    """The bytes of `name` in the object's head version."""
    inv = inventory(root, object_id)
    state = inv["versions"][inv["head"]]["state"]
    digest = next(d for d, names in state.items() if name in names)
    return (root / object_key(object_id) / inv["manifest"][digest][0]).read_bytes()


def content_files(root: Path, object_id: str) -> list[str]:
    """Every content file stored in the object (all versions), relative to its root."""
    obj = root / object_key(object_id)
    return sorted(p.relative_to(obj).as_posix() for p in obj.glob("v*/content/**/*")
                  if p.is_file())


def s3_root(server: Any, bucket: str, prefix: str = "ocfl") -> Any:
    """An fsspec filesystem rooted at s3://bucket/prefix on the test server, for ocfl-py."""
    from fsspec.implementations.dirfs import DirFileSystem
    from s3fs import S3FileSystem

    from tests.s3.server import ACCESS_KEY, REGION, SECRET_KEY

    fs = S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=server.endpoint,
                      client_kwargs={"region_name": REGION}, skip_instance_cache=True,
                      use_listings_cache=False)
    return DirFileSystem(path=f"{bucket}/{prefix}", fs=fs)
