"""Telling the depositor of a batch file that never parsed, once per commit.

Such a file never becomes a batch with a spec, so no report would ever reach its depositor:
they would wait for an email that never comes. When their address can still be read from
the file (`spec.addresses.readable_address`), they get one "Batch File Invalid" email per
commit of the file, saying what is wrong at which line and that committing a fixed file
starts the batch. The file is read from the reconciler's Git mirror at that commit; the
`FileErrorReported` timeline entry for the commit makes it once (the report id, from the
batch's report round, makes a retry after a crash save nothing twice).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from reconciler.domain.model import Batch, BatchSpec, Depositor, Profile
from reconciler.manifests.repofiles import RepoFileError, RepoSnapshot
from reconciler.spec.addresses import readable_address
from reconciler.spec.yamlsafe import DocumentError, load_document
from reconciler.store.base import Event, Store

TOLD = "FileErrorReported"
PROFILE_KEY = re.compile(r"""(?m)^\s*profile\s*:\s*["']?([a-z0-9][-a-z0-9]*)""")
MAX_READ = 1024 * 1024  # the sync refuses bigger files before they get this far


def _file_at(git_dir: str, batch: Batch) -> bytes | None:
    try:
        stream, size = RepoSnapshot(Path(git_dir), batch.source_revision).open(
            batch.source_path, batch.source_path)
    except RepoFileError:
        return None
    try:
        chunks, total = [], 0
        while total < min(size, MAX_READ):
            chunk = stream.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


def told_already(store: Store, batch: Batch) -> bool:
    return any(e.reason == TOLD and e.revision == batch.source_revision
               for e in store.list_events(batch.name))


def depositor_of(git_dir: str | None, batch: Batch,
                 profiles: dict[str, Profile]) -> tuple[BatchSpec | None, Profile | None]:
    """A stand-in spec naming the depositor (and the profile, when it can be read and
    exists, for its sender and copies), or (None, None) when no address can be read."""
    data = _file_at(git_dir, batch) if git_dir and batch.source_revision else None
    if data is None:
        return None, None
    parsed: Any = None
    with contextlib.suppress(DocumentError):  # not even YAML: the text is searched
        parsed = load_document(data, batch.source_path).data
    address = readable_address(data, parsed)
    if address is None:
        return None, None
    spec = parsed.get("spec") if isinstance(parsed, dict) else None
    name = spec.get("profile") if isinstance(spec, dict) else None
    if not isinstance(name, str):  # not YAML at all: the text may still name it
        match = PROFILE_KEY.search(data.decode("utf-8", "replace"))
        name = match.group(1) if match else None
    profile = profiles.get(name) if isinstance(name, str) else None
    return BatchSpec(profile=profile.name if profile else "", depositor=Depositor("", address),
                     manifest_url=""), profile


def mark_told(store: Store, batch: Batch, at: float, message: str) -> None:
    store.add_event(Event(batch.name, at, TOLD, message, batch.source_revision))
