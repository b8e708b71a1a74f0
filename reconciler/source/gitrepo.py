"""The Git source: desired state is whatever the branch says (DESIGN §3).

Every pass fetches the branch into a bare mirror under the state dir. Only the files
changed since the last synced commit are read again (`git diff`), unless the last synced
commit is no longer an ancestor of the branch (a force-push) or unknown: then the whole
tree is read. Each file comes with the commit that last changed it, which becomes the
batch's `sourceRevision` and, for a new batch, its place in the queue.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import git

from reconciler.support import failpoints
from reconciler.support.redaction import redact_text, redact_url

RELEVANT = ("batches", "profiles", "queue.yaml")
EXTENSIONS = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileVersion:
    """One file as of the synced commit (`data` None: deleted, or too big to read)."""

    path: str
    data: bytes | None
    revision: str
    committed_at: float
    too_big: int = 0  # size in bytes when refused for size


@dataclass
class SyncResult:
    head: str
    full: bool
    changed: list[FileVersion] = field(default_factory=list)
    batch_paths: set[str] = field(default_factory=set)  # every batch file at head
    listed: bool = False  # batch_paths was read from the tree (the head moved)


class SourceError(RuntimeError):
    """The branch could not be fetched or read: nothing is changed on this pass."""


def is_relevant(path: str) -> bool:
    if path == "queue.yaml":
        return True
    parts = path.split("/")
    return len(parts) == 2 and parts[0] in ("batches", "profiles") and path.endswith(EXTENSIONS)


class GitSource:
    """A branch of a repository (a local path or a clone URL), mirrored under `workdir`."""

    def __init__(self, url: str, branch: str, workdir: Path, *,
                 fetch_timeout: float = 120.0) -> None:
        self.url = url
        self.branch = branch
        self.fetch_timeout = fetch_timeout
        key = hashlib.sha256(f"{url}\0{branch}".encode()).hexdigest()[:16]
        self.mirror = workdir / f"mirror-{key}.git"
        self.ref = f"refs/remotes/origin/{branch}"
        local = Path(url)
        self.base_dir = local.resolve() if local.is_dir() and (local / ".git").exists() else None
        self._repo: git.Repo | None = None

    def _open(self) -> git.Repo:
        """The mirror, created whole or not at all: it is built beside its final place and
        renamed into it, so a process killed half-way leaves no mirror without a remote."""
        if self._repo is None:
            if not (self.mirror / "HEAD").exists():
                self.mirror.parent.mkdir(parents=True, exist_ok=True)
                if self.mirror.exists():  # a directory without HEAD: never finished
                    shutil.rmtree(self.mirror)
                building = Path(tempfile.mkdtemp(prefix=f"{self.mirror.name}.new-",
                                                 dir=self.mirror.parent))
                repo = git.Repo.init(building, bare=True)
                repo.create_remote("origin", self.url)
                repo.close()
                failpoints.hit("mirror-built")
                os.rename(building, self.mirror)
            self._repo = git.Repo(self.mirror)
        return self._repo

    def clear_stale_locks(self) -> list[str]:
        """Remove the `*.lock` files a killed `git fetch` leaves in the mirror, and
        half-built mirrors beside it; only for the holder of the state-dir lock (nothing
        else writes there). Returns what was removed."""
        removed: list[str] = []
        parent = self.mirror.parent
        if parent.is_dir():
            for half in parent.glob(f"{self.mirror.name}.new-*"):
                shutil.rmtree(half, ignore_errors=True)
                removed.append(str(half))
        if self.mirror.is_dir():
            for lock in [*self.mirror.glob("*.lock"), *self.mirror.glob("refs/**/*.lock")]:
                lock.unlink(missing_ok=True)
                removed.append(str(lock))
        return removed

    def fetch(self) -> str:
        """Fetch the branch (force, so a rewritten branch is followed) and return its head.

        The fetch has an overall deadline: a remote that hangs, trickles or asks for a
        password is a SourceError after `fetch_timeout` seconds, and the last good state
        stays.
        """
        repo = self._open()
        try:
            with repo.git.custom_environment(GIT_TERMINAL_PROMPT="0",
                                             GIT_SSH_COMMAND="ssh -o BatchMode=yes"):
                repo.git.fetch("origin", f"+refs/heads/{self.branch}:{self.ref}", "--no-tags",
                               kill_after_timeout=self.fetch_timeout)
            return str(repo.git.rev_parse(self.ref))
        except git.GitCommandError as exc:
            detail = redact_text(str(exc.stderr or "").strip() or str(exc))
            if "did not complete in" in detail or "Timeout" in detail:
                detail = f"no answer within {self.fetch_timeout:g} s"
            raise SourceError(f"cannot fetch branch {self.branch} of "
                              f"{redact_url(self.url)}: {detail}") from exc

    def sync(self, last: str | None) -> SyncResult:
        """Read what changed between `last` and the branch head."""
        head = self.fetch()
        repo = self._open()
        full = last is None or not self._is_ancestor(last, head)
        result = SyncResult(head=head, full=full)
        if not full and last == head:
            return result
        commit = repo.commit(head)
        blobs = _relevant_blobs(commit.tree)  # one walk of the tree, not one per file
        result.batch_paths = {p for p in blobs if p.startswith("batches/")}
        result.listed = True
        if full:
            paths = set(blobs)
        else:
            out = repo.git.diff("--name-only", "--no-renames", "-z", f"{last}..{head}", "--",
                                *RELEVANT)
            paths = {p for p in out.split("\0") if p and is_relevant(p)}
        revisions = self._last_changes(paths, None if full else last, head)
        head_change = (head, float(commit.committed_date))
        for path in sorted(paths):
            rev, when = revisions.get(path, head_change)
            blob = blobs.get(path)
            if blob is None:
                result.changed.append(FileVersion(path, None, rev, when))
                continue
            if blob.size > MAX_FILE_BYTES:
                result.changed.append(FileVersion(path, None, rev, when, too_big=blob.size))
                continue
            result.changed.append(FileVersion(path, blob.data_stream.read(), rev, when))
        return result

    def _is_ancestor(self, old: str, new: str) -> bool:
        try:
            self._open().git.merge_base("--is-ancestor", old, new)
            return True
        except git.GitCommandError:
            return False

    def _last_changes(
        self, paths: set[str], since: str | None, head: str
    ) -> dict[str, tuple[str, float]]:
        """For each path, the newest commit (and its time) that touched it: one `git log`."""
        if not paths:
            return {}
        rng = head if since is None else f"{since}..{head}"
        out = self._open().git.log(
            "--format=%x00%H %ct", "--name-only", "--no-renames", rng, "--", *RELEVANT
        )
        found: dict[str, tuple[str, float]] = {}
        for chunk in out.split("\0")[1:]:
            lines = chunk.strip().splitlines()
            if not lines:
                continue
            sha, ts = lines[0].split()
            for p in lines[1:]:
                if p in paths and p not in found:
                    found[p] = (sha, float(ts))
            if len(found) == len(paths):
                break
        return found


def _subtree_blobs(tree: git.Tree, name: str) -> list[git.Blob]:
    try:
        sub = tree / name
    except KeyError:
        return []
    return [b for b in sub.blobs] if isinstance(sub, git.Tree) else []


def _relevant_blobs(tree: git.Tree) -> dict[str, git.Blob]:
    """Every relevant file at the top and in `batches/` and `profiles/`, by path."""
    blobs = {str(b.path): b for b in tree.blobs}
    for name in ("batches", "profiles"):
        blobs.update((str(b.path), b) for b in _subtree_blobs(tree, name))
    return {path: blob for path, blob in blobs.items() if is_relevant(path)}
