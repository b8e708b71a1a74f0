"""A large commit is applied a slice a pass (`CommitApply`, issue 13): its first batches run
while the rest of its files are applied, what only the whole commit decides (deletions,
the synced-commit marker) waits for the last slice, and a kill between slices applies no
file twice and runs no item twice.

Real parts: Git repositories committed by the test, shell commands as the jobs (each
appends its item's id to a file), `batchq reconcile` in a process of its own for the kill.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState
from reconciler.source.sync import SLICE_FILES
from reconciler.store.backends import BackendSettings, open_store
from reconciler.store.base import ReadStore
from tests.fixtures import GitRepo, batch_doc, batchq, logging_profile_doc, queue_doc

LARGE = 2 * SLICE_FILES + 5  # batch files: three slices


def logging_profile(repo: GitRepo, runs: Path, slots: int = 4) -> None:
    """Jobs that append their item's id to `runs`, `slots` at a time."""
    repo.write("profiles/test.yaml", logging_profile_doc(runs))
    repo.write("queue.yaml", queue_doc(maxActiveJobs=slots, maxDeletesPerSync=5))


def one_item_batch(repo: GitRepo, path: str, name: str) -> None:
    repo.write(path, {**batch_doc([{"id": name, "url": f"http://127.0.0.1/{name}"}]),
                      "metadata": {"name": name}})


def large_commit(repo: GitRepo, names: list[str]) -> str:
    for name in names:
        one_item_batch(repo, f"batches/{name}.yaml", name)
    return repo.commit(f"{len(names)} batches")


def applied(store: ReadStore) -> Counter[str]:
    """SpecApplied events by batch: a file applied twice would show twice."""
    return Counter(b.name for b in store.list_batches() for e in store.list_events(b.name)
                   if e.reason == "SpecApplied")


def ran(runs: Path) -> Counter[str]:
    return Counter(runs.read_text().split()) if runs.exists() else Counter()


def test_a_large_commits_first_batches_run_while_the_rest_are_applied(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """A commit of three slices: a pass that had started jobs came before it was whole
    (the marker still short of it, batches of later slices not yet stored); each pass
    stepped the batches its slice applied (no full walk needed); in the end each file was
    applied once and each item ran once."""
    runs = tmp_path / "runs"
    logging_profile(git_repo, runs)
    names = [f"b-{n:03d}" for n in range(LARGE)]
    head = large_commit(git_repo, names)
    seen: list[tuple[int, str, int]] = []  # per pass: batches stored, marker, jobs started
    unseen: list[str] = []  # batches a pass ended without having stepped

    def look(rec: Reconciler) -> None:
        batches = rec.store.list_batches()
        started = sum(1 for j in rec.store.list_jobs() if j.state != JobState.PENDING)
        seen.append((len(batches), rec.store.load_sync_state().synced_commit or "", started))
        unseen.extend(b.name for b in batches if b.status.observed_generation != b.generation)

    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state"))
    try:
        rec.run_until_idle(timeout=120, on_pass=look)
        assert seen[0][:2] == (SLICE_FILES, "")  # the first pass: the first slice alone
        assert any(stored < LARGE and marker != head and started > 0
                   for stored, marker, started in seen), seen
        assert unseen == []  # each slice's batches are stepped in the pass that applied it
        assert rec.store.load_sync_state().synced_commit == head
        assert {str(b.status.state) for b in rec.store.list_batches()} == {"Completed"}
        assert applied(rec.store) == Counter(names)  # each file applied once
    finally:
        rec.close()
    assert ran(runs) == Counter(names)  # each item ran once


def test_reconcile_once_applies_a_large_commit_whole(git_repo: GitRepo, tmp_path: Path) -> None:
    """`reconcile --once` takes a pass for each slice: a second `--once` never starts the
    same commit over (it would apply the first slice again and again)."""
    logging_profile(git_repo, tmp_path / "runs")
    head = large_commit(git_repo, [f"b-{n:03d}" for n in range(LARGE)])
    state = tmp_path / "state"
    once = batchq("reconcile", "--repo", str(git_repo.path), "--branch", git_repo.branch,
                  "--state", str(state), "--once")
    assert once.returncode == 0, once.stderr
    store = open_store(BackendSettings(backend="local", state_dir=state))
    try:
        assert store.load_sync_state().synced_commit == head
        assert len(store.list_batches()) == LARGE
    finally:
        store.close()


def test_a_kill_between_slices_applies_no_file_twice_and_runs_no_item_twice(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """Killed after the third of four slices committed (the first slice's batches admitted
    and their jobs made): the marker is not at the commit, so the restart applies the whole
    diff again, and what was applied already changes nothing: one SpecApplied a batch, one
    run an item, every batch Completed."""
    runs, state = tmp_path / "runs", tmp_path / "state"
    logging_profile(git_repo, runs)
    names = [f"b-{n:03d}" for n in range(3 * SLICE_FILES + 5)]
    head = large_commit(git_repo, names)
    args = ("reconcile", "--repo", str(git_repo.path), "--branch", git_repo.branch,
            "--state", str(state), "--until-idle", "--timeout", "120")
    killed = batchq(*args, failpoint="after-slice:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(BackendSettings(backend="local", state_dir=state))
    try:
        assert store.load_sync_state().synced_commit is None
        assert len(store.list_batches()) == 3 * SLICE_FILES
        assert store.list_jobs(), "the first slice's batches had jobs before the kill"
    finally:
        store.close()
    done = batchq(*args)
    assert done.returncode == 0, done.stderr
    store = open_store(BackendSettings(backend="local", state_dir=state))
    try:
        assert store.load_sync_state().synced_commit == head
        assert {str(b.status.state) for b in store.list_batches()} == {"Completed"}
        assert applied(store) == Counter(names)
    finally:
        store.close()
    assert ran(runs) == Counter(names)


def test_a_move_and_a_deletion_in_a_large_commit_wait_for_its_last_slice(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """One commit moves a batch's file to a path in its last slice, deletes another batch's
    file, and adds two slices of batches. Between the slices neither batch is deleted (a
    deletion is decided by the whole commit); once it is whole, the moved batch is the
    same batch at its new path (not run again) and the other is Deleted."""
    runs = tmp_path / "runs"
    logging_profile(git_repo, runs)
    one_item_batch(git_repo, "batches/a-keep.yaml", "keep")
    one_item_batch(git_repo, "batches/a-gone.yaml", "gone")
    git_repo.commit("two batches")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state"))
    try:
        rec.run_until_idle(timeout=60)
        keep = rec.store.get_batch("keep")
        assert keep is not None and str(keep.status.state) == "Completed"
        git_repo.git("mv", "batches/a-keep.yaml", "batches/zz-keep.yaml")
        git_repo.remove("batches/a-gone.yaml")
        names = [f"n-{n:03d}" for n in range(2 * SLICE_FILES)]
        head = large_commit(git_repo, names)
        between: list[dict[str, Any]] = []

        def look(r: Reconciler) -> None:
            if r.store.load_sync_state().synced_commit != head:
                between.append({n: str(b.status.state) if (b := r.store.get_batch(n)) else None
                                for n in ("keep", "gone")})

        rec.request_sync()
        rec.run_until_idle(timeout=120, on_pass=look)
        assert between, "the commit was applied in one pass"
        assert all(seen == {"keep": "Completed", "gone": "Completed"} for seen in between)
        moved = rec.store.get_batch("keep")
        assert moved is not None and moved.source_path == "batches/zz-keep.yaml"
        assert moved.uid == keep.uid and str(moved.status.state) == "Completed"
        gone = rec.store.get_batch("gone")
        assert gone is not None and str(gone.status.state) == "Deleted"
    finally:
        rec.close()
    assert ran(runs) == Counter(["keep", "gone", *names])  # keep ran once, before the move
