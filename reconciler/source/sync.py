"""Git → store: apply what the branch says to the stored specs (DESIGN §3, §4, §8).

A file that does not validate never replaces or deletes anything: the last good spec stays
and the error is recorded where `status` and the page show it. Deletion is explicit: a
batch is deleted only when its file is gone from a tree that was listed successfully, or
when its file now names another batch (a rename of `metadata.name` retires the old batch
exactly as deleting its file does), and a commit that would delete more than
`maxDeletesPerSync` batches deletes none, visibly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from reconciler.domain.model import Batch, Profile, QueueSettings
from reconciler.domain.states import BatchState
from reconciler.source.gitrepo import FileVersion, SyncResult
from reconciler.spec.layout import EXTENSIONS
from reconciler.spec.validation import batch_name, batch_profile_refusal, validate_text
from reconciler.store.base import Event, Store
from reconciler.support import failpoints

log = logging.getLogger(__name__)


@dataclass
class RepoState:
    """Repo-wide settings as last read successfully."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    queue: QueueSettings = field(default_factory=QueueSettings)
    errors: dict[str, str] = field(default_factory=dict)  # file path -> its current error


def load_repo_state(store: Store) -> RepoState:
    state = store.load_sync_state()
    return RepoState(
        profiles={n: Profile.from_dict(n, s) for n, s in state.profiles.items()},
        queue=QueueSettings.from_dict(state.queue),
        errors=state.file_errors,
    )


def _too_big(f: FileVersion) -> str:
    return (f"{f.path}:1:1: file is {f.too_big} bytes, over the 1048576-byte limit;"
            " split it or use manifest.url for large item lists")


def _validate(f: FileVersion, kind: str) -> tuple[dict[str, Any] | None, str]:
    if f.data is None:
        return None, _too_big(f)
    data, problems = validate_text(f.data, f.path, kind)
    if problems:
        return None, "\n".join(str(p) for p in problems)
    return data, ""


def apply_sync(store: Store, result: SyncResult) -> RepoState:
    """Apply one fetched commit to the store; return the repo-wide settings now in force."""
    state = store.load_sync_state()
    raw_profiles, raw_queue = state.profiles, state.queue
    errors, profile_paths = dict(state.file_errors), state.profile_paths  # errors: saved last
    present = {f.path for f in result.changed
               if f.data is not None or f.too_big or f.name_error}

    for f in result.changed:
        if f.path == "queue.yaml":
            if f.data is None and not f.too_big:
                raw_queue = {}
                errors.pop(f.path, None)
                continue
            data, err = _validate(f, "Queue")
            _record(errors, f.path, err)
            if data is not None:
                raw_queue = data.get("spec") or {}
        elif f.path.startswith("profiles/"):
            if f.name_error:
                _record(errors, f.path, f.name_error)
                continue
            if f.data is None and not f.too_big:
                name = profile_paths.pop(f.path, None)
                if name:
                    raw_profiles.pop(name, None)
                errors.pop(f.path, None)
                continue
            data, err = _validate(f, "Profile")
            _record(errors, f.path, err)
            if data is not None:
                name = (data.get("metadata") or {}).get("name") or PurePosixPath(f.path).stem
                raw_profiles[name] = data.get("spec") or {}
                profile_paths[f.path] = name
    state.profiles, state.queue, state.profile_paths = raw_profiles, raw_queue, profile_paths
    store.save_sync_state(state)

    renamed = dict(state.renamed_batches)  # saved last, with the file errors
    files = [f for f in result.changed if f.path.startswith("batches/") and f.path in present]
    by_path: dict[str, Batch] = {}
    for b in _batches_of(store, result, {f.path for f in files}):
        held = b.status.state != BatchState.DELETED and b.name not in renamed
        if held or b.source_path not in by_path:  # the batch each file holds now, before
            by_path[b.source_path] = b            # any it held
    for f in files:
        if f.name_error:  # never becomes a batch: shown among the file errors
            _record(errors, f.path, f.name_error)
            continue
        _apply_batch_file(store, f, raw_profiles, by_path, result, errors, renamed)
    failpoints.hit("after-apply")

    queue = QueueSettings.from_dict(raw_queue)
    if result.listed:
        _prune(store, result, queue, errors, renamed)
    state = store.load_sync_state()
    state.renamed_batches, state.file_errors = renamed, errors
    store.save_sync_state(state)
    return RepoState(
        profiles={n: Profile.from_dict(n, s) for n, s in raw_profiles.items()},
        queue=queue,
        errors=errors,
    )


def _batches_of(store: Store, result: SyncResult, paths: set[str]) -> list[Batch]:
    """The stored batches of these files: looked up by file when the sync read a diff, so
    a commit that changes one file of 10,000 reads one batch, not all of them."""
    if result.full:
        return store.list_batches()
    return store.batches_at(paths) if paths else []


def _profile_error(errors: dict[str, str], profile: str) -> str | None:
    """The first error of the file that would hold `profile`, None when there is none."""
    for ext in EXTENSIONS:
        error = errors.get(f"profiles/{profile}{ext}")
        if error:
            return error.split("\n")[0]
    return None


def _record(errors: dict[str, str], path: str, err: str) -> None:
    if err:
        errors[path] = err
    else:
        errors.pop(path, None)


def _apply_batch_file(
    store: Store,
    f: FileVersion,
    profiles: dict[str, Any],
    by_path: dict[str, Batch],
    result: SyncResult,
    errors: dict[str, str],
    renamed: dict[str, dict[str, str]],
) -> None:
    data, err = _validate(f, "Batch")
    # a broken new file's batch is named after the file's stem until it parses
    name = batch_name(f.path, data) if data is not None else PurePosixPath(f.path).stem
    if data is not None:
        profile = (data.get("spec") or {}).get("profile")
        if profile not in profiles and f.data is not None:
            err = batch_profile_refusal(f.data, f.path, str(profile), _profile_error(
                errors, str(profile)))
            data = None
    existing = store.get_batch(name)
    if existing is not None and existing.source_path != f.path and (
        existing.source_path in result.batch_paths
    ):
        _record(errors, f.path, f"{f.path}: batch name \"{name}\" is already used by "
                f"{existing.source_path}; give this batch another metadata.name")
        return
    _record(errors, f.path, err)
    old = by_path.get(f.path)
    if old is not None and old.name != name:
        if data is None:
            name = old.name  # a broken edit cannot rename: the error shows on the old batch
            existing = old
        elif old.spec is None:
            store.remove_batch(old.name)  # placeholder of a file that never parsed
        elif old.status.state != BatchState.DELETED:  # renamed: retired as if deleted (_prune)
            renamed[old.name] = {"path": f.path, "to": name}
    if data is not None:
        renamed.pop(name, None)  # the name a file holds now is never retired
    if existing is not None and existing.status.state == BatchState.DELETED and data is not None:
        store.remove_batch(name)  # a new file with a deleted batch's name starts afresh
        existing = None
    batch = store.apply_spec(
        name,
        data.get("spec") if data is not None else None,
        source_path=f.path,
        revision=f.revision,
        committed_at=f.committed_at,
        error=err,
    )
    if existing is None and data is None:  # a new file that never parsed: nothing applied
        store.add_event(Event(name, time.time(), "Invalid", (err or "invalid").splitlines()[0],
                              f.revision))
    elif existing is None or batch.generation != existing.generation:
        by = result.authors.get(f.revision)
        store.add_event(Event(name, time.time(), "SpecApplied",
                              f"generation {batch.generation} from {f.path}"
                              + (f" · {by}" if by else ""), f.revision))
    elif err and existing.spec_error != err:
        store.add_event(Event(name, time.time(), "Invalid", err.splitlines()[0], f.revision))


def _prune_candidates(store: Store, result: SyncResult,
                      renamed: dict[str, dict[str, str]]) -> list[Batch]:
    """The batches that may be gone. After a full read, or while a deletion is refused (its
    batches outlive their files), every batch. After a diff, every other live batch's file
    was at the last synced commit and this diff did not remove it, so only the batches of
    the files it removed and those renamed away can be gone."""
    if result.full or store.load_sync_state().deletion_refused:
        return store.list_batches()
    removed = {f.path for f in result.changed
               if f.path.startswith("batches/") and f.path not in result.batch_paths}
    found = {b.name: b for b in store.batches_at(removed)} if removed else {}
    for name in renamed:
        batch = store.get_batch(name) if name not in found else None
        if batch is not None:
            found[name] = batch
    return [found[n] for n in sorted(found)]


def _prune(store: Store, result: SyncResult, queue: QueueSettings, errors: dict[str, str],
           renamed: dict[str, dict[str, str]]) -> None:
    batches = _prune_candidates(store, result, renamed)
    live = {b.name: b.source_path for b in batches if b.status.state != BatchState.DELETED}
    for name in [n for n, r in renamed.items() if live.get(n) != r["path"]]:
        renamed.pop(name)  # retired already, or its file was edited since
    gone = [
        b for b in batches
        if b.status.state != BatchState.DELETED
        and (b.name in renamed or b.source_path not in result.batch_paths)
    ]
    # a file's error goes with the file; after a diff only a file in it can have gone
    for path in list(errors) if result.full else [f.path for f in result.changed]:
        if path.startswith("batches/") and path in errors and path not in result.batch_paths:
            errors.pop(path)
    state = store.load_sync_state()
    if not gone:
        state.deletion_refused = ""
        store.save_sync_state(state)
        return
    if len(gone) > queue.max_deletes_per_sync:
        names = sorted(b.name for b in gone)
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        msg = (f"refused to delete {len(gone)} batches at {result.head[:12]} ({shown}): more"
               f" than maxDeletesPerSync={queue.max_deletes_per_sync}; raise it in queue.yaml"
               " to allow this, or restore the files")
        if state.deletion_refused != msg:
            state.deletion_refused = msg
            store.save_sync_state(state)
            for b in gone:
                store.add_event(Event(b.name, time.time(), "DeletionRefused", msg, result.head))
        log.warning(msg)
        return
    state.deletion_refused = ""
    state.deletions.update({b.name: result.head for b in gone})
    store.save_sync_state(state)  # the refusal cleared, then the deletions decided


def pending_deletions(store: Store) -> dict[str, str]:
    """Batches whose deletion was decided (name -> commit) and not yet carried out."""
    return store.load_sync_state().deletions


def deletion_reason(store: Store, name: str) -> str:
    """What the Deleted batch's status says: its file is gone, or now names another."""
    rename = store.load_sync_state().renamed_batches.get(name)
    if rename:
        return (f"batch renamed: {rename['path']} now names batch {rename['to']}; this one is"
                " retired as if its file were deleted")
    return "batch file deleted"


def deletion_done(store: Store, name: str) -> None:
    state = store.load_sync_state()
    state.deletions.pop(name, None)
    store.save_sync_state(state)  # the deletion first, then the rename it carried out
    if state.renamed_batches.pop(name, None) is not None:
        store.save_sync_state(state)
