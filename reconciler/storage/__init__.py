"""Preservation storage: OCFL objects on a filesystem root or an S3 bucket (issue 8 §3).

Only the worker (and tests, bench) import this package; it imports only `domain` and
`support`. `open_target(env)` picks the target from the worker's environment.
"""

from reconciler.storage.filesystem import FilesystemTarget
from reconciler.storage.model import DepositResult, ObjectInfo, StagedFile, StorageError, Target
from reconciler.storage.targets import open_target, staging_dir

__all__ = ["DepositResult", "FilesystemTarget", "ObjectInfo", "StagedFile", "StorageError",
           "Target", "open_target", "staging_dir"]
