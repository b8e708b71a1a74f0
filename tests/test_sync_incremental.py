"""A sync from a known commit reads and stores only what changed, and ends in exactly the
state a sync of the whole tree from scratch gives (issue 13 goal 4).

Real repositories with commits made here; the store is the real SQLite one. Each scenario
commits an awkward change on top of a base commit and compares the store of a reconciler
that followed commit by commit with the store of a fresh one that read the head at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.control.controller import Controller
from reconciler.domain.states import BatchState
from reconciler.source.gitrepo import GitSource, SyncResult
from reconciler.source.sync import apply_sync, load_repo_state
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import GitRepo, batch_doc, profile_doc

PREFIX = "http://127.0.0.1:9/"


def item(n: int) -> dict[str, Any]:
    return {"id": f"item-{n}", "url": f"{PREFIX}{n}"}


class Follower:
    """A GitSource and a store, synced the way Reconciler.sync does it, then one pass of
    the real controller (the queue is paused: it only carries out deletions)."""

    def __init__(self, repo: GitRepo, root: Path) -> None:
        self.source = GitSource(str(repo.path), "main", root / "git")
        self.store = SqliteStore(root / "batchq.sqlite3")
        self.controller = Controller(self.store, storage_root=root / "storage")
        self.last: str | None = None

    def sync(self) -> SyncResult:
        result = self.source.sync(self.last)
        with self.store.transaction():
            repo = apply_sync(self.store, result) if result.changed or result.listed \
                else load_repo_state(self.store)
            state = self.store.load_sync_state()
            state.synced_commit = self.last = result.head
            self.store.save_sync_state(state)
        self.controller.reconcile_all(repo, str(self.source.mirror))
        return result

    def view(self) -> dict[str, Any]:
        """What Git decided: live batches (not Deleted, no deletion pending) with their
        spec, file and error; the repo-wide settings and every file error. Left out by
        design: the last good spec a broken file keeps, and the revision (the store keeps
        the commit that brought the spec in force; a mode change or a rewrite to the same
        spec does not move it, and a reader from scratch cannot know it)."""
        state = self.store.load_sync_state()
        batches = {
            b.name: (None if b.spec_error else b.spec, b.source_path, b.spec_error)
            for b in self.store.list_batches()
            if b.status.state != BatchState.DELETED and b.name not in state.deletions
        }
        return {"batches": batches, "errors": state.file_errors, "profiles": state.profiles,
                "queue": state.queue, "profile_paths": state.profile_paths}


def from_scratch(repo: GitRepo, root: Path) -> dict[str, Any]:
    fresh = Follower(repo, root)
    assert fresh.sync().full
    view = fresh.view()
    fresh.store.close()
    return view


def base(repo: GitRepo) -> None:
    repo.write("profiles/test.yaml", profile_doc(PREFIX))
    repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                              "spec": {"maxDeletesPerSync": 10, "paused": True}})
    for n, name in enumerate("abcdlmnrs"):  # a file for each scenario to change
        repo.write(f"batches/{name}.yaml", batch_doc([item(n)]))
    repo.commit("base")


def commit_index(repo: GitRepo, message: str) -> str:
    """Commit the index as it is (`git add -A` would drop a submodule entry)."""
    repo.git("commit", "-q", "-m", message)
    return repo.git("rev-parse", "HEAD")


def rename(repo: GitRepo) -> None:
    repo.git("mv", "batches/r.yaml", "batches/r2.yaml")
    repo.commit("rename a file")


def delete(repo: GitRepo) -> None:
    repo.remove("batches/b.yaml")
    repo.commit("delete a file")


def mode_change(repo: GitRepo) -> None:
    os.chmod(repo.path / "batches/m.yaml", 0o755)
    repo.commit("make a file executable")


def file_to_directory(repo: GitRepo) -> None:
    repo.remove("batches/d.yaml")
    repo.write("batches/d.yaml/inner.yaml", batch_doc([item(9)]))
    repo.commit("a file replaced by a folder of the same name")


def file_to_symlink(repo: GitRepo) -> None:
    repo.remove("batches/l.yaml")
    os.symlink("c.yaml", repo.path / "batches/l.yaml")
    repo.commit("a file replaced by a symlink")


def non_utf8_name(repo: GitRepo) -> None:
    (repo.path / os.fsdecode(b"batches/caf\xe9.yaml")).write_text("kind: Batch\n")
    repo.write("batches/e.yaml", batch_doc([item(5)]))
    repo.commit("a file whose name is not UTF-8, and a good one")


def submodule(repo: GitRepo) -> None:
    head = repo.git("rev-parse", "HEAD")
    repo.git("rm", "-q", "--cached", "batches/s.yaml")
    repo.remove("batches/s.yaml")
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{head},batches/s.yaml")
    commit_index(repo, "a file replaced by a submodule entry")


def metadata_rename(repo: GitRepo) -> None:
    doc = batch_doc([item(0)])
    doc["metadata"] = {"name": "renamed-n"}
    repo.write("batches/n.yaml", doc)
    repo.commit("the file now names another batch")


def broken_edit(repo: GitRepo) -> None:
    repo.write("batches/a.yaml", "spec: [unclosed\n")
    repo.commit("a broken edit")


def profile_and_queue(repo: GitRepo) -> None:
    repo.write("profiles/test.yaml", profile_doc("http://127.0.0.1:8/"))
    repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                              "spec": {"paused": True}})
    repo.commit("profile and queue.yaml edited")


SCENARIOS: dict[str, Callable[[GitRepo], None]] = {
    f.__name__: f for f in (rename, delete, mode_change, file_to_directory, file_to_symlink,
                            non_utf8_name, submodule, metadata_rename, broken_edit,
                            profile_and_queue)
}


@pytest.mark.parametrize("change", sorted(SCENARIOS))
def test_a_diff_sync_ends_where_a_full_sync_does(change: str, git_repo: GitRepo,
                                                 tmp_path: Path) -> None:
    base(git_repo)
    follower = Follower(git_repo, tmp_path / "follower")
    follower.sync()
    SCENARIOS[change](git_repo)
    assert not follower.sync().full  # read as a diff, not as the whole tree
    assert follower.view() == from_scratch(git_repo, tmp_path / "fresh")


def test_every_change_in_a_row_then_a_force_push(git_repo: GitRepo, tmp_path: Path) -> None:
    base(git_repo)
    start = git_repo.git("rev-parse", "HEAD")
    follower = Follower(git_repo, tmp_path / "follower")
    follower.sync()
    for n, change in enumerate(sorted(SCENARIOS)):
        SCENARIOS[change](git_repo)
        assert not follower.sync().full
        assert follower.view() == from_scratch(git_repo, tmp_path / f"fresh-{n}"), change
    git_repo.git("reset", "-q", "--hard", start)  # history rewritten: the last sync is gone
    git_repo.write("batches/f.yaml", batch_doc([item(6)]))
    git_repo.commit("instead of all that")
    assert follower.sync().full
    assert follower.view() == from_scratch(git_repo, tmp_path / "fresh-after-rewrite")


def test_a_symlink_is_refused_as_a_batch_file(git_repo: GitRepo, tmp_path: Path) -> None:
    base(git_repo)
    follower = Follower(git_repo, tmp_path / "follower")
    follower.sync()
    file_to_symlink(git_repo)
    follower.sync()
    assert follower.view()["errors"]["batches/l.yaml"].startswith("batches/l.yaml:1:1: ")


def test_refused_deletions_are_decided_again_after_a_diff(git_repo: GitRepo,
                                                         tmp_path: Path) -> None:
    """A deletion refused by the guard leaves batches without files; later diffs that do
    not touch those files must still see them go once the guard allows it."""
    base(git_repo)
    follower = Follower(git_repo, tmp_path / "follower")
    follower.sync()
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"maxDeletesPerSync": 1, "paused": True}})
    git_repo.commit("guard at 1")
    follower.sync()
    git_repo.remove("batches/a.yaml")
    git_repo.remove("batches/b.yaml")
    git_repo.commit("delete two")
    follower.sync()
    assert "refused to delete 2 batches" in follower.store.load_sync_state().deletion_refused
    git_repo.write("batches/e.yaml", batch_doc([item(5)]))
    git_repo.commit("unrelated")
    follower.sync()
    assert follower.store.load_sync_state().deletion_refused  # still refused, still shown
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"maxDeletesPerSync": 2, "paused": True}})
    git_repo.commit("guard raised")
    follower.sync()
    state = follower.store.load_sync_state()
    assert state.deletion_refused == ""
    assert {b.name for b in follower.store.list_batches()
            if b.status.state == BatchState.DELETED} == {"a", "b"}
    assert follower.view() == from_scratch(git_repo, tmp_path / "fresh")


def cat_file_processes(trace: Path) -> int:
    """`git cat-file` processes started, from GIT_TRACE's record of every git command."""
    if not trace.exists():
        return 0
    return sum("trace: built-in: git cat-file" in line
               for line in trace.read_text(errors="replace").splitlines())


def test_one_cat_file_process_reads_all_the_changed_files(
        git_repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base(git_repo)
    for n in range(40):
        git_repo.write(f"batches/many-{n}.yaml", batch_doc([item(200 + n)]))
    git_repo.commit("40 more")
    source = GitSource(str(git_repo.path), "main", tmp_path / "git")
    source.fetch()  # the mirror's own set-up is not what is counted
    trace = tmp_path / "git-trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    first = source.sync(None)
    assert len(first.changed) == 51 and source.blobs_read == 51
    assert cat_file_processes(trace) == 1
    for n in range(20):
        git_repo.write(f"batches/many-{n}.yaml", batch_doc([item(200 + n), item(300 + n)]))
    git_repo.commit("20 edited")
    trace.unlink()
    second = source.sync(first.head)
    assert not second.full and len(second.changed) == 20
    assert source.blobs_read == 51 + 20 and cat_file_processes(trace) == 1
    trace.unlink()
    assert source.sync(second.head).changed == [] and cat_file_processes(trace) == 0


def one_edit_costs(repo: GitRepo, root: Path, files: int,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, list[str], list[str]]:
    """Sync `files` batch files, edit one, sync again: the blobs and store writes the second
    sync cost, every SQL statement it ran, and every git command (GIT_TRACE)."""
    repo.write("profiles/test.yaml", profile_doc(PREFIX))
    for n in range(files):
        repo.write(f"batches/b-{n:05d}.yaml", batch_doc([item(n)]))
    first = repo.commit(f"{files} batch files")
    follower = Follower(repo, root)
    with follower.store.transaction():
        apply_sync(follower.store, follower.source.sync(None))
    repo.write("batches/b-00000.yaml", batch_doc([item(0), item(1)]))
    repo.commit("one edited")
    follower.source.fetch()  # the fetch is not what is counted
    blobs, writes, statements = follower.source.blobs_read, follower.store.writes, []
    trace = root / "git-trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    follower.store.db.set_trace_callback(statements.append)
    with follower.store.transaction():
        result = follower.source.sync(first)
        apply_sync(follower.store, result)
    follower.store.db.set_trace_callback(None)
    monkeypatch.delenv("GIT_TRACE")
    commands = [line.split("trace: built-in: ", 1)[1]
                for line in trace.read_text(errors="replace").splitlines()
                if "trace: built-in: " in line]
    assert [f.path for f in result.changed] == ["batches/b-00000.yaml"]
    assert follower.store.get_batch("b-00000").generation == 2  # type: ignore[union-attr]
    cost = follower.source.blobs_read - blobs, follower.store.writes - writes, statements, \
        commands
    follower.store.close()
    return cost


def test_one_file_changed_among_2000_costs_what_it_costs_alone(
        git_repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big_blobs, big_writes, big_sql, big_git = one_edit_costs(git_repo, tmp_path / "big", 2000,
                                                             monkeypatch)
    small_blobs, small_writes, _, small_git = one_edit_costs(
        GitRepo(tmp_path / "small-repo"), tmp_path / "small", 1, monkeypatch)
    assert big_blobs == small_blobs == 1  # the changed file only
    assert big_writes == small_writes > 0  # its spec and event, as in a 1-file repository
    whole_table = [s for s in big_sql if "FROM batches" in s and "WHERE" not in s]
    assert whole_table == []  # no listing of the 2,000 stored batches
    assert not any(c.startswith("git ls-tree") for c in big_git)  # nor of the 2,000 files
    assert sorted(c.split()[1] for c in big_git) == sorted(c.split()[1] for c in small_git)


def test_a_last_commit_missing_from_the_mirror_means_a_full_read(git_repo: GitRepo,
                                                                 tmp_path: Path) -> None:
    """The mirror rebuilt (or the commit rewritten away and collected): the last synced
    commit is unknown there, so the whole tree is read, and a file deleted meanwhile goes."""
    base(git_repo)
    follower = Follower(git_repo, tmp_path / "follower")
    follower.sync()
    git_repo.remove("batches/b.yaml")
    git_repo.write("batches/e.yaml", batch_doc([item(5)]))
    git_repo.commit("one deleted, one added")
    follower.source = GitSource(str(git_repo.path), "main", tmp_path / "another-mirror")
    follower.last = "0" * 40  # a commit no mirror has
    assert follower.sync().full
    assert follower.view() == from_scratch(git_repo, tmp_path / "fresh")


def test_one_new_commit_reads_as_a_range_of_several_does(git_repo: GitRepo,
                                                        tmp_path: Path) -> None:
    """The usual push (one commit on the last synced one) takes each file's revision and
    the commit's author from the commit itself; a range of commits from `git log`: the
    same files, revisions, times and authors."""
    base(git_repo)
    start = git_repo.git("rev-parse", "HEAD")
    git_repo.write("README.md", "not relevant\n")
    middle = git_repo.commit("docs only")
    git_repo.write("batches/a.yaml", batch_doc([item(0), item(1)]))
    git_repo.remove("batches/b.yaml")
    git_repo.commit("edit a, delete b: a subject with <angle> brackets")
    one = GitSource(str(git_repo.path), "main", tmp_path / "one").sync(middle)
    several = GitSource(str(git_repo.path), "main", tmp_path / "several").sync(start)
    assert not one.full and not several.full
    assert one.changed == several.changed and len(one.changed) == 2
    assert one.authors == several.authors and len(one.authors) == 1
