"""Choose the storage target from the worker's environment."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from reconciler.storage.filesystem import FilesystemTarget
from reconciler.storage.layout import DEPOSITS
from reconciler.storage.model import StorageError, Target


def open_target(env: Mapping[str, str]) -> Target:
    """BATCHQ_STORAGE (a filesystem path: the OCFL storage root) or BATCHQ_STORAGE_URL
    (s3://bucket/prefix, with BATCHQ_S3_ENDPOINT and the AWS_* credentials)."""
    url = env.get("BATCHQ_STORAGE_URL", "").strip()
    path = env.get("BATCHQ_STORAGE", "").strip()
    if url and path:
        raise StorageError("set BATCHQ_STORAGE or BATCHQ_STORAGE_URL, not both")
    if url:
        from reconciler.storage.s3 import S3Target  # boto3 loads only for S3

        return S3Target.from_env(url, env)
    if not path:
        raise StorageError("BATCHQ_STORAGE (a directory) or BATCHQ_STORAGE_URL (s3://...)"
                           " is not set")
    return FilesystemTarget(Path(path))


def staging_dir(target: Target, env: Mapping[str, str]) -> Path:
    """Where the worker fetches files before a deposit: inside the storage root for a
    filesystem target (same filesystem, so a deposit links instead of copying; batchq's
    working area, never an object directory), else BATCHQ_STAGING or the temp dir."""
    if isinstance(target, FilesystemTarget):
        return target.root / DEPOSITS / "incoming"
    return Path(env.get("BATCHQ_STAGING", "").strip() or tempfile.gettempdir()) / "batchq-incoming"
