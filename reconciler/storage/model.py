"""The storage interface the worker deposits through: values, the Target protocol, errors.

It is the one meeting point of the worker (which fetches and verifies an object's files)
and the preservation storage (OCFL on a filesystem or S3), so both sides can change
behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """The deposit could not be made (storage unreachable, refused, or inconsistent); the
    message is one line and never shows credentials."""


@dataclass(frozen=True)
class StagedFile:
    """One verified file of an object, on local disk. A file whose sha512 the object
    already holds is not read at all, so `path` may point at the stored copy."""

    name: str  # path within the object, POSIX, relative, already checked safe
    path: Path  # the local file
    size: int
    digests: Mapping[str, str]  # hashlib name -> lowercase hex; always sha512 and sha256
    mime: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """Who the object is: its OCFL id, where it came from, and descriptive metadata. The
    targets write the id, the batch and item into each version's `user`, and title,
    creator, date and local ids into its `message` (inventory.version_message)."""

    object_id: str  # primary id, else the first local id, else "<batch>/<item id>"
    batch: str
    item: str
    title: str | None = None
    creator: str | None = None
    date: str | None = None
    local_ids: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class DepositResult:
    version: str  # "v1", "v2", ...: the head after the deposit
    created: bool  # False when the head already had exactly this state
    copied: int  # files whose bytes were written
    reused: int  # files deduplicated by digest


class Target(Protocol):
    """An OCFL storage root (FilesystemTarget, S3Target)."""

    def stored_files(self, object_id: str) -> dict[str, Mapping[str, str]]:
        """name -> digests (sha512 and the fixity block's algorithms) of the files in the
        object's head version; {} if the object does not exist."""
        ...

    def deposit(self, info: ObjectInfo, files: Sequence[StagedFile], *,
                message: str) -> DepositResult:
        """Write a new version whose state is exactly `files`; none when the head already
        has that state; content the object holds (same sha512) is not copied again.
        Crash-safe: a killed deposit leaves the previous version valid."""
        ...
