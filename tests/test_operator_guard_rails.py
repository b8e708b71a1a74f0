"""Guard rails an operator expects (issue 7 §4), each through the real `batchq` command:
a commit of hundreds of batch files, job deadlines, hostile text in names, titles and
messages, and a state dir that runs out of space."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.control.jobs import job_name
from reconciler.support.nospace import NoSpaceLeft
from tests.fixtures import (
    ADMIN,
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
    wait_for,
)
from tests.test_runner_exits import job_repo
from tests.test_runner_exits import reconciler as exits_reconciler

QUEUE_PAUSED = {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": {"paused": True}}



def query(state: Path, sql: str, *args: Any) -> list[Any]:
    """Rows from the store of a reconciler that may not have created it yet (then none)."""
    path = state / "batchq.sqlite3"
    if not path.exists():
        return []
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return c.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the schema is not there yet
            return []
        raise
    finally:
        c.close()


def plain_profile(prefix: str = "http://127.0.0.1/", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
            "spec": {"allowedUrlPrefixes": [prefix],
                     "notification": {"from": "batchq@example.org"}, **spec}}


def numbered_batch(n: int, version: int) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Batch",
            "spec": {"profile": "test", "depositor": {"name": "D", "email": "d@example.org"},
                     "manifest": {"items": [{"id": "item-1",
                                             "url": f"http://127.0.0.1/{n}/v{version}"}]}}}


# --- a commit of many files -----------------------------------------------------------------
def test_hundreds_of_files_sync_each_with_the_commit_that_last_changed_it(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """300 files over three commits, read whole (first sync) and then as a diff: every batch
    gets its own content and the revision of the commit that last touched its file."""
    git_repo.write("profiles/test.yaml", plain_profile())
    git_repo.write("queue.yaml", QUEUE_PAUSED)  # nothing runs: this is about the sync
    for n in range(300):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 1))
    first = git_repo.commit("add 300 batches")
    for n in range(0, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 2))
    second = git_repo.commit("edit every third batch", who=ADMIN)
    state = tmp_path / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--once"]
    assert (done := batchq(*args)).returncode == 0, done.stderr

    def stored() -> dict[str, tuple[str, str, int]]:
        rows = query(state, "SELECT name, source_revision, spec_json, generation FROM batches")
        return {name: (rev, json.loads(spec)["manifest"]["items"][0]["url"], gen)
                for name, rev, spec, gen in rows}

    def url(n: int, version: int) -> str:
        return f"http://127.0.0.1/{n}/v{version}"

    assert stored() == {f"b-{n:03d}": (second, url(n, 2), 1) if n % 3 == 0
                        else (first, url(n, 1), 1) for n in range(300)}

    for n in range(1, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 3))
    third = git_repo.commit("edit the next third")
    assert (done := batchq(*args)).returncode == 0, done.stderr
    expected = {}
    for n in range(300):
        expected[f"b-{n:03d}"] = ((second, url(n, 2), 1) if n % 3 == 0
                                  else (third, url(n, 3), 2) if n % 3 == 1
                                  else (first, url(n, 1), 1))
    assert stored() == expected


# --- control characters in names, titles and messages ---------------------------------------
HOSTILE = ["\x1b[2J", "\r\nSubject: forged", "\u202e"]
# any of these left raw in output could clear the screen, forge a line or reverse text
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FAILING_JOB = [sys.executable, "-c",
               "import os, sys\n"
               "if os.environ['BATCHQ_ITEM_ID'] == 'fails':\n"
               "    sys.stderr.write('boom \\x1b[2J\\x07 gone \\u202e reversed\\n')\n"
               "    sys.exit(1)\n"]


def hostile_repo(repo: GitRepo) -> None:
    repo.write("profiles/test.yaml", plain_profile(job={"command": FAILING_JOB}))
    items = [{"id": "clears", "url": "http://127.0.0.1/1", "title": f"Map {HOSTILE[0]} one"},
             {"id": "forges", "url": "http://127.0.0.1/2", "title": f"Map{HOSTILE[1]} two"},
             {"id": "fails", "url": "http://127.0.0.1/3", "title": f"{HOSTILE[2]}owt paM"}]
    doc = numbered_batch(0, 1)
    doc["spec"]["manifest"]["items"] = items
    doc["spec"]["depositor"]["name"] = f"Jane{HOSTILE[1]}"
    repo.write("batches/hostile.yaml", doc)
    # a file whose name and item id hold them: refused, and the error names both
    bad = numbered_batch(1, 1)
    bad["spec"]["manifest"]["items"][0]["id"] = "id\x1b[2J\u202e"
    repo.write("batches/evil\x1b[2J\u202e.yaml", bad)
    repo.commit("hostile text everywhere")


def test_control_characters_are_escaped_in_the_cli_and_flattened_in_the_email(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    hostile_repo(git_repo)
    state = tmp_path / "state"
    run = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
                 smtp.hostport, "--until-idle", "--timeout", "60")
    assert run.returncode == 0, run.stderr

    shown = batchq("status", "--state", str(state))
    assert shown.returncode == 0, shown.stderr
    for stream in (shown.stdout, shown.stderr):
        assert not RAW_CONTROL.search(stream), stream
    out = shown.stdout.splitlines()
    assert out[0].startswith("NAME ")  # the table, escaped too
    assert any(line.startswith("evil\\x1b[2J\\u202e   Invalid ") for line in out), out
    assert any(line.startswith("evil\\x1b[2J\\u202e: Invalid") for line in out), out
    assert any(line.startswith("  file error: batches/evil\\x1b[2J\\u202e.yaml:")
               and '"id\\u001b[2J\\u202e" is not a valid item id' in line for line in out), out
    assert "hostile: Failed" in shown.stdout
    assert ("  fails                Failed      attempt 1  boom \\x1b[2J\\x07 gone \\u202e"
            " reversed") in out
    assert shown.stderr.startswith("error: batches/evil\\x1b[2J\\u202e.yaml:")

    checked = batchq("validate", str(git_repo.path))
    assert checked.returncode == 1
    assert not RAW_CONTROL.search(checked.stdout)
    assert checked.stdout.startswith(f"{git_repo.path}/batches/evil\\x1b[2J\\u202e.yaml:1:1: ")

    [mail] = [m for m in smtp.mailbox.messages if "hostile" in str(m["Subject"])]
    assert mail.get_all("Subject") == ["Ingest: FAIL -- Submission Failed: hostile"]
    # the evil file never parsed: its depositor hears of it, the name escaped in the subject
    [told] = [m for m in smtp.mailbox.messages if m is not mail]
    assert told.get_all("Subject") == [
        "Ingest: FAIL -- Batch File Invalid: evil\\x1b[2J\\u202e"]
    assert not RAW_CONTROL.search(told.as_string())
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    text = body.get_payload(decode=True).decode().replace("\r\n", "\n")  # SMTP line ends
    lines = text.split("\n")
    assert not RAW_CONTROL.search(text), text
    assert not [line for line in lines if line.lstrip().startswith("Subject")], text
    assert "Depositor:  Jane\\r\\nSubject: forged <d@example.org>" in lines
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in
            (["clears"], ["forges"], ["fails"])}
    assert "Map \\x1b[2J one" in rows["clears"]
    assert "Map\\r\\nSubject: forged two" in rows["forges"]
    assert "\\u202eowt paM" in rows["fails"]
    assert rows["fails"].endswith("boom \\x1b[2J\\x07 gone \\u202e reversed")


# --- activeDeadlineSeconds on the local runner ----------------------------------------------
# The slow item's job records its pid and a child's, then outlives any deadline; it ignores
# SIGTERM (its child does not), so only a kill of the whole group ends both.
SLOW_JOB = [sys.executable, "-c",
            "import os, signal, subprocess, sys, time\n"
            "if os.environ['BATCHQ_ITEM_ID'] != 'slow':\n"
            "    sys.exit(0)\n"
            "child = subprocess.Popen(['sleep', '300'])\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "with open('pids.tmp', 'w') as f:\n"
            "    f.write(f'{os.getpid()} {child.pid}')\n"
            "os.rename('pids.tmp', 'pids')\n"
            "time.sleep(300)\n"]


def deadline_repo(repo: GitRepo, name: str, seconds: int) -> str:
    repo.write("profiles/test.yaml", plain_profile(
        job={"command": SLOW_JOB, "activeDeadlineSeconds": seconds}))
    doc = numbered_batch(0, 1)
    doc["spec"]["manifest"]["items"] = [{"id": "quick", "url": "http://127.0.0.1/q"},
                                        {"id": "slow", "url": "http://127.0.0.1/s"}]
    repo.write(f"batches/{name}.yaml", doc)
    repo.commit("a batch with a job that never ends")
    return job_name(name, "slow", 1)


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def job_row(state: Path, name: str) -> tuple[str, str, float | None]:
    """The job's state, message and start time ("" before the reconciler made it)."""
    rows = query(state, "SELECT state, message, started_at FROM jobs WHERE name=?", name)
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else ("", "", None)


def job_pids(state: Path, name: str) -> list[int]:
    pids = state / "jobs" / name / "pids"
    wait_for(pids.exists, what=f"{name} to start")
    return [int(p) for p in pids.read_text().split()]


@pytest.fixture
def leftover_jobs(tmp_path: Path) -> Iterator[None]:
    """Whatever the test's outcome, no job process of it outlives it."""
    yield
    for proc in Path("/proc").glob("[0-9]*"):
        try:  # a job's shim: leads its own process group, its job dir is in its arguments
            mine = str(tmp_path).encode() in (proc / "cmdline").read_bytes()
            pgrp = (proc / "stat").read_text().rpartition(")")[2].split()[2]
        except OSError:
            continue
        if mine and pgrp == proc.name:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgrp), signal.SIGKILL)


@pytest.mark.usefixtures("leftover_jobs")
def test_a_job_past_its_deadline_is_killed_and_failed(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    job = deadline_repo(git_repo, "late", 2)
    state = tmp_path / "state"
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
                  smtp.hostport, "--until-idle", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert job_row(state, job)[:2] == ("Failed", "DeadlineExceeded: job ran longer than 2 s")
    assert all(dead(pid) for pid in job_pids(state, job))
    [mail] = smtp.mailbox.messages
    assert mail["Subject"] == "Ingest: FAIL -- Submission Failed: late"
    assert "DeadlineExceeded: job ran longer than 2 s" in mail.as_string()
    shown = batchq("status", "--state", str(state)).stdout
    assert "  quick                Completed   attempt 1" in shown
    assert "  slow                 Failed      attempt 1  DeadlineExceeded: job ran longer" \
           " than 2 s" in shown


def kill_reconciler_once_running(args: list[str], state: Path, job: str) -> None:
    """`batchq run` until `job` is Processing, then SIGKILL: the reconciler dies, the job's
    shim, in its own session, goes on."""
    first = subprocess.Popen([sys.executable, "-m", "reconciler", "run", *args, "--interval",
                              "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: job_row(state, job)[0] == "Processing", what="the slow job to start")
    finally:
        first.kill()
        first.wait()


@pytest.mark.usefixtures("leftover_jobs")
def test_the_deadline_counts_from_the_jobs_start_across_a_reconciler_restart(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    seconds = 4
    job = deadline_repo(git_repo, "restarted", seconds)
    state = tmp_path / "state"
    args = ["--repo", str(git_repo.path), "--state", str(state), "--smtp", smtp.hostport]
    kill_reconciler_once_running(args, state, job)
    pids = job_pids(state, job)
    started = job_row(state, job)[2]
    assert started is not None
    wait_for(lambda: time.time() > started + seconds + 0.5, timeout=seconds + 30,
             what="the deadline, counted from the job's start, to pass")
    assert job_row(state, job)[0] == "Processing" and not any(dead(p) for p in pids)

    # ONE pass of a new reconciler: only a deadline counted from the job's recorded start
    # (not from this process's) has passed already
    once = batchq("reconcile", *args, "--once")
    assert once.returncode == 0, once.stderr
    assert job_row(state, job)[:2] == (
        "Failed", f"DeadlineExceeded: job ran longer than {seconds} s")
    wait_for(lambda: all(dead(p) for p in pids), timeout=10, what="the job's processes to end")

    idle = batchq("reconcile", *args, "--until-idle", "--timeout", "60")
    assert idle.returncode == 0, idle.stderr
    assert [m["Subject"] for m in smtp.mailbox.messages] == [
        "Ingest: FAIL -- Submission Failed: restarted"]
    assert query(state, "SELECT COUNT(*) FROM jobs") == [(2,)]  # nothing run again


@pytest.mark.usefixtures("leftover_jobs")
def test_a_job_run_again_after_its_process_died_keeps_its_first_start_and_deadline(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    """The reconciler and the job's processes die (a reboot); the same attempt runs again,
    and its deadline still counts from the first start, as a Job's startTime does."""
    seconds = 4
    job = deadline_repo(git_repo, "rebooted", seconds)
    state = tmp_path / "state"
    args = ["--repo", str(git_repo.path), "--state", str(state), "--smtp", smtp.hostport]
    kill_reconciler_once_running(args, state, job)
    pids = job_pids(state, job)
    [(shim,)] = query(state, "SELECT pid FROM jobs WHERE name=?", job)
    os.killpg(shim, signal.SIGKILL)  # the machine went down with it: no exit code left
    wait_for(lambda: all(dead(p) for p in pids), what="the job's processes to die")
    started = job_row(state, job)[2]
    assert started is not None

    again = batchq("reconcile", *args, "--once")  # finds it dead: the same attempt again
    assert again.returncode == 0, again.stderr
    assert job_row(state, job)[0] == "Processing"
    assert query(state, "SELECT pid <> ?, started_at FROM jobs WHERE name=?", shim, job) == [
        (1, started)]
    wait_for(lambda: time.time() > started + seconds + 0.5, timeout=seconds + 30,
             what="the deadline, counted from the first start, to pass")
    once = batchq("reconcile", *args, "--once")
    assert once.returncode == 0, once.stderr
    assert job_row(state, job)[:2] == (
        "Failed", f"DeadlineExceeded: job ran longer than {seconds} s")
    assert query(state, "SELECT COUNT(*) FROM jobs") == [(2,)]  # one attempt, not two


# --- a state dir that runs out of space ----------------------------------------------------
SMALL_DISK = 8 * 1024 * 1024
NO_SPACE = "no space left on device in the state dir"


@contextlib.contextmanager
def tmpfs(mount: Path, size: int) -> Iterator[Path]:
    """A real file system of `size` bytes at `mount` (tmpfs: root may mount one)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (f"cannot mount a small tmpfs for the disk-full tests ({done.stderr.strip()});"
                  " they need root (or CAP_SYS_ADMIN)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        kill_jobs_under(mount)
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB file system for the state dir."""
    with tmpfs(tmp_path / "small", SMALL_DISK) as mount:
        yield mount


def kill_jobs_under(root: Path) -> None:
    """SIGKILL every process group led by a process whose arguments name `root` (a job's
    shim names its job dir)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            mine = str(root).encode() in (proc / "cmdline").read_bytes()
            pgrp = (proc / "stat").read_text().rpartition(")")[2].split()[2]
        except OSError:
            continue
        if mine and pgrp == proc.name:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgrp), signal.SIGKILL)


def fill(mount: Path, leave: int = 0) -> Path:
    """Fill the file system with one file until `leave` bytes (0: nothing) are free."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while (room := shutil.disk_usage(mount).free - leave) >= 4096:
            try:
                os.write(fd, b"\0" * min(room // 4096 * 4096, 1024 * 1024))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def one_line_no_space(done: subprocess.CompletedProcess[str], state: Path) -> str:
    """The command failed with exactly one line on stderr, naming the state dir."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"batchq: {NO_SPACE} {state} ("), line
    return line


def ingest_batch(repo: GitRepo, payloads: PayloadServer, name: str) -> None:
    items = [payloads.add(f"{name}-{i}", f"payload {name} {i}\n".encode()) for i in (1, 2)]
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    repo.write(f"batches/{name}.yaml", batch_doc(items))
    repo.commit(f"submit {name}")


def settled(state: Path) -> dict[str, str]:
    return dict(query(state, "SELECT name, state FROM batches"))


def nothing_twice(state: Path, smtp: SmtpServer, payloads: PayloadServer,
                  names: list[str]) -> None:
    """Each batch Completed with one job per item, one download each, one email each."""
    assert settled(state) == dict.fromkeys(names, "Completed")
    jobs = sorted(name for (name,) in query(state, "SELECT name FROM jobs"))
    assert jobs == sorted(job_name(n, f"{n}-{i}", 1) for n in names for i in (1, 2))
    assert sorted(payloads.requests) == sorted(f"{n}-{i}" for n in names for i in (1, 2))
    assert sorted(smtp.mailbox.subjects()) == sorted(
        f"Ingest: OK -- Submission Processed: {n}" for n in names)


def test_a_full_state_dir_fails_in_one_line_and_the_next_run_resumes(
        small_disk: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer) -> None:
    state = small_disk / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--until-idle", "--timeout", "60"]
    # a new state dir on a full disk: the lock file, the store cannot be written
    ingest_batch(git_repo, payloads, "first")
    filler = fill(small_disk)
    one_line_no_space(batchq(*args), state)
    one_line_no_space(batchq("status", "--state", str(state)), state)
    filler.unlink()
    assert (done := batchq(*args)).returncode == 0, done.stderr
    nothing_twice(state, smtp, payloads, ["first"])

    # a state dir in use: the next commit meets a full disk, then space returns
    ingest_batch(git_repo, payloads, "second")
    filler = fill(small_disk)
    one_line_no_space(batchq(*args), state)
    one_line_no_space(batchq(*args), state)  # and again: nothing moved, nothing half-done
    filler.unlink()
    assert (done := batchq(*args)).returncode == 0, done.stderr
    nothing_twice(state, smtp, payloads, ["first", "second"])
    assert "storage error" not in batchq("status", "--state", str(state)).stderr


def test_a_nearly_full_state_dir_starts_no_job_and_status_says_why(
        small_disk: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """Room for the store, not for jobs (kubelet's DiskPressure): the batch is admitted and
    its jobs recorded, none starts, and `status` shows the storage error until space is back."""
    state = small_disk / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--until-idle", "--timeout", "60"]
    ingest_batch(git_repo, payloads, "tight")
    filler = fill(small_disk, leave=768 * 1024)  # the pass takes some; under 1 MiB is left
    line = one_line_no_space(batchq(*args), state)
    assert "bytes free, too little to start a job" in line
    assert query(state, "SELECT state FROM jobs") == [("Pending",), ("Pending",)]
    assert not (state / "jobs").exists() and payloads.requests == []
    shown = batchq("status", "--state", str(state))
    assert shown.returncode == 0, shown.stderr
    errors = [e for e in shown.stderr.splitlines() if e.startswith("storage error: ")]
    assert errors[0] == "storage error: " + line.removeprefix("batchq: ")
    assert errors[1].startswith(f"storage error: the state dir {state} has only ")
    filler.unlink()
    assert (done := batchq(*args)).returncode == 0, done.stderr
    nothing_twice(state, smtp, payloads, ["tight"])
    assert "storage error" not in batchq("status", "--state", str(state)).stderr


def test_run_says_once_that_the_state_dir_is_full_and_resumes_by_itself(
        small_disk: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer,
        tmp_path: Path) -> None:
    state = small_disk / "state"
    log = tmp_path / "run.log"
    ingest_batch(git_repo, payloads, "before")
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--repo", str(git_repo.path),
             "--state", str(state), "--smtp", smtp.hostport, "--interval", "0.3"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: len(smtp.mailbox.messages) == 1, timeout=60, what="the first report")
        filler = fill(small_disk)
        ingest_batch(git_repo, payloads, "during")
        wait_for(lambda: NO_SPACE in log.read_text(), timeout=60,
                 what="the loop to say that the state dir is full")
        shown = batchq("status", "--state", str(state))
        assert shown.returncode == 0, shown.stderr
        assert f"storage error: the state dir {state} has only " in shown.stderr
        assert run.poll() is None, "the loop goes on"
        filler.unlink()
        wait_for(lambda: len(smtp.mailbox.messages) == 2, timeout=60,
                 what="the second batch's report once space is back")
    finally:
        run.terminate()
        run.wait()
    text = log.read_text()
    assert "Traceback" not in text
    told = [line for line in text.splitlines() if NO_SPACE in line]
    assert told and len(told) == len(set(told)), told  # each cause once, not once a pass
    assert "space is back in the state dir" in text
    nothing_twice(state, smtp, payloads, ["before", "during"])


def test_a_job_that_ends_as_the_disk_fills_is_recorded_though_the_next_cannot_start(
        small_disk: Path, git_repo: GitRepo, tmp_path: Path) -> None:
    """A round records the exits reported since the last and starts Jobs in the slots they
    free, in one transaction (one commit, not two). A start refused for want of space
    comes after that commit: the job that ended is Completed, the next stays Pending until
    space is back, and then the round that records its exit starts the third, again in one
    transaction."""
    gate = tmp_path / "gate"
    job_repo(git_repo, ["/bin/sh", "-c", f'until [ -e "{gate}" ]; do sleep 0.05; done'],
             items=3, slots=1)
    rec = exits_reconciler(git_repo, small_disk / "state")
    assert rec.runner is not None
    statements: list[str] = []

    def jobs() -> dict[str, str]:
        return {j.item: str(j.state) for j in rec.store.list_jobs("b")}

    def locks() -> list[str]:
        return [s for s in statements if s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]

    def one_round_after_an_exit() -> None:
        """Wait for the next exit's report, then run the round between two steps."""
        assert rec.runner is not None
        wait_for(rec.runner.wake.is_set, timeout=30, what="a job's exit to be reported")
        rec.runner.wake.clear()
        statements.clear()
        rec.runner.tick_if_exited()

    try:
        wait_for(lambda: (rec.run_pass() or True)
                 and jobs() == {"item-0": "Processing", "item-1": "Pending",
                                "item-2": "Pending"},
                 timeout=60, what="the first job running, the next two made ahead")
        rec.runner.wake.clear()
        rec.store.db.set_trace_callback(statements.append)
        filler = fill(small_disk, leave=768 * 1024)
        gate.touch()
        with pytest.raises(NoSpaceLeft, match="too little to start a job"):
            one_round_after_an_exit()
        assert locks() == ["BEGIN IMMEDIATE", "COMMIT"], statements
        assert jobs() == {"item-0": "Completed", "item-1": "Pending", "item-2": "Pending"}
        filler.unlink()
        statements.clear()
        assert rec.runner.tick() is True  # item-1 starts and ends at once (the gate is open);
        assert jobs()["item-1"] == "Processing"  # its exit is the next round's to record
        one_round_after_an_exit()
        assert locks() == ["BEGIN IMMEDIATE", "COMMIT"], statements
        assert jobs() == {"item-0": "Completed", "item-1": "Completed",
                          "item-2": "Processing"}
        moves = [s for s in dict.fromkeys(statements) if s.startswith("UPDATE jobs SET state=")]
        assert [m.split("'")[1] for m in moves] == ["Completed", "Processing"], statements
    finally:
        rec.store.db.set_trace_callback(None)
        rec.close()


def test_a_batch_step_that_cannot_be_written_ends_the_pass_not_just_that_batch(
        small_disk: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """Room for the sync, not for the 8,000 items of a remote manifest: SQLite's "database
    or disk is full" inside one batch's step is the disk's, not the batch's, problem."""
    items = [{"id": f"item-{n:05d}", "url": f"{payloads.base}big-{n}", "title": "t" * 100}
             for n in range(8000)]
    payloads.files["big.json"] = json.dumps(items).encode()
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"maxActiveJobs": 1}})
    git_repo.write("batches/big.yaml", batch_doc(url=f"{payloads.base}big.json"))
    git_repo.commit("a batch with a big remote manifest")
    state = small_disk / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--until-idle", "--timeout", "60"]
    filler = fill(small_disk, leave=768 * 1024)
    line = one_line_no_space(batchq(*args), state)
    assert "(the store: database or disk is full)" in line
    assert query(state, "SELECT COUNT(*) FROM items") == [(0,)]  # nothing half-written
    filler.unlink()
    done = batchq(*args[:-3], "--once")  # space is back: the next pass loads every item
    assert done.returncode == 0, done.stderr
    assert query(state, "SELECT COUNT(*) FROM items") == [(8000,)]


def test_no_email_goes_out_that_could_not_be_marked_sent(
        small_disk: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """A report waits in the outbox while the disk is nearly full: sent then, it could not
    be marked delivered and would go out again. It goes out once, when space is back."""
    state = small_disk / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--until-idle", "--timeout", "60"]
    ingest_batch(git_repo, payloads, "mail")
    killed = subprocess.run([sys.executable, "-m", "reconciler", *args],
                            env={**os.environ, "BATCHQ_FAILPOINTS": "before-deliver:1"},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert query(state, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == [(1,)]
    filler = fill(small_disk, leave=768 * 1024)
    line = one_line_no_space(batchq(*args), state)
    assert "too little room to record a delivery, so no email is sent" in line
    assert smtp.mailbox.messages == []
    assert query(state, "SELECT attempts FROM outbox") == [(0,)]  # not a delivery failure
    filler.unlink()
    assert (done := batchq(*args)).returncode == 0, done.stderr
    nothing_twice(state, smtp, payloads, ["mail"])


def test_jobs_that_failed_for_lack_of_storage_show_in_status(
        tmp_path: Path, git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """The profile stores payloads on their own (full) volume: the jobs fail, and `status`
    says which and what to do; after space is freed, the admin's restarts complete them."""
    with tmpfs(tmp_path / "storage", 1024 * 1024) as storage:
        items = [payloads.add(f"s-{i}", bytes([i]) * 200_000) for i in (1, 2)]
        profile = profile_doc(payloads.base)
        profile["spec"]["storage"] = {"path": "deposits"}  # under the operator's root
        git_repo.write("profiles/test.yaml", profile)
        git_repo.write("batches/s.yaml", batch_doc(items))
        git_repo.commit("submit")
        filler = fill(storage)
        state = tmp_path / "state"
        args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
                smtp.hostport, "--until-idle", "--timeout", "60", "--storage-root", str(storage)]
        assert (done := batchq(*args)).returncode == 0, done.stderr
        shown = batchq("status", "--state", str(state))
        assert "storage error: 2 job(s) failed for lack of space (s/s-1, s/s-2): free space," \
               " then commit spec.restarts for them" in shown.stderr.splitlines()
        filler.unlink()
        git_repo.edit_batch("batches/s.yaml", restarts={"s-1": 1, "s-2": 1})
        assert (done := batchq(*args)).returncode == 0, done.stderr
        assert "storage error" not in batchq("status", "--state", str(state)).stderr
        assert query(state, "SELECT item_id, state FROM items ORDER BY item_id") == [
            ("s-1", "Completed"), ("s-2", "Completed")]
