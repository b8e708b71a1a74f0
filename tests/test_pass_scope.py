"""What one pass of the loop does (issue 13 goal 2): it fetches Git only when a sync is due,
steps only the batches that can change, and the local runner records jobs as they exit.

Real parts: Git repositories committed by the test, the real worker or a shell command as
the job, a payload server on loopback, `batchq reconcile` in processes of its own for the
crash; the counts come from the heartbeat file the loop writes after every pass and sync.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState
from reconciler.store.backends import BackendSettings, open_store
from reconciler.store.base import ReadStore
from reconciler.store.local.sqlite import SqliteStore
from reconciler.support.heartbeat import read_heartbeat
from tests.fixtures import (
    GitRepo,
    PayloadServer,
    batch_doc,
    batchq,
    logging_profile_doc,
    profile_doc,
    queue_doc,
    wait_for,
)


def state_of(store: ReadStore, batch: str) -> str | None:
    b = store.get_batch(batch)
    return None if b is None else str(b.status.state)


def submit(repo: GitRepo, payloads: PayloadServer, name: str, n: int,
           gated: frozenset[int] = frozenset()) -> None:
    items = [payloads.add(f"{name}-{i}", f"{name} {i}\n".encode(), gated=i in gated)
             for i in range(n)]
    repo.write(f"batches/{name}.yaml", {**batch_doc(items), "metadata": {"name": name}})


@pytest.fixture
def loop_repo(git_repo: GitRepo, payloads: PayloadServer) -> GitRepo:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=2))
    return git_repo


class Loop:
    """`run_forever` in a thread, as `batchq run` runs it (the reconciler is made and
    closed in that thread: its SQLite connection is that thread's); the test reads the
    state dir through a store of its own (as `batchq status` does)."""

    def __init__(self, repo: GitRepo, state: Path, interval: float) -> None:
        self.state_dir = state
        self.settings = Settings(repo=str(repo.path), branch=repo.branch, state_dir=state,
                                 interval=interval)
        self.stop = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.started.wait(30), "the reconciler did not start"
        self.reader = open_store(BackendSettings(backend="local", state_dir=state))

    def _run(self) -> None:
        rec = Reconciler(self.settings)
        self.started.set()
        try:
            rec.run_forever(self.stop)
        finally:
            rec.close()

    def state(self, batch: str) -> str | None:
        return state_of(self.reader, batch)

    def syncs(self) -> int:
        return int(read_heartbeat(self.state_dir)["syncs"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.reader.close()


@pytest.fixture
def loop_factory(tmp_path: Path) -> Iterator[Any]:
    loops: list[Loop] = []

    def make(repo: GitRepo, interval: float) -> Loop:
        loops.append(Loop(repo, tmp_path / "state", interval))
        return loops[-1]

    yield make
    for loop in loops:
        loop.close()


def test_passes_woken_by_jobs_do_not_fetch(loop_repo: GitRepo, payloads: PayloadServer,
                                           tmp_path: Path) -> None:
    """Six jobs, two at a time: the passes that record them are woken by the jobs, and only
    the first pass fetches (the interval is an hour). Before: one fetch every pass."""
    submit(loop_repo, payloads, "six", 6)
    loop_repo.commit("six items")
    rec = Reconciler(Settings(repo=str(loop_repo.path), branch=loop_repo.branch,
                              state_dir=tmp_path / "state", interval=3600))
    try:
        passes = rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "six") == "Completed"
    finally:
        rec.close()
    beat = read_heartbeat(tmp_path / "state")
    assert passes >= 3 and beat["passes"] == passes
    assert beat["syncs"] == 1


def test_run_until_idle_always_sees_what_was_committed_before_it(
        loop_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """The first pass of every `run_until_idle` syncs, however recent the last sync."""
    submit(loop_repo, payloads, "first", 1)
    loop_repo.commit("first")
    rec = Reconciler(Settings(repo=str(loop_repo.path), branch=loop_repo.branch,
                              state_dir=tmp_path / "state", interval=3600))
    try:
        rec.run_until_idle(timeout=120)
        submit(loop_repo, payloads, "second", 1)
        loop_repo.commit("second")
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "second") == "Completed"
    finally:
        rec.close()


def test_a_commit_made_while_jobs_run_is_seen(loop_repo: GitRepo, payloads: PayloadServer,
                                              loop_factory: Any) -> None:
    """Jobs keep waking the loop (one item is held by its server, the others finish one by
    one), yet a commit made meanwhile is synced once the interval has passed: the new batch
    shows up while the first is still running."""
    submit(loop_repo, payloads, "running", 6, gated=frozenset({0}))
    loop_repo.commit("running")
    loop = loop_factory(loop_repo, 0.5)
    wait_for(lambda: loop.state("running") == "Processing", timeout=60,
             what="the first batch processing")
    submit(loop_repo, payloads, "later", 1)
    loop_repo.commit("later, while the first runs")
    wait_for(lambda: loop.state("later") is not None, timeout=60,
             what="the commit made while jobs run, synced")
    assert loop.state("running") == "Processing"  # its held job still runs
    payloads.gates["running-0"].set()
    wait_for(lambda: loop.state("running") == loop.state("later") == "Completed",
             timeout=60, what="both batches completed")
    assert loop.syncs() >= 2


def test_a_finished_job_wakes_the_loop_at_once(loop_repo: GitRepo, payloads: PayloadServer,
                                               loop_factory: Any) -> None:
    """With an interval of an hour, a batch whose jobs run one after another still
    completes: each job's exit starts the next pass."""
    loop_repo.write("queue.yaml", queue_doc(maxActiveJobs=1))
    submit(loop_repo, payloads, "serial", 3)
    loop_repo.commit("three items, one at a time")
    loop = loop_factory(loop_repo, 3600)
    wait_for(lambda: loop.state("serial") == "Completed", timeout=60,
             what="the batch completed without waiting for the interval")
    assert loop.syncs() == 1


def test_a_pass_steps_the_batch_whose_job_finished_not_the_settled_ones(
        loop_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """Five settled batches and a new one: after the pass that synced the new commit (a
    full walk), each pass steps only the new batch, the one whose jobs change."""
    for n in range(5):
        submit(loop_repo, payloads, f"old-{n}", 1)
    loop_repo.commit("five small batches")
    rec = Reconciler(Settings(repo=str(loop_repo.path), branch=loop_repo.branch,
                              state_dir=tmp_path / "state", interval=3600, resync=3600))
    try:
        rec.run_until_idle(timeout=120)
        submit(loop_repo, payloads, "new", 4)
        loop_repo.commit("a new batch")
        seen: list[tuple[bool, int]] = []
        rec.run_until_idle(timeout=120, on_pass=lambda r: seen.append(
            (r.controller.last_pass.full, r.controller.last_pass.steps)))
        assert state_of(rec.store, "new") == "Completed"
        assert {str(b.status.state) for b in rec.store.list_batches()} == {"Completed"}
    finally:
        rec.close()
    assert seen[0] == (True, 6), seen  # the commit: every batch looked at once
    later = seen[1:]
    assert not any(full for full, _ in later) and max(steps for _, steps in later) == 1, seen
    assert sum(steps for _, steps in later) >= 2, seen  # jobs ended, then the report


def three_logged_jobs(git_repo: GitRepo, tmp_path: Path, slots: int,
                      after: str = "") -> tuple[str, ...]:
    """A batch of three jobs, `slots` at a time, each appending its item's id to
    `tmp_path/runs` (then running `after`); the `batchq reconcile` arguments that settle it."""
    git_repo.write("profiles/test.yaml", logging_profile_doc(tmp_path / "runs", after))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=slots))
    items = [{"id": f"item-{i}", "url": f"http://127.0.0.1/{i}"} for i in range(3)]
    git_repo.write("batches/b.yaml", {**batch_doc(items), "metadata": {"name": "b"}})
    git_repo.commit(f"three jobs, {slots} at a time")
    return ("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "state"),
            "--until-idle", "--timeout", "60")


def killed_at(args: tuple[str, ...], failpoint: str, runs: Path, started: int) -> None:
    """Run until the fail point kills the reconciler; wait for the jobs it had started."""
    killed = batchq(*args, failpoint=failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) == started, timeout=30,
             what=f"the {started} jobs the killed reconciler started")


def restart_completes_each_item_once(args: tuple[str, ...], state: Path, runs: Path) -> None:
    """The restarted reconciler settles the batch, every job Completed, each item run once."""
    done = batchq(*args)
    assert done.returncode == 0, done.stderr
    store = open_store(BackendSettings(backend="local", state_dir=state))
    try:
        assert state_of(store, "b") == "Completed"
        assert {str(j.state) for j in store.list_jobs("b")} == {"Completed"}
    finally:
        store.close()
    assert sorted(runs.read_text().split()) == ["item-0", "item-1", "item-2"]  # once each


@pytest.mark.parametrize("runs_for", ["0", "2"])
def test_a_job_started_just_before_a_kill_is_adopted_not_run_twice(
        git_repo: GitRepo, tmp_path: Path, runs_for: str) -> None:
    """The runner starts a round's jobs, then records them in one commit. Killed between
    the two, the restarted reconciler finds each job's shim (still running, or finished
    with its result) and records that instead of running the attempt again."""
    args = three_logged_jobs(git_repo, tmp_path, slots=3, after=f"; sleep {runs_for}")
    killed_at(args, "after-jobs-spawned:1", tmp_path / "runs", started=3)
    restart_completes_each_item_once(args, tmp_path / "state", tmp_path / "runs")


def test_a_kill_before_a_round_commits_loses_neither_the_exit_nor_the_start_in_it(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """A round records the exits since the last one and the starts they make room for in
    one transaction. With one slot, the second job's start follows the first job's exit in
    one round; killed after that start and before the commit, the store has neither. The
    restarted reconciler reads the first job's result from its job dir and adopts the
    second's shim: each item runs once and the batch completes."""
    args = three_logged_jobs(git_repo, tmp_path, slots=1)
    killed_at(args, "after-jobs-spawned:2", tmp_path / "runs", started=2)
    store = open_store(BackendSettings(backend="local", state_dir=tmp_path / "state"))
    try:  # the round's exit and its start died with it
        assert {j.item: str(j.state) for j in store.list_jobs("b")} == {
            "item-0": "Processing", "item-1": "Pending", "item-2": "Pending"}
    finally:
        store.close()
    restart_completes_each_item_once(args, tmp_path / "state", tmp_path / "runs")


def test_a_negative_resync_is_refused_with_what_to_give(git_repo: GitRepo,
                                                         tmp_path: Path) -> None:
    bad = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                 "--once", "--resync", "-5")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert ("batchq: --resync (or BATCHQ_RESYNC) -5 is negative; give the seconds between"
            " passes that step every batch (0: the default, 10 x interval)") in bad.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was touched


def test_a_pass_with_no_room_for_a_job_steps_no_batch_that_only_waits_for_room(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """Two Processing batches, one job slot, held by the older batch's job, and the one
    Job made ahead, the younger batch's first, waiting for it: once the younger one has
    loaded its items, a pass steps neither (only a job's change can give either something
    to do); when that job ends, the older batch observes it and the younger one's Job
    takes the freed slot, and both complete."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=1, maxActiveBatches=2))
    submit(git_repo, payloads, "first", 1, gated=frozenset({0}))
    git_repo.commit("the first batch, its one item served when the test says")
    submit(git_repo, payloads, "second", 2)
    git_repo.commit("a second batch behind it")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state", interval=3600, resync=3600,
                              jobs_ahead=1))  # one Job ahead per slot: no room left
    try:
        rec.run_pass()  # the commit: a full walk admits both
        wait_for(lambda: (rec.run_pass(sync=False) or True) and state_of(
            rec.store, "second") == "Processing" and rec.store.count_active_jobs() == 2
            and running(rec) == 1,
            timeout=60, what="both batches Processing, the first one's job running")
        steps = []
        for _ in range(3):  # the first may still observe the job's start
            rec.run_pass(sync=False)
            steps.append((rec.controller.last_pass.full, rec.controller.last_pass.steps))
        assert steps[1:] == [(False, 0), (False, 0)], steps
        assert [(j.item, str(j.state)) for j in rec.store.list_jobs("second")] == [
            ("second-0", "Pending")]  # made ahead; second-1 waits for room
        second = rec.store.get_batch("second")  # admitted: its items loaded all the same
        assert second is not None and second.status.items_loaded
        assert second.status.item_count == 2
        payloads.release("first-0")
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "first") == state_of(rec.store, "second") == "Completed"
    finally:
        rec.close()


def test_a_pass_reads_the_batches_that_can_act_not_every_active_one(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """Twelve batches admitted, one job slot and no Job made ahead: the first batch's job
    runs (its payload held back), the other eleven have loaded their items and wait for
    room. A pass then reads no batch at all (before: every active batch, each pass: 12
    status texts parsed, 200 at maxActiveBatches 200); when the job ends, the pass reads
    the batch whose job changed and the one the freed room is for, in queue order, not
    the ten behind it; and every batch completes, each item run once."""
    names = [f"b{i:02d}" for i in range(12)]
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=1, maxActiveBatches=12))
    for i, name in enumerate(names):
        submit(git_repo, payloads, name, 1, gated=frozenset({0}) if i == 0 else frozenset())
    git_repo.commit("twelve batches, the first one's item served when the test says")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state", interval=3600, resync=3600,
                              jobs_ahead=0))
    assert isinstance(rec.store, SqliteStore)
    try:
        rec.run_pass()  # the commit: a full walk admits all twelve
        wait_for(lambda: (rec.run_pass(sync=False) or True) and running(rec) == 1 and all(
            b.status.items_loaded for b in rec.store.list_batches()),
            timeout=60, what="the first job running, every batch's items loaded")
        rec.run_pass(sync=False)  # the job's start observed
        reads = []
        for _ in range(2):
            before = rec.store.batch_reads
            rec.run_pass(sync=False)
            reads.append((rec.controller.last_pass.full, rec.store.batch_reads - before))
        assert reads == [(False, 0), (False, 0)], reads
        rec.wake.clear()
        payloads.release("b00-0")
        wait_for(lambda: rec.wake.wait(0.1), timeout=60, what="the first job to end")
        before = rec.store.batch_reads
        rec.run_pass(sync=False)
        assert rec.store.batch_reads - before == 2  # b00, whose job ended, and b01
        assert len(rec.store.list_jobs("b01")) == 1  # made with the room, started
        assert all(not rec.store.list_jobs(n) for n in names[2:])  # unread, they wait
        rec.run_until_idle(timeout=120)
        assert {state_of(rec.store, n) for n in names} == {"Completed"}
        assert sorted(payloads.requests) == sorted(f"{n}-0" for n in names)  # each once
    finally:
        rec.close()


def running(rec: Reconciler) -> int:
    """The local runner's jobs running now."""
    assert isinstance(rec.store, SqliteStore)
    return rec.store.count_jobs_in_state(JobState.PROCESSING)


def one_job_running(git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path,
                    name: str) -> Reconciler:
    """Three job slots and batch `name` of one item, whose job runs until the test
    releases its payload (`{name}-0`); no resync or sync comes by itself."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=3, maxActiveBatches=2))
    submit(git_repo, payloads, name, 1, gated=frozenset({0}))
    git_repo.commit("one batch, its one item served when the test says")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state", interval=3600, resync=3600))
    try:
        rec.run_pass()
        wait_for(lambda: (rec.run_pass(sync=False) or True) and running(rec) == 1,
                 timeout=60, what=f"{name}'s one job running")
    except BaseException:
        rec.close()
        raise
    return rec


def test_a_pass_with_room_steps_no_batch_whose_every_item_has_its_job(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """Three job slots, one batch of one item whose job runs (its payload held back): the
    passes that follow have room to spare and step nothing, since only that job's change
    can give the batch something to do (before: every pass with room stepped it, 10
    steps a job at 1,000 batches of 10); when the job ends, the batch completes."""
    rec = one_job_running(git_repo, payloads, tmp_path, "only")
    try:
        steps = []
        for _ in range(3):  # the first may still observe the job's start
            rec.run_pass(sync=False)
            steps.append((rec.controller.last_pass.full, rec.controller.last_pass.steps))
        assert steps[1:] == [(False, 0), (False, 0)], steps
        payloads.release("only-0")
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "only") == "Completed"
    finally:
        rec.close()


def test_a_running_job_an_operator_deletes_is_made_again_by_the_next_pass(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """A deleted row has no change number: `delete_job` tells the next pass itself, which
    makes the same attempt's Job again (adopting the shim still running), without waiting
    for the resync; the item keeps its one attempt."""
    rec = one_job_running(git_repo, payloads, tmp_path, "op")
    try:
        [job] = [j.name for j in rec.store.list_jobs("op")]
        assert isinstance(rec.store, SqliteStore)
        rec.store.delete_job(job)
        assert rec.store.list_jobs("op") == []
        rec.run_pass(sync=False)
        assert not rec.controller.last_pass.full
        assert [j.name for j in rec.store.list_jobs("op")] == [job]
        payloads.release("op-0")
        rec.run_until_idle(timeout=120)
        assert state_of(rec.store, "op") == "Completed"
        assert [s.attempts for s in rec.store.list_items("op")] == [1]
    finally:
        rec.close()


def test_a_batch_admitted_while_every_slot_is_taken_loads_its_items_at_once(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """One job slot, held by the first batch's job, and the Job made ahead for it, the
    first batch's second; the second batch fails at once (its manifest is not there),
    which admits the third while there is no room: the third loads its items in the
    passes that follow (its counts show, a manifest URL would be downloaded), not only
    once there is room; then everything settles."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", queue_doc(maxActiveJobs=1, maxActiveBatches=2))
    submit(git_repo, payloads, "first", 2, gated=frozenset({0, 1}))
    git_repo.commit("the first batch, its two items served when the test says")
    git_repo.write("batches/second.yaml", {**batch_doc(url=f"{payloads.base}missing.txt"),
                                           "metadata": {"name": "second"}})
    git_repo.commit("a second batch whose manifest is not there")
    submit(git_repo, payloads, "third", 2)
    git_repo.commit("a third batch, waiting in the queue")
    rec = Reconciler(Settings(repo=str(git_repo.path), branch=git_repo.branch,
                              state_dir=tmp_path / "state", interval=3600, resync=3600,
                              jobs_ahead=1))  # one Job ahead per slot: no room left

    def third_loaded() -> bool:
        rec.run_pass(sync=False)
        third = rec.store.get_batch("third")
        return third is not None and third.status.items_loaded

    try:
        rec.run_pass()
        wait_for(third_loaded, timeout=60, what="the third batch's items loaded")
        assert state_of(rec.store, "second") == "Failed"
        assert rec.store.list_jobs("third") == [] and rec.store.count_active_jobs() == 2
        payloads.release("first-0", "first-1")
        rec.run_until_idle(timeout=120)
        assert [state_of(rec.store, b) for b in ("first", "third")] == ["Completed"] * 2
    finally:
        rec.close()
