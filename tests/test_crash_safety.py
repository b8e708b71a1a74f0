"""A reconciler killed with SIGKILL anywhere, then started again, loses and repeats nothing.

The reconciler runs as a real `batchq reconcile --until-idle` process. Named fail points
(reconciler/failpoints.py) make it SIGKILL itself at the n-th time it reaches a point;
a second test kills it from outside at random moments. After each crash a clean process
finishes the work; the test then counts jobs, payload downloads and emails.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.control.jobs import job_name
from reconciler.store.backends import local_db_path
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc

POINTS = [
    "after-sync:1", "after-apply:1", "after-items:1", "after-job-created:1",
    "after-job-created:2", "after-job-created:3", "after-status:1", "after-status:2",
    "after-status:3", "after-status:4",
    "after-report-saved:1", "before-deliver:1", "after-deliver:1",
]


def reconcile(repo: GitRepo, state: Path, smtp: SmtpServer, failpoint: str = "") -> int:
    env = dict(os.environ, BATCHQ_FAILPOINTS=failpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "reconcile", "--repo", str(repo.path),
         "--state", str(state), "--smtp", smtp.hostport, "--until-idle", "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"reconciler failed ({proc.returncode}): {proc.stderr}")
    return proc.returncode


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(local_db_path(state))


def scenario(tmp: Path, smtp: SmtpServer, payloads: PayloadServer, failpoint: str,
             name: str) -> None:
    repo = GitRepo(tmp / f"repo-{name}")
    state = tmp / f"state-{name}"
    items = [payloads.add(f"{name}-{i}", f"payload {i}\n".encode()) for i in (1, 2, 3)]
    payloads.files[f"{name}-3"] = b"not yet uploaded correctly"
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    repo.write("batches/b.yaml", {**batch_doc(items), "metadata": {"name": name}})
    repo.commit("submit")
    before = len(smtp.mailbox.messages)

    # phase 1: submission to the first report, crashing once at `failpoint`
    crashed = reconcile(repo, state, smtp, failpoint) != 0
    assert reconcile(repo, state, smtp) == 0
    with db(state) as c:
        assert c.execute("SELECT state FROM batches").fetchone()[0] == "Failed"
        assert c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3
    assert len(smtp.mailbox.messages) == before + 1

    # phase 2: restart the failed item and ask for an update report in one commit
    payloads.files[f"{name}-3"] = b"payload 3\n"
    doc = {**batch_doc(items, restarts={f"{name}-3": 1}, state="UpdateReporting"),
           "metadata": {"name": name}}
    repo.write("batches/b.yaml", doc)
    repo.commit("admin: restart and report", who=ADMIN)
    crashed |= reconcile(repo, state, smtp, failpoint) != 0
    assert reconcile(repo, state, smtp) == 0
    assert reconcile(repo, state, smtp) == 0  # and again: nothing more happens

    with db(state) as c:
        assert c.execute("SELECT state FROM batches").fetchone()[0] == "Completed"
        jobs = sorted(c.execute("SELECT item, attempt, name FROM jobs"))
        assert [(item, attempt) for item, attempt, _ in jobs] == [
            (f"{name}-1", 1), (f"{name}-2", 1), (f"{name}-3", 1), (f"{name}-3", 2)]
        # one Job per attempt, each under the one name its triple has
        assert [n for *_, n in jobs] == [job_name(name, i, a) for i, a, _ in jobs]
        reports = [r[0] for r in c.execute("SELECT kind FROM reports ORDER BY created_at")]
        assert reports == ["initial", "update"]
    mine = smtp.mailbox.messages[before:]
    assert [m["Subject"] for m in mine] == [
        f"Ingest: FAIL -- Submission Failed: {name}",
        f"Ingest: OK -- Submission Updated: {name}",
    ], failpoint
    assert len({m["Message-ID"] for m in mine}) == 2
    downloads = {i: payloads.requests.count(f"{name}-{i}") for i in (1, 2, 3)}
    assert downloads == {1: 1, 2: 1, 3: 2}, (failpoint, downloads)
    if failpoint:
        assert crashed, f"fail point {failpoint} was never reached"


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", POINTS)
def test_killed_at_a_named_point(tmp_path: Path, smtp: SmtpServer, payloads: PayloadServer,
                                 failpoint: str) -> None:
    scenario(tmp_path, smtp, payloads, failpoint, "b" + failpoint.replace(":", "-").lower())


@pytest.mark.slow
def test_killed_from_outside_at_random_moments(tmp_path: Path, smtp: SmtpServer,
                                               payloads: PayloadServer) -> None:
    """`batchq run` killed with SIGKILL at random times, 8 times, then left to finish."""
    seed = int(os.environ.get("BATCHQ_CRASH_SEED", "20261128"))  # scripts/stress-crash
    rng = random.Random(seed)
    repo = GitRepo(tmp_path / "repo")
    state = tmp_path / "state"
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    for n in range(4):
        items = [payloads.add(f"r{n}-{i}", f"payload {n} {i}\n".encode()) for i in range(5)]
        repo.write(f"batches/r{n}.yaml", batch_doc(items))
    repo.commit("submit four batches")
    cmd = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo.path), "--state",
           str(state), "--smtp", smtp.hostport, "--interval", "0.2"]
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert reconcile(repo, state, smtp) == 0
    with db(state) as c:
        states = {r[0]: r[1] for r in c.execute("SELECT name, state FROM batches")}
        assert states == {f"r{n}": "Completed" for n in range(4)}, f"seed {seed}"
        assert c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 20
        assert c.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 4
    # Each report once. A kill that lands between the server's 250 to DATA and the record
    # of it sends that report again (the window notify.py names): the same message, with
    # the same Message-ID; never a second report.
    sent = {(m["Subject"], m["Message-ID"]) for m in smtp.mailbox.messages}
    assert sorted(s for s, _ in sent) == sorted(
        f"Ingest: OK -- Submission Processed: r{n}" for n in range(4)), f"seed {seed}"
    assert kills == 8


@pytest.mark.slow
def test_killed_after_the_server_accepted_and_before_the_record(
        tmp_path: Path, smtp: SmtpServer, payloads: PayloadServer) -> None:
    """The one window that repeats: the copy is the same message, and it is recorded."""
    repo = GitRepo(tmp_path / "repo")
    state = tmp_path / "state"
    items = [payloads.add(f"w-{i}", f"payload {i}\n".encode()) for i in (1, 2)]
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    repo.write("batches/w.yaml", {**batch_doc(items), "metadata": {"name": "w"}})
    repo.commit("submit")
    assert reconcile(repo, state, smtp, "after-smtp-send:1") == -signal.SIGKILL
    assert reconcile(repo, state, smtp) == 0
    assert reconcile(repo, state, smtp) == 0  # and again: delivered, recorded, not resent
    mine = [m for m in smtp.mailbox.messages if m["Subject"].endswith(": w")]
    assert [m["Subject"] for m in mine] == ["Ingest: OK -- Submission Processed: w"] * 2
    assert len({m["Message-ID"] for m in mine}) == 1
    assert [p.as_string() for p in mine[0].walk()] == [p.as_string() for p in mine[1].walk()]
    with db(state) as c:
        assert c.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1
