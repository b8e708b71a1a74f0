"""The one `git cat-file --batch` reader: objects of the kind asked for, within a deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.source.catfile import CatFileError, CatFileTimeout, read_objects
from tests.fixtures import GitRepo


def test_reads_commits_and_refuses_another_kind(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("batches/a.yaml", "x: 1\n")
    head = repo.commit("one")
    raw = read_objects(repo.path, [head, head], kind="commit", limit=1 << 20, timeout=30)
    assert list(raw) == [head]
    assert raw[head].data is not None and raw[head].data.startswith(b"tree ")
    tree = raw[head].data.split()[1].decode()
    with pytest.raises(CatFileError, match=f"object {tree} is a tree, not a commit"):
        read_objects(repo.path, [tree], kind="commit", limit=1 << 20)


def test_a_git_that_does_not_answer_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """A hung git (here a real process that reads and never answers) is killed."""
    silent = tmp_path / "silent-git"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    with pytest.raises(CatFileTimeout, match=r"took over 0\.5 s"):
        read_objects(tmp_path, ["0" * 40], kind="commit", limit=1 << 20, git=str(silent),
                     timeout=0.5)
