"""What the worker hands to storage, and what storage answers: the one call where the
object worker meets preservation storage (issue 8 §2 and §3).

These are the shapes of `reconciler.storage` (StagedFile, ObjectInfo, DepositResult,
Target), which the OCFL work provides; until both are merged the worker uses them from
here, with `reconciler.worker.castarget` (the content-addressed store of DESIGN §6) behind
them. At the merge, importing them from `reconciler.storage` and calling `open_target(env)`
instead of `CasTarget(root)` is the whole change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StagedFile:
    """One verified file of an object, on local disk."""

    name: str  # path within the object, POSIX, relative, already checked safe
    path: Path  # the local file (staged, or the target's own stored copy)
    size: int
    digests: Mapping[str, str]  # hashlib name -> lowercase hex; sha512, sha256, + manifest's
    mime: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    object_id: str  # primary id, else first local id, else "<batch>/<item id>"
    batch: str
    item: str
    title: str | None = None
    creator: str | None = None
    date: str | None = None
    local_ids: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DepositResult:
    version: str  # "v1", "v2", ... (the head after the deposit)
    created: bool  # False when the head already had exactly this state
    copied: int  # files whose bytes were written
    reused: int  # files deduplicated by digest


class Target(Protocol):
    def stored_files(self, object_id: str) -> dict[str, Mapping[str, str]]:
        """name -> digests of the files in the object's head version; {} if none."""
        ...

    def deposit(self, info: ObjectInfo, files: Sequence[StagedFile], *,
                message: str) -> DepositResult:
        """A new version with exactly `files` as its state, unless the head has it."""
        ...
