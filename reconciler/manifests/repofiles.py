"""The repository's own files, read from Git at one commit: never a work tree, never the host.

A relative `file:` URL (`file:payloads/map-001.tif`) names a file of the repository as it
was committed, at the commit the batch was synced from (its `sourceRevision`): what runs is
what was committed and can be reviewed, whatever the work tree or the host holds. The
reconciler reads a `file:` manifest this way, and the worker reads a `file:` payload this
way, both from the reconciler's bare mirror of the branch, read-only.

Why the worker reads the blob itself, by commit and path, rather than being handed its
bytes: payloads run to gigabytes, and copying each one into a job dir (or into a Secret or
ConfigMap, capped near 1 MiB on Kubernetes) would double the disk and the time and give up
the bounded, streamed download the worker already does for http. Git objects never change
and `git fetch` only adds to the mirror, so a worker reading while the reconciler fetches
reads a whole, consistent blob. (On Kubernetes the worker pod needs the mirror mounted
read-only at the same path; without it a `file:` payload fails with a message saying so.)

Only regular files are read. A symbolic link is refused, not followed: its content is a
path, and following it is exactly how a repository would reach a host file. Directories
and submodules are refused too.
"""

from __future__ import annotations

import io
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import git


class RepoFileError(RuntimeError):
    """The file cannot be read from the repository; `refused` marks a policy refusal (a
    link, a directory) rather than a file that is not there (yet)."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


class BlobStream:
    """A blob being read by its own `git cat-file` (stopped by `close` wherever the reader
    gave up: a size limit, a deadline); `read1` for the bounded download."""

    def __init__(self, git_dir: Path, sha: str) -> None:
        self._proc = subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "blob", sha],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self._out = cast(io.BufferedReader, self._proc.stdout)  # stdout=PIPE: a reader

    def read1(self, size: int) -> bytes:
        return self._out.read1(size)

    def close(self) -> None:
        self._out.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


@dataclass(frozen=True)
class RepoSnapshot:
    """The repository at one commit, in a bare Git directory (the reconciler's mirror)."""

    git_dir: Path
    commit: str

    def open(self, path: str, shown: str) -> tuple[BlobStream, int]:
        """The file at `path` (relative, already checked for `..`) and its size; `shown`
        names it in messages (the URL as written)."""
        try:
            repo = git.Repo(self.git_dir)
        except (git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
            raise RepoFileError(f"cannot read {shown}: the repository mirror {self.git_dir}"
                                " is not available here", refused=False) from exc
        try:
            obj = self._lookup(repo, path, shown)
        finally:
            repo.close()
        return BlobStream(self.git_dir, obj.hexsha), int(obj.size)

    def _lookup(self, repo: git.Repo, path: str, shown: str) -> Any:
        at = self.commit[:12]
        try:
            tree = repo.commit(self.commit).tree
        except (git.BadName, git.BadObject, ValueError) as exc:
            raise RepoFileError(f"cannot read {shown}: commit {at} is not in the repository"
                                " mirror", refused=False) from exc
        try:
            obj = tree / path
        except (KeyError, TypeError):
            raise RepoFileError(f"cannot read {shown}: not in the repository at commit {at}",
                                refused=False) from None
        if obj.type == "tree":
            raise RepoFileError(f"{shown} is a directory in the repository, not a file",
                                refused=True)
        if obj.type != "blob":
            raise RepoFileError(f"{shown} is a submodule in the repository, not a file",
                                refused=True)
        if stat.S_ISLNK(obj.mode):
            raise RepoFileError(f"{shown} is a symbolic link in the repository; links are"
                                " not followed", refused=True)
        return obj
