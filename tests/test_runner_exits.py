"""The local runner learns of its jobs' exits from one thread that waits on all of them
(pidfds in one epoll set), not from a thread per job nor from its periodic scan; and its
jobs run at a lower CPU priority than the reconciler, so a busy machine does not starve
the loop that records them."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import JobState
from reconciler.store.local.exits import ExitWaiter
from tests.fixtures import GitRepo, batch_doc, batchq, wait_for

NO_SCAN = 3600.0  # the runner's periodic scan never comes within a test


def job_repo(repo: GitRepo, command: list[str], items: int, slots: int) -> None:
    repo.write("profiles/test.yaml", {
        "apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
        "spec": {"job": {"command": command}, "allowedUrlPrefixes": ["http://127.0.0.1/"],
                 "notification": {"from": "batchq@example.org"}}})
    repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                              "spec": {"maxActiveJobs": slots}})
    doc = batch_doc([{"id": f"item-{i}", "url": f"http://127.0.0.1/{i}"}
                     for i in range(items)])
    repo.write("batches/b.yaml", {**doc, "metadata": {"name": "b"}})
    repo.commit(f"{items} jobs")


def reconciler(repo: GitRepo, state: Path) -> Reconciler:
    """A reconciler whose runner never scans after its first round: only the reports of
    exits can record a job."""
    rec = Reconciler(Settings(repo=str(repo.path), branch=repo.branch, state_dir=state,
                              interval=3600))
    assert rec.runner is not None
    rec.runner.scan_seconds = NO_SCAN
    return rec


def states(rec: Reconciler) -> dict[str, str]:
    return {j.item: str(j.state) for j in rec.store.list_jobs("b")}


def test_many_jobs_ending_at_once_are_recorded_without_a_scan_by_one_thread(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """24 jobs run at once, each waiting for a gate; the gate opens and all end together.
    They are recorded although the runner never scans, and running them took no thread per
    job (before: one waiting thread per running job, 24 more threads)."""
    jobs, gate = 24, tmp_path / "gate"
    job_repo(git_repo, ["/bin/sh", "-c", f'until [ -e "{gate}" ]; do sleep 0.05; done'],
             items=jobs, slots=jobs)
    before = threading.active_count()
    seen: dict[str, int] = {}

    def open_gate_once_all_run(rec: Reconciler) -> None:
        if not gate.exists() and list(states(rec).values()).count("Processing") == jobs:
            seen["threads"] = threading.active_count()
            gate.touch()

    rec = reconciler(git_repo, tmp_path / "state")
    try:
        rec.run_until_idle(timeout=120, on_pass=open_gate_once_all_run)
        assert set(states(rec).values()) == {"Completed"}, states(rec)
    finally:
        rec.close()
    assert "threads" in seen, "the 24 jobs never ran at once"
    assert seen["threads"] - before <= 4, seen  # the loop's own threads, not one per job


def test_a_round_with_nothing_to_record_or_start_opens_no_transaction(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """The runner's rounds (two a pass, one between steps after an exit) take the store's
    write lock only to record an exit or a start: with both slots taken and no exit, and
    again once every job is done, a round writes and commits nothing (it used to open an
    empty transaction for the exits on every round, and another for the starts when a
    slot was free: four statements and a commit each); it reads once, the jobs to start
    with the slots the running ones leave (it used to count the running ones first)."""
    gate = tmp_path / "gate"
    job_repo(git_repo, ["/bin/sh", "-c", f'until [ -e "{gate}" ]; do sleep 0.05; done'],
             items=3, slots=2)
    rec = reconciler(git_repo, tmp_path / "state")
    statements: list[str] = []

    def locks() -> list[str]:
        return [s for s in statements if s.startswith(("BEGIN", "COMMIT", "PRAGMA synch"))]

    try:
        wait_for(lambda: (rec.run_pass() or True)
                 and list(states(rec).values()).count("Processing") == 2,
                 timeout=60, what="both slots taken")
        rec.store.db.set_trace_callback(statements.append)
        assert rec.tick_jobs() is False
        assert len(statements) == 1 and not locks(), statements
        gate.touch()
        rec.run_until_idle(timeout=120)
        assert states(rec) == dict.fromkeys(("item-0", "item-1", "item-2"), "Completed")
        assert locks(), "the exits and the third start were committed"
        statements.clear()
        assert rec.tick_jobs() is False
        assert len(statements) == 1 and not locks(), statements
    finally:
        rec.store.db.set_trace_callback(None)
        rec.close()


def test_a_job_whose_shim_is_killed_is_run_again_at_once_and_a_signalled_command_fails(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """The first try of item-0 kills its own shim with SIGKILL (no result left): the exit is
    reported, the runner looks at once and runs the same attempt again, which completes.
    item-1's command dies of SIGTERM: the shim records 143 and the job fails."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (f'mark="{marks}/$BATCHQ_ITEM_ID"; echo run >> "$mark"\n'
              'case "$BATCHQ_ITEM_ID" in\n'
              '  item-0) [ "$(wc -l < "$mark")" -gt 1 ] || kill -KILL "$PPID"; sleep 1 ;;\n'
              '  item-1) kill -TERM $$ ;;\n'
              'esac\n')
    job_repo(git_repo, ["/bin/sh", "-c", script], items=2, slots=2)
    state = tmp_path / "state"
    rec = reconciler(git_repo, state)
    try:
        rec.run_until_idle(timeout=120)
        jobs = {j.item: j for j in rec.store.list_jobs("b") if j.attempt == 1}
    finally:
        rec.close()
    assert (marks / "item-0").read_text().split() == ["run", "run"]  # the same attempt, twice
    assert jobs["item-0"].state == JobState.COMPLETED
    assert jobs["item-1"].state == JobState.FAILED
    assert (state / "jobs" / jobs["item-1"].name / "rc").read_text() == "143\n"  # 128 + 15


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "thread-per-child"])
def test_the_waiter_reaps_and_reports_every_child_once(pidfd: bool) -> None:
    """20 children end at once (half of them killed by SIGKILL): each is reported once and
    reaped (no zombie left), with pidfds and with the fallback of a thread per child."""
    waiter = ExitWaiter(pidfd=pidfd)
    reported: list[int] = []
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            reported.append(n)

    procs = [subprocess.Popen(["/bin/sh", "-c", "read line"], stdin=subprocess.PIPE)
             for _ in range(20)]
    for n, proc in enumerate(procs):
        waiter.watch(proc, functools.partial(report, n))
    assert waiter.uses_pidfds == pidfd
    for n, proc in enumerate(procs):
        if n % 2:
            proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()  # `read` ends: the shell exits 1
    wait_for(lambda: len(reported) == len(procs), timeout=30, what="every exit reported")
    assert sorted(reported) == list(range(len(procs)))
    assert [p.returncode for p in procs] == [-signal.SIGKILL if n % 2 else 1
                                            for n in range(len(procs))]
    assert not any(Path(f"/proc/{p.pid}").exists() for p in procs)  # reaped: no zombie


# --- niceness ------------------------------------------------------------------------
# The job starts a child, records both pids, and waits for it: the shim, the command and
# the command's child are all the job's processes.
NICE_JOB = ["/bin/sh", "-c", "sleep 120 & echo $$ $! > pids.tmp && mv pids.tmp pids; wait"]


def niceness(pid: int) -> int:
    """Field 19 of /proc/PID/stat (after the command name in parentheses)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def job_pids(state: Path) -> tuple[int, int, int]:
    """The shim, the command and the command's child of the job running NICE_JOB."""
    pids = wait_for(lambda: next(iter((state / "jobs").glob("*/pids")), None), timeout=60,
                    what="the job to start")
    command, child = (int(p) for p in pids.read_text().split())
    return parent(command), command, child


@pytest.fixture
def running_reconciler(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The `batchq run` processes a test starts; they and their jobs end with the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
    for pids in (tmp_path / "state" / "jobs").glob("*/pids"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(os.getpgid(int(pids.read_text().split()[0])), signal.SIGKILL)


@pytest.mark.parametrize("flag,steps", [((), 10), (("--job-nice", "5"), 5),
                                        (("--job-nice", "0"), 0)])
def test_a_running_jobs_processes_are_nicer_than_the_reconciler(
        git_repo: GitRepo, tmp_path: Path, flag: tuple[str, ...], steps: int,
        running_reconciler: list[subprocess.Popen[bytes]]) -> None:
    """By default a job runs 10 steps nicer than the reconciler (`--job-nice N`: N; 0: as
    nice as it): the shim, the command and what the command starts, read from /proc."""
    job_repo(git_repo, NICE_JOB, items=1, slots=1)
    state = tmp_path / "state"
    run = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--repo",
                            str(git_repo.path), "--state", str(state), *flag],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running_reconciler.append(run)
    shim, command, child = job_pids(state)
    own = os.getpriority(os.PRIO_PROCESS, 0)  # the reconciler's, inherited from this test
    assert niceness(run.pid) == own
    assert [niceness(p) for p in (shim, command, child)] == [min(19, own + steps)] * 3


def autogroup(pid: int) -> str | None:
    """The kernel's autogroup of `pid` ("/autogroup-N nice K"); None without autogroup."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except OSError:
        return None


def start_run(repo: GitRepo, state: Path, terminal: int | None = None
              ) -> subprocess.Popen[bytes]:
    """`batchq run` in a session of its own, as a service manager starts it: without a
    controlling terminal, or with `terminal` (a pty's other end) as its one."""
    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--repo", str(repo.path), "--state",
         str(state)], start_new_session=True,
        stdin=subprocess.DEVNULL if terminal is None else terminal,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=None if terminal is None else take_terminal)


def test_a_job_of_a_service_stays_in_its_session_so_the_autogroup_keeps_it_nicer(
        git_repo: GitRepo, tmp_path: Path,
        running_reconciler: list[subprocess.Popen[bytes]]) -> None:
    """Linux's autogroup weighs each session the same, whatever the nice values in it: a
    job in a session of its own would get as much CPU as the reconciler. A reconciler with
    no terminal (a service) keeps its jobs in its session (and autogroup, where the kernel
    has them), each job in a process group of its own that its shim leads."""
    job_repo(git_repo, NICE_JOB, items=1, slots=1)
    state = tmp_path / "state"
    run = start_run(git_repo, state)
    running_reconciler.append(run)
    shim, command, _ = job_pids(state)
    assert os.getsid(shim) == os.getsid(command) == os.getsid(run.pid) == run.pid
    assert os.getpgid(shim) == os.getpgid(command) == shim != run.pid
    assert autogroup(shim) == autogroup(run.pid)
    assert niceness(shim) == min(19, niceness(run.pid) + 10)


def test_a_job_of_a_reconciler_with_a_terminal_gets_a_session_without_it(
        git_repo: GitRepo, tmp_path: Path,
        running_reconciler: list[subprocess.Popen[bytes]]) -> None:
    """Run from a terminal, the reconciler gives each job a session of its own, so that
    no job can read from the terminal (an ssh asking for a password would stop there)."""
    tries = ("if (exec 3</dev/tty) 2>/dev/null; then echo yes; else echo no; fi >tty.tmp"
             " && mv tty.tmp tty; ")
    job_repo(git_repo, [*NICE_JOB[:2], tries + NICE_JOB[2]], items=1, slots=1)
    state = tmp_path / "state"
    leader, follower = os.openpty()
    try:
        run = start_run(git_repo, state, terminal=follower)
        running_reconciler.append(run)
        shim, command, _ = job_pids(state)
        assert os.getsid(run.pid) == run.pid
        assert os.tcgetpgrp(leader) == run.pid  # the terminal is the reconciler's...
        assert os.getsid(shim) == os.getpgid(shim) == os.getsid(command) == shim
        tty = next((state / "jobs").glob("*/tty"))
        assert tty.read_text() == "no\n"  # ...and the job cannot open it
    finally:
        os.close(leader)
        os.close(follower)


@pytest.mark.parametrize("value", ["20", "-1", "ten"])
def test_a_job_niceness_out_of_range_is_refused_with_what_to_give(
        git_repo: GitRepo, tmp_path: Path, value: str) -> None:
    bad = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                 f"--job-nice={value}")
    assert bad.returncode == 2
    want: dict[str, Any] = {
        "20": "argument --job-nice: 20 is not a niceness from 0 to 19: give 0 to run jobs at"
              " the reconciler's priority, up to 19 for the lowest",
        "-1": "argument --job-nice: -1 is not a niceness from 0 to 19: give 0 to run jobs at"
              " the reconciler's priority, up to 19 for the lowest",
        "ten": "argument --job-nice: 'ten' is not a whole number: give 0 to 19"}
    assert want[value] in bad.stderr, bad.stderr
    assert not (tmp_path / "s").exists()
