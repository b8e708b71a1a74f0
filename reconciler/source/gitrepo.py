"""The Git source: desired state is whatever the branch says (DESIGN §3).

Every pass fetches the branch into a bare mirror under the state dir. Only the files
changed since the last synced commit are read again (`git diff-tree`), unless the last synced
commit is no longer an ancestor of the branch (a force-push) or unknown: then the whole
tree is read. Each file comes with the commit that last changed it, which becomes the
batch's `sourceRevision` and, for a new batch, its place in the queue.

File names are bytes in Git. One that is not UTF-8 cannot be stored or shown as text, so it
is reported, with its odd bytes written `\\xNN`, as a file that needs renaming, and every
other file syncs as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import git

from reconciler.source.catfile import CatFileError, read_blobs
from reconciler.source.listing import BatchFiles
from reconciler.spec.layout import is_relevant
from reconciler.support import failpoints
from reconciler.support.redaction import redact_text, redact_url

RELEVANT = ("batches", "profiles", "queue.yaml")
# an entry of `git ls-tree -z`: "<mode> blob <object>\t<path>\0" (trees and submodules
# are "tree" and "commit" entries, never a file the reconciler reads)
_BLOB_ENTRY = re.compile(r"[0-7]+ blob ([0-9a-f]+)\t([^\0]*)\0")
_NO_FILE = ("000000", "040000", "160000")  # modes in `git diff-tree`: absent, folder, submodule
MAX_FILE_BYTES = 1024 * 1024
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a fetch past its deadline


@dataclass(frozen=True)
class FileVersion:
    """One file as of the synced commit (`data` None: deleted, or too big to read)."""

    path: str
    data: bytes | None
    revision: str
    committed_at: float
    too_big: int = 0  # size in bytes when refused for size
    name_error: str = ""  # why the file is not read at all (its name is not UTF-8)


@dataclass
class SyncResult:
    head: str
    full: bool
    changed: list[FileVersion] = field(default_factory=list)
    batch_paths: AbstractSet[str] = field(default_factory=set)  # every batch file at head
    listed: bool = False  # batch_paths was read from the tree (the head moved)
    authors: dict[str, str] = field(default_factory=dict)  # commit -> "Name <email>: subject"


class SourceError(RuntimeError):
    """The branch could not be fetched or read: nothing is changed on this pass."""


def run_with_deadline(command: list[str], *, cwd: Path, env: dict[str, str],
                      timeout: float, errors: str = "strict"
                      ) -> subprocess.CompletedProcess[str]:
    """Run `command` in a process group of its own and end the whole group at the deadline
    (SIGTERM, then SIGKILL); raise subprocess.TimeoutExpired then.

    `git fetch` runs its transport as a child (git-remote-http, ssh) that holds the output
    pipes: killing git alone (GitPython's kill_after_timeout, when no `pgrep` or `ps` is
    installed, as in slim images) leaves that child running and the caller reading the pipes
    until the remote lets go, which a hanging remote never does.
    """
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors=errors, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _end_group(proc)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _end_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
    for pipe in (proc.stdout, proc.stderr):  # held by something that left the group
        if pipe is not None:
            pipe.close()
    proc.wait()


def is_utf8(path: str) -> bool:
    """Git's bytes reach us decoded with `surrogateescape`: a surrogate is a byte that was
    not UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str) -> str:
    """The path as text that can be stored and printed: bytes that are not UTF-8 as \\xNN."""
    if is_utf8(path):
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_error(path: str) -> str:
    folder = path.split("/")[0]
    return (f"{shown_path(path)}:1:1: file name is not UTF-8: rename it"
            f" ({folder}/<name>.yaml, with the name in lowercase letters, digits and '-')")


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
        self._repo: git.Repo | None = None
        self.blobs_read = 0  # blobs read by sync, in all (tests count what a sync reads)

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

    def repo(self) -> git.Repo:
        """The mirror (the access policy reads commits and blobs from it)."""
        return self._open()

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
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_SSH_COMMAND="ssh -o BatchMode=yes")
        command = [str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"), "fetch", "origin",
                   f"+refs/heads/{self.branch}:{self.ref}", "--no-tags"]
        where = f"branch {self.branch} of {redact_url(self.url)}"
        try:
            done = run_with_deadline(command, cwd=self.mirror, env=env,
                                     timeout=self.fetch_timeout)
        except subprocess.TimeoutExpired:
            self.clear_stale_locks()  # every process of the fetch is gone: nothing writes
            raise SourceError(f"cannot fetch {where}: no answer within"
                              f" {self.fetch_timeout:g} s") from None
        except OSError as exc:
            raise SourceError(f"cannot fetch {where}: {exc}") from exc
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            detail = redact_text("; ".join(lines) or f"git fetch exited with {done.returncode}")
            raise SourceError(f"cannot fetch {where}: {detail}")
        return str(repo.git.rev_parse(self.ref))

    def sync(self, last: str | None) -> SyncResult:
        """Read what changed between `last` and the branch head.

        A full read lists the head's relevant folders once (`git ls-tree`); a read from
        `last` (an ancestor) asks only `git diff-tree` what changed, and lists the tree only
        if the apply step asks about a file the diff did not touch (listing.py). Either
        way every blob to read goes through one `git cat-file --batch` stream (catfile.py)."""
        head = self.fetch()
        full = last is None or not self._is_ancestor(last, head)
        result = SyncResult(head=head, full=full)
        if not full and last == head:
            return result
        if full:
            blobs = self._list(head)  # one listing of the tree, not one per file
            paths = set(blobs)
            result.batch_paths = _batch_paths(blobs)
        else:
            blobs, paths = self._diff(str(last), head)
            result.batch_paths = BatchFiles(
                {shown_path(p): p in blobs for p in paths if p.startswith("batches/")},
                lambda: _batch_paths(self._list(head)))
        result.listed = True
        only = None if full or not paths else self._only_new_commit(str(last), head)
        if only is not None:  # the usual push: every changed file is the head commit's
            revisions = {p: (head, only[0]) for p in paths}
        else:
            revisions = self._last_changes(paths, None if full else last, head)
        readable = {blobs[p] for p in paths if p in blobs and is_utf8(p)}
        try:
            contents = read_blobs(self.mirror, readable, limit=MAX_FILE_BYTES,
                                  git=self._executable())
        except (CatFileError, OSError) as exc:
            raise SourceError(f"cannot read commit {head[:12]} from the mirror: {exc}") from exc
        self.blobs_read += len(contents)
        for path in sorted(paths):
            if path not in revisions:  # not in the range's log (cannot happen): the head's
                revisions[path] = self._commit_time(head)
            rev, when = revisions[path]
            sha = blobs.get(path)
            if sha is None:
                result.changed.append(FileVersion(shown_path(path), None, rev, when))
                continue
            if not is_utf8(path):
                result.changed.append(FileVersion(shown_path(path), None, rev, when,
                                                  name_error=name_error(path)))
                continue
            blob = contents[sha]
            if blob.data is None:
                result.changed.append(FileVersion(path, None, rev, when, too_big=blob.size))
                continue
            result.changed.append(FileVersion(path, blob.data, rev, when))
        result.authors = {head: only[1]} if only is not None else self._describe(
            {f.revision for f in result.changed})
        return result

    def _only_new_commit(self, last: str, head: str) -> tuple[float, str] | None:
        """The head's commit time and description (as `_describe` gives them) when its one
        parent is `last`, so no `git log` of the range is needed; else None."""
        out = self._git("log", "-1", "-z", "--format=%P%x00%ct%x00%an <%ae>: %s", head)
        parents, when, text = [*out.split("\0"), "", ""][:3]
        if parents.split() != [last]:
            return None
        return float(when), redact_text(text.strip())

    def _diff(self, last: str, head: str) -> tuple[dict[str, str], set[str]]:
        """The relevant paths that differ between `last` and `head`, and of those the ones
        that are files (blobs) at head with their object names. `-r` lists a folder that
        replaced a file as the file deleted; a submodule entry (mode 160000) is no file."""
        out = self._git("diff-tree", "-r", "-z", "--no-renames", "--raw", last, head, "--",
                        *RELEVANT)
        tokens = out.split("\0")
        blobs: dict[str, str] = {}
        paths: set[str] = set()
        for meta, path in zip(tokens[::2], tokens[1::2], strict=False):
            if not is_relevant(path):
                continue
            paths.add(path)
            _, new_mode, _, new_sha, _ = meta.split(" ", 4)
            if new_mode not in _NO_FILE:
                blobs[path] = new_sha
        return blobs, paths

    def _executable(self) -> str:
        return str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git")

    def _git(self, *args: str) -> str:
        """A read-only git command in the mirror; its output decoded as GitPython does
        (bytes that are not UTF-8 kept as surrogates, so names round-trip)."""
        self._open()
        done = subprocess.run([self._executable(), *args], cwd=self.mirror,
                              env=dict(os.environ), stdin=subprocess.DEVNULL,
                              capture_output=True, check=False)
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()
            raise SourceError(f"cannot read the mirror of {redact_url(self.url)}:"
                              f" git {args[0]}: {redact_text(detail)}")
        return done.stdout.decode("utf-8", "surrogateescape")

    def _list(self, head: str) -> dict[str, str]:
        """Every relevant file (a blob: a regular file or a symlink, as Git stores it) at
        the top and directly in `batches/` and `profiles/`, by path: its object name.
        Folders, submodules and files deeper down are not files the reconciler reads."""
        out = self._git("ls-tree", "-z", head, "--", "batches/", "profiles/", "queue.yaml")
        return {path: sha for sha, path in _BLOB_ENTRY.findall(out) if is_relevant(path)}

    def _commit_time(self, commit: str) -> tuple[str, float]:
        return commit, float(self._git("log", "-1", "--format=%ct", commit).strip())

    def _describe(self, commits: set[str]) -> dict[str, str]:
        """Who made each commit and its subject, for the timeline: one `git log`."""
        if not commits:
            return {}
        out = self._open().git.log("--no-walk=unsorted", "-z", "--format=%H%x00%an <%ae>: %s",
                                   *sorted(commits))
        tokens = out.split("\0")
        return {sha.strip(): redact_text(text) for sha, text in zip(tokens[::2], tokens[1::2],
                                                                    strict=False)}

    def _is_ancestor(self, old: str, new: str) -> bool:
        try:
            self._open().git.merge_base("--is-ancestor", old, new)
            return True
        except git.GitCommandError:
            return False

    def _last_changes(
        self, paths: set[str], since: str | None, head: str
    ) -> dict[str, tuple[str, float]]:
        """For each path, the newest commit (and its time) that touched it: one `git log`.

        With `-z` names come unquoted (git quotes non-ASCII names otherwise), NUL-separated;
        a commit's header starts with \\x01, which no relevant path can start with."""
        if not paths:
            return {}
        rng = head if since is None else f"{since}..{head}"
        out = self._open().git.log(
            "-z", "--format=%x01%H %ct", "--name-only", "--no-renames", rng, "--", *RELEVANT
        )
        found: dict[str, tuple[str, float]] = {}
        commit = ("", 0.0)
        for token in out.split("\0"):
            token = token.lstrip("\n")
            if token.startswith("\x01"):
                sha, ts = token[1:].split()
                commit = (sha, float(ts))
            elif token in paths and token not in found:
                found[token] = commit
                if len(found) == len(paths):
                    break
        return found


def _batch_paths(blobs: dict[str, str]) -> set[str]:
    return {shown_path(p) for p in blobs if p.startswith("batches/")}
