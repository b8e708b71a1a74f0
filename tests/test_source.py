"""The Git source against real repositories: diffs, force-pushes, per-file revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.source.gitrepo import GitSource, SourceError
from tests.fixtures import GitRepo


def paths(result: object) -> list[str]:
    return sorted(f.path for f in result.changed)  # type: ignore[attr-defined]


def test_first_sync_reads_everything_then_only_changes(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.write("batches/a.yaml", "a: 1\n")
    git_repo.write("batches/b.yaml", "b: 1\n")
    git_repo.write("profiles/p.yaml", "p: 1\n")
    git_repo.write("README.md", "not relevant\n")
    git_repo.write("batches/notes.txt", "not a batch file\n")
    first = git_repo.commit("initial")
    src = GitSource(str(git_repo.path), "main", tmp_path / "git")
    r1 = src.sync(None)
    assert r1.full and r1.head == first
    assert paths(r1) == ["batches/a.yaml", "batches/b.yaml", "profiles/p.yaml"]
    assert r1.batch_paths == {"batches/a.yaml", "batches/b.yaml"}
    assert {f.revision for f in r1.changed} == {first}

    git_repo.write("batches/b.yaml", "b: 2\n")
    second = git_repo.commit("edit b")
    git_repo.write("README.md", "still not relevant\n")
    third = git_repo.commit("docs")
    r2 = src.sync(first)
    assert not r2.full and r2.head == third
    assert paths(r2) == ["batches/b.yaml"]
    assert r2.changed[0].data == b"b: 2\n"
    assert r2.changed[0].revision == second  # the commit that last changed the file

    r3 = src.sync(third)
    assert r3.changed == [] and r3.batch_paths == set()

    git_repo.remove("batches/a.yaml")
    git_repo.commit("delete a")
    r4 = src.sync(third)
    assert [(f.path, f.data) for f in r4.changed] == [("batches/a.yaml", None)]
    assert r4.batch_paths == {"batches/b.yaml"}


def test_force_push_triggers_a_full_read(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.write("batches/a.yaml", "a: 1\n")
    base = git_repo.commit("initial")
    git_repo.write("batches/b.yaml", "b: 1\n")
    lost = git_repo.commit("b, soon rewritten away")
    src = GitSource(str(git_repo.path), "main", tmp_path / "git")
    assert src.sync(None).head == lost
    git_repo.git("reset", "-q", "--hard", base)
    git_repo.write("batches/c.yaml", "c: 1\n")
    new = git_repo.commit("c instead of b")
    r = src.sync(lost)
    assert r.full and r.head == new
    assert paths(r) == ["batches/a.yaml", "batches/c.yaml"]
    assert r.batch_paths == {"batches/a.yaml", "batches/c.yaml"}


def test_clone_url_and_branch(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.write("batches/a.yaml", "a: 1\n")
    git_repo.commit("main")
    git_repo.git("checkout", "-q", "-b", "staging")
    git_repo.write("batches/s.yaml", "s: 1\n")
    staging = git_repo.commit("staging only")
    src = GitSource(f"file://{git_repo.path}", "staging", tmp_path / "git")
    r = src.sync(None)
    assert r.head == staging and paths(r) == ["batches/a.yaml", "batches/s.yaml"]


def test_big_file_is_not_read(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.write("batches/big.yaml", b"#" * (2 * 1024 * 1024))
    git_repo.commit("too big")
    r = GitSource(str(git_repo.path), "main", tmp_path / "git").sync(None)
    assert [(f.path, f.data, f.too_big) for f in r.changed] == [
        ("batches/big.yaml", None, 2 * 1024 * 1024)]


def test_unreachable_repo_is_a_clear_error(tmp_path: Path) -> None:
    src = GitSource(str(tmp_path / "nowhere"), "main", tmp_path / "git")
    with pytest.raises(SourceError, match="cannot fetch branch main of"):
        src.sync(None)
