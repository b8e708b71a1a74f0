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


# Batch files a slice of a commit applies (`CommitApply`): a commit of at most this many is
# applied whole, in one transaction; a larger one a slice a pass, and its first batches
# run while the rest are applied (bench/README.md, "eleventh round")
SLICE_FILES = 50


def apply_sync(store: Store, result: SyncResult) -> RepoState:
    """Apply one fetched commit to the store whole; return the repo-wide settings now in
    force. (The reconciler's loop applies a large commit a slice a pass: `CommitApply`.)"""
    commit = CommitApply(store, result)
    while not commit.done:
        commit.apply_slice()
    return commit.finish()


class CommitApply:
    """One fetched commit applied to the store, its batch files a slice at a time.

    As `kubectl apply` makes a revision's objects one by one and the Job controller runs
    the first while the rest are still being made (Flux, Argo CD), a commit that adds a
    thousand batches need not be read to its last file before its first batch runs: the
    caller applies SLICE_FILES files a pass, in file order, each slice in a transaction of
    its own, and the passes between the slices admit and run what is there. A file in a
    later slice acts as if it came in a later commit (a hold, a rename, a name taken a pass
    or so later). What only the whole commit may decide waits for `finish`: deletions (a
    file gone, a batch renamed away, and maxDeletesPerSync counts the whole diff), and the
    file errors and renames saved; the caller saves the synced-commit marker with them. A
    kill between slices leaves the marker at the last commit, and the next sync applies the
    same diff again: a file already applied changes nothing.

    Made inside the caller's transaction: the repo-wide settings (queue.yaml, profiles)
    are applied first, so every slice is judged by the commit's profiles."""

    def __init__(self, store: Store, result: SyncResult) -> None:
        self.store, self.result = store, result
        state = store.load_sync_state()
        raw_profiles, raw_queue = state.profiles, state.queue
        errors, profile_paths = dict(state.file_errors), state.profile_paths  # saved last
        present = {f.path for f in result.changed
                   if f.data is not None or f.too_big or f.name_error}
        for f in result.changed:
            if f.path == "queue.yaml":
                raw_queue = _queue_file(f, errors, raw_queue)
            elif f.path.startswith("profiles/"):
                _profile_file(f, errors, raw_profiles, profile_paths)
        state.profiles, state.queue, state.profile_paths = raw_profiles, raw_queue, profile_paths
        store.save_sync_state(state)
        self.raw_profiles, self.errors = raw_profiles, errors
        self.queue = QueueSettings.from_dict(raw_queue)
        self.renamed = dict(state.renamed_batches)  # saved last, with the file errors
        self.files = [f for f in result.changed
                      if f.path.startswith("batches/") and f.path in present]
        self.applied = 0  # files of `files` applied so far
        # the batch each file holds now, before any it held (read once: the commit's files
        # are judged against the store as the commit found it, slices or not)
        self.by_path: dict[str, Batch] = {}
        for b in _batches_of(store, result, {f.path for f in self.files}):
            held = b.status.state != BatchState.DELETED and b.name not in self.renamed
            if held or b.source_path not in self.by_path:
                self.by_path[b.source_path] = b

    @property
    def done(self) -> bool:
        """Is every batch file applied (only `finish` is left)?"""
        return self.applied >= len(self.files)

    def apply_slice(self, size: int | None = None) -> set[str]:
        """Apply the next `size` batch files (all that are left when None); the names of
        the batches they made or changed."""
        end = len(self.files) if size is None else self.applied + size
        touched: set[str] = set()
        for f in self.files[self.applied:end]:
            if f.name_error:  # never becomes a batch: shown among the file errors
                _record(self.errors, f.path, f.name_error)
                continue
            name = _apply_batch_file(self.store, f, self.raw_profiles, self.by_path,
                                     self.result, self.errors, self.renamed)
            if name is not None:
                touched.add(name)
        self.applied = min(end, len(self.files))
        return touched

    def repo_state(self) -> RepoState:
        """The repo-wide settings in force, with the file errors found so far."""
        return RepoState(
            profiles={n: Profile.from_dict(n, s) for n, s in self.raw_profiles.items()},
            queue=self.queue,
            errors=self.errors,
        )

    def finish(self) -> RepoState:
        """What the whole commit decides (every file applied): the deletions, then the
        file errors and renames saved."""
        failpoints.hit("after-apply")
        if self.result.listed:
            _prune(self.store, self.result, self.queue, self.errors, self.renamed)
        state = self.store.load_sync_state()
        state.renamed_batches, state.file_errors = self.renamed, self.errors
        self.store.save_sync_state(state)
        return self.repo_state()


def _queue_file(f: FileVersion, errors: dict[str, str], raw_queue: dict[str, Any]
                ) -> dict[str, Any]:
    """queue.yaml's spec as the commit has it (the last good one while it is broken)."""
    if f.data is None and not f.too_big:
        errors.pop(f.path, None)
        return {}
    data, err = _validate(f, "Queue")
    _record(errors, f.path, err)
    return (data.get("spec") or {}) if data is not None else raw_queue


def _profile_file(f: FileVersion, errors: dict[str, str], raw_profiles: dict[str, Any],
                  profile_paths: dict[str, str]) -> None:
    """A profile file as the commit has it: added, changed, removed, or its error shown
    (the last good one stays while it is broken)."""
    if f.name_error:
        _record(errors, f.path, f.name_error)
        return
    if f.data is None and not f.too_big:
        name = profile_paths.pop(f.path, None)
        if name:
            raw_profiles.pop(name, None)
        errors.pop(f.path, None)
        return
    data, err = _validate(f, "Profile")
    _record(errors, f.path, err)
    if data is not None:
        name = (data.get("metadata") or {}).get("name") or PurePosixPath(f.path).stem
        raw_profiles[name] = data.get("spec") or {}
        profile_paths[f.path] = name


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
) -> str | None:
    """Apply one batch file; the name of the batch it made or changed (None when its name
    is another file's)."""
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
        return None
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
    return name


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
