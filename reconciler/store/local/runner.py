"""Runs the embedded backend's Jobs as local subprocesses: the local "cluster".

Each Job runs under a tiny `/bin/sh` shim, in its own process group, that writes the exit
code to `<jobdir>/rc` when the command ends. The reconciler may be killed at any moment: the shim
outlives it and leaves its result behind, so after a restart a running Job is either still
alive (we wait), finished (we read `rc`), or died without a result (we run the same attempt
again, as the Job controller would restart its pod). Nothing is ever run twice under two
names, and a finished Job's result is never lost.

A job gets what a container gets from the kubelet: its own environment and nothing of the
reconciler's (which may hold SMTP passwords or tokens). It sees PATH, LANG/LC_ALL, HOME
(its job dir), TMPDIR (inside it) and its BATCHQ_* variables (and, for a profile that
stores to S3, the operator's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or
BATCHQ_S3_CREDENTIALS_FILE); its item's credentials, if
any, are in `<jobdir>/credentials` (mode 0600), which the shim removes when the command
ends.

A Job with `activeDeadlineSeconds` that is still running that long after its recorded
first start is stopped as the Job controller and the kubelet stop one: SIGTERM to its
whole process group, SIGKILL to what is left after a short grace, and the Job is Failed
with the reason `DeadlineExceeded`. The start time is in the store, so a restarted
reconciler keeps the deadline of the process it found.

Jobs run at a lower CPU priority than the reconciler (`nice`, 10 by default, as systemd's
`Nice=` for batch services): on a busy machine the loop that records their exits and starts
the next ones is not starved by its own children. For that, a job stays in the reconciler's
session unless the reconciler has a terminal (`own_session_for_jobs`): Linux's autogroup
gives every session an equal share of the CPU whatever the nice values of its processes, so
eight jobs in sessions of their own would leave the reconciler a ninth of the machine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from reconciler.domain.states import JobState
from reconciler.store.base import deadline_message
from reconciler.store.local.exits import WAITER
from reconciler.store.local.sqlite import SqliteStore
from reconciler.support import failpoints
from reconciler.support.jsontext import parse_json
from reconciler.support.nospace import NoSpaceLeft, free_bytes, nearly_full
from reconciler.support.redaction import redact_text

SHIM = (
    'cd "$0" || exit 97; unset OLDPWD PWD; "$@" >stdout 2>stderr </dev/null; rc=$?;'
    ' rm -f credentials; echo $rc >rc.tmp && mv rc.tmp rc'
)
MESSAGE_LIMIT = 1024
INHERITED = ("PATH", "LANG", "LC_ALL")  # what finding programs and decoding text need
# a job that stores to S3 gets the operator's S3 credentials from the reconciler's
# environment (never from the profile, never kept in the store)
S3_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "BATCHQ_S3_CREDENTIALS_FILE")


def job_environment(job_env: dict[str, str], jdir: Path) -> dict[str, str]:
    """The whole environment of a job: the few inherited variables, its home and temp dir
    in its job dir, and its own BATCHQ_* variables."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    if job_env.get("BATCHQ_STORAGE_URL"):
        env.update({name: os.environ[name] for name in S3_CREDENTIALS if name in os.environ})
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.update(HOME=str(jdir), TMPDIR=str(jdir / "tmp"))
    env.update(job_env)
    env["BATCHQ_TERMINATION_LOG"] = str(jdir / "termination-log")
    env["BATCHQ_CREDENTIALS_FILE"] = str(jdir / "credentials")
    return env


def own_session_for_jobs() -> bool:
    """Does a job get a session of its own? It always gets a process group of its
    own (the shim leads it: it is niced, stopped and adopted as one); in a session of its
    own only when the reconciler has a controlling terminal, so that no job can read from
    it (an `ssh` asking for a password fails instead of stopping). A reconciler run as a
    service has none, and its jobs stay in its session: with the kernel's autogroup
    (`kernel.sched_autogroup_enabled`, on in most distributions) each session weighs the
    same in the CPU scheduler, so a job with a session of its own would get as much CPU
    as the whole reconciler, whatever its nice value."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
    except OSError:  # ENXIO: no controlling terminal
        return False
    return True


def job_grouping(own_session: bool) -> dict[str, Any]:
    """The `subprocess.Popen` arguments that group a job's processes: a process group of
    its own that the shim leads, inside a session of its own when `own_session`
    (`own_session_for_jobs`); the benchmarks' bare shim is grouped by the same."""
    return {"start_new_session": True} if own_session else {"process_group": 0}


# SIGTERM to SIGKILL; the kubelet's default is 30 s, but the loop waits for it, so it is short
TERM_GRACE_SECONDS = 2.0
# how often every running job is looked at, beside the exits its waiter reports: jobs a
# killed reconciler left running, and shims that died without a result (the kubelet's relist)
SCAN_SECONDS = 2.0
JOB_NICE = 10  # how much nicer than the reconciler jobs run (0: as nice as it)


class LocalRunner:
    """Starts Pending jobs (up to `parallel` at once, maxActiveJobs; the controller makes
    one more per slot, which waits here for it) and records finished ones.

    A child's exit is reported by the one thread that waits for all of them (exits.py: its
    name on `_exited`, then `wake`), so a round records exactly the jobs that ended instead
    of looking at every running one; a scan every `scan_seconds`, on the first round and
    when a deadline is due covers the rest. The writes of a round's exits and
    starts commit as one transaction, without an fsync of its own
    (`rebuildable_transaction`): a kill before a commit, or a power loss that undoes one,
    loses nothing: the `rc` files stay, and a start finds the shim it made before
    (`_adopt`) or, after a reboot, runs the attempt again. A round with no exit to record
    and nothing to start opens no transaction (most of a pass's rounds)."""

    def __init__(self, store: SqliteStore, jobs_dir: Path, parallel: int = 4,
                 nice: int = JOB_NICE, scan_seconds: float = SCAN_SECONDS) -> None:
        self.store = store
        self.jobs_dir = jobs_dir
        self.parallel = parallel
        self.nice = nice  # jobs' niceness above the reconciler's; 0: the same
        self.scan_seconds = scan_seconds
        self.wake = threading.Event()  # set when a child exits: the loop acts at once
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._exited: queue.SimpleQueue[str] = queue.SimpleQueue()  # children that ended
        self._next_scan = 0.0  # monotonic time of the next scan; 0: the first round scans
        self._next_deadline = 0.0  # epoch time the first running job's deadline passes
        self._grouping = job_grouping(own_session_for_jobs())  # once: a service gains no tty
        store.on_delete_jobs = self.stop_batch  # deleting a batch's jobs stops them

    def job_dir(self, name: str) -> Path:
        return self.jobs_dir / name

    def tick(self) -> bool:
        """One round: record finished jobs, start waiting ones. True if anything changed."""
        changed = False
        if time.monotonic() >= self._next_scan or time.time() >= self._next_deadline:
            changed = self._reap()  # outside a transaction: a stop waits for its grace
            self._next_scan = time.monotonic() + self.scan_seconds
        return self._record_and_start() or changed

    def jobs_ahead_for_every_slot(self) -> bool:
        """Are there Jobs waiting to start (made ahead by the controller) for every slot?
        Then the runner can go on without a pass for a while."""
        return self.store.count_jobs_in_state(JobState.PENDING) >= self.parallel

    def tick_if_exited(self) -> bool:
        """The round between two steps of a pass, when a child has exited since the last
        round: its slot goes to a Job made ahead at once, not at the pass's end (no scan;
        True if anything changed)."""
        return not self._exited.empty() and self._record_and_start()

    def _record_and_start(self) -> bool:
        """Record the exits reported since the last round and start Jobs in the slots they
        and any others leave free, in one transaction: a round is mostly one exit and one
        start, and a commit costs more than either write. What a failed start raised is
        raised after the commit, so the exits, and the starts made before it, are kept."""
        waiting = None if not self._exited.empty() else self.store.jobs_to_start(self.parallel)
        if waiting == []:
            return False  # nothing to record, nothing to start: no transaction
        error: BaseException | None = None
        with self.store.rebuildable_transaction():
            changed = self._record_exits()
            if waiting is None or changed:  # the slots the exits freed
                waiting = self.store.jobs_to_start(self.parallel)
            if waiting:
                started, error = self._start_waiting(waiting)
                if started:  # a kill here: the restarted reconciler adopts them
                    failpoints.hit("after-jobs-spawned")
                for row in waiting:
                    if _overdue(row):
                        self.store.mark_job_failed(row["name"], _deadline_reason(row))
                for name, pid in started:
                    self.store.mark_job_started(name, pid)
                changed = True
        if error is not None:
            raise error
        return changed

    def _start_waiting(self, waiting: list[sqlite3.Row]
                       ) -> tuple[list[tuple[str, int | None]], BaseException | None]:
        """Start the Jobs first in line but those past their deadline (failed by the
        caller); what started (name, pid), and what stopped the starts, if anything did."""
        started: list[tuple[str, int | None]] = []
        try:
            if nearly_full(self.jobs_dir):  # kubelet's DiskPressure: admit none
                raise NoSpaceLeft(self.jobs_dir.parent, f"{free_bytes(self.jobs_dir)} bytes"
                                  " free, too little to start a job")
            for row in waiting:
                if not _overdue(row):
                    spec = parse_json(row["spec_json"])
                    started.append((row["name"], self._start(row, spec)))
                    if seconds := _seconds(spec):  # the round that passes it scans
                        self._next_deadline = min(self._next_deadline,
                                                  (row["started_at"] or time.time())
                                                  + seconds)
        except BaseException as exc:  # the caller records what started, then raises it
            return started, exc
        return started, None

    def _record_exits(self) -> bool:
        """Record the children whose waiters reported them ended; one that left no result
        is left to the scan (at the next round), which runs it again or fails it."""
        changed = False
        while True:
            try:
                name = self._exited.get_nowait()
            except queue.Empty:
                return changed
            if self._children.pop(name, None) is None:  # stopped, or the scan recorded it
                continue
            rc = self._read_rc(name)
            if rc is None:
                self._next_scan = 0.0
                continue
            self.store.mark_job_finished(name, rc, self._message(name, rc))
            changed = True

    def _start(self, row: sqlite3.Row, spec: dict[str, Any]) -> int | None:
        """Run the attempt (its row, read in this round) under the shim; the pid to record.
        A shim this attempt already has (started by a reconciler killed before it recorded
        the start) is adopted, and its result, if it left one, is read by the next scan
        (pid None)."""
        name = row["name"]
        jdir = self.job_dir(name)
        try:
            self._make_job_dir(jdir)
        except FileExistsError:
            if (jdir / "rc").exists() or (adopted := _adopt(jdir)) is not None:
                self._next_scan = 0.0  # not our child: the scan reads its result
                return None if (jdir / "rc").exists() else adopted
            shutil.rmtree(jdir)  # a previous try of this same attempt died without a result
            os.mkdir(jdir)
        os.mkdir(jdir / "tmp")
        userinfo = row["userinfo"]
        if userinfo is not None:
            fd = os.open(jdir / "credentials", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(userinfo)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", SHIM, str(jdir), *spec["command"]],
            env=job_environment(spec["env"], jdir),
            **self._grouping,
            # the command's output goes to the job dir; a job must not hold the reconciler's
            # stdout and stderr open (`batchq reconcile --once | tee` would wait for it)
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.nice:
            lower_priority(proc.pid, self.nice)
        self._children[name] = proc
        WAITER.watch(proc, lambda: self._child_exited(name))
        return proc.pid

    def _make_job_dir(self, jdir: Path) -> None:
        """One mkdir (FileExistsError: a previous try of this attempt left it); the jobs
        dir itself is made by the first start."""
        try:
            os.mkdir(jdir)
        except FileNotFoundError:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            os.mkdir(jdir)

    def _child_exited(self, name: str) -> None:
        """From the waiting thread: the loop records the job at once."""
        self._exited.put(name)
        self.wake.set()

    def _reap(self) -> bool:
        """The scan: every running job looked at (see the class docstring)."""
        changed = False
        self._next_deadline = float("inf")
        for row in self.store.jobs_in_state(JobState.PROCESSING):
            name = row["name"]
            if _deadline(row) and row["started_at"]:
                self._next_deadline = min(self._next_deadline,
                                          row["started_at"] + float(_deadline(row) or 0))
            rc = self._read_rc(name)
            if rc is None:
                if self._running(row):
                    if _overdue(row):
                        self._stop_overdue(row)
                        changed = True
                    continue
                rc = self._read_rc(name)  # it may have finished between the two looks
                if rc is None:
                    if _overdue(row):
                        self.store.mark_job_failed(name, _deadline_reason(row))
                    else:
                        self._rerun(name)
                    changed = True
                    continue
            self.store.mark_job_finished(name, rc, self._message(name, rc))
            self._children.pop(name, None)
            changed = True
        return changed

    def _running(self, row: sqlite3.Row) -> bool:
        """Is the job's shim still running (our child, or one a killed reconciler left)?"""
        child = self._children.get(row["name"])
        if child is not None:
            return child.poll() is None
        return _alive(row["pid"], self.job_dir(row["name"]))

    def _stop_overdue(self, row: sqlite3.Row) -> None:
        """Past its deadline: stop the whole process group, then record why it failed (a
        result it left before the signal, at the last moment, stands)."""
        name = row["name"]
        _stop_group(row["pid"])
        rc = self._read_rc(name)
        if rc is None:
            self.store.mark_job_failed(name, _deadline_reason(row))
        else:
            self.store.mark_job_finished(name, rc, self._message(name, rc))
        self._children.pop(name, None)

    def _rerun(self, name: str) -> None:
        """The shim died without a result (killed, machine reboot): run the attempt again
        (it keeps its first start time, and so its deadline)."""
        self._children.pop(name, None)
        self.store.mark_job_lost(name)

    def _read_rc(self, name: str) -> int | None:
        """The exit code the shim left, if it left one (a plain open: each exit reads it)."""
        try:
            with open(os.path.join(self.jobs_dir, name, "rc"), "rb") as fh:
                return int(fh.read())
        except (FileNotFoundError, ValueError):
            return None

    def _message(self, name: str, rc: int) -> str:
        """The one-line reason: the termination log, else the last line of stderr."""
        if rc == 0:
            return ""
        jdir = self.job_dir(name)
        for fname in ("termination-log", "stderr"):
            try:
                lines = (jdir / fname).read_text(errors="replace").strip().splitlines()
            except FileNotFoundError:
                continue
            if lines:
                return redact_text(lines[-1])[:MESSAGE_LIMIT]
        return f"exited with code {rc}"

    def stop_batch(self, batch: str) -> None:
        """Kill every running job of a batch whose jobs are being deleted, and remove
        their job dirs (the store deletes the rows), as the Job controller does."""
        names = [j.name for j in self.store.list_jobs(batch)]
        for row in self.store.jobs_in_state(JobState.PROCESSING):
            if row["batch"] != batch:
                continue
            if row["pid"] and _alive(row["pid"], self.job_dir(row["name"])):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(row["pid"], signal.SIGKILL)
            self._children.pop(row["name"], None)
        for name in names:
            shutil.rmtree(self.job_dir(name), ignore_errors=True)

def _deadline(row: sqlite3.Row) -> int | None:
    return _seconds(parse_json(row["spec_json"]))


def _seconds(spec: dict[str, Any]) -> int | None:
    """The job's activeDeadlineSeconds, None when it has none."""
    seconds = spec.get("activeDeadlineSeconds")
    return int(seconds) if seconds else None


def _overdue(row: sqlite3.Row) -> bool:
    """Has the job been active for its whole deadline, counted from its first start? (A
    job never started is not: its spec is not parsed, as most that wait have not.)"""
    started = row["started_at"]
    if not started:
        return False
    seconds = _deadline(row)
    return bool(seconds and time.time() - started >= seconds)


def _deadline_reason(row: sqlite3.Row) -> str:
    seconds = _deadline(row)
    assert seconds is not None
    return deadline_message(seconds)


def _stop_group(pgid: int) -> None:
    """SIGTERM the process group (the shim leads it), SIGKILL it if it outlives the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    until = time.monotonic() + TERM_GRACE_SECONDS
    while _group_alive(pgid) and time.monotonic() < until:
        time.sleep(0.05)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def lower_priority(pgid: int, nice: int) -> None:
    """Run the job's new process group (the shim leads it) `nice` steps nicer than the
    reconciler; what the job starts later inherits it. A group that already ended, or a
    member that became another user's (setuid), is left as it is. The benchmarks' bare
    shim nices its jobs with it too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.setpriority(os.PRIO_PGRP, pgid,
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))


def _group_alive(pgid: int) -> bool:
    """Does any live (not zombie) process still belong to process group `pgid`?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it exited while we looked
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _adopt(jdir: Path) -> int | None:
    """The pid of the shim already running in this job dir, if any: what a reconciler
    killed between starting a shim and recording the start left behind. Looked for only
    when the job dir exists (a start after a restart), so it costs nothing otherwise."""
    want = str(jdir).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # it exited while we looked
            continue
        if len(args) > 3 and args[3] == want and args[:2] == [b"/bin/sh", b"-c"]:
            pid = int(cmdline.parent.name)
            if _alive(pid, jdir):
                return pid
    return None


def _alive(pid: int | None, jdir: Path) -> bool:
    """Is `pid` still our shim for this job dir (not a recycled pid, not a zombie)?"""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if ") Z" in status:
        return False
    return str(jdir).encode() in cmdline.split(b"\0")  # the shim's own argument, whole
