"""What an unlucky operator runs into: a second reconciler, a dead remote, and the traces a
SIGKILL leaves in the Git mirror. Every case drives the real `batchq` command."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.store.backends import local_db_path
from tests.fixtures import (
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
    wait_for,
)


def one_batch(repo: GitRepo, payloads: PayloadServer, name: str = "b") -> None:
    items = [payloads.add(f"{name}-{i}", f"payload {i}\n".encode()) for i in (1, 2)]
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    repo.write(f"batches/{name}.yaml", batch_doc(items))
    repo.commit("submit")


def states(state: Path) -> dict[str, str]:
    with sqlite3.connect(local_db_path(state)) as c:
        return dict(c.execute("SELECT name, state FROM batches").fetchall())


def test_second_reconciler_on_one_state_dir_exits_with_a_clear_message(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    one_batch(git_repo, payloads)
    state = tmp_path / "state"
    first = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--repo", str(git_repo.path),
         "--state", str(state), "--smtp", smtp.hostport, "--interval", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = state / "reconciler.lock"
        wait_for(lambda: lock.exists() and lock.read_text().strip(),
                 what="the first reconciler to hold the state dir")
        for command in ("reconcile", "run"):
            second = batchq(command, "--repo", str(git_repo.path), "--state", str(state),
                            "--smtp", smtp.hostport)
            assert second.returncode == 3, second.stderr
            assert f"another reconciler (pid {first.pid}) is using the state dir" in (
                second.stderr)
            assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel dropped the lock with the killed process: the next one proceeds
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert states(state) == {"b": "Completed"}
    assert smtp.mailbox.subjects().count("Ingest: OK -- Submission Processed: b") == 1


def test_unreachable_remote_fails_the_command_and_keeps_the_last_good_state(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    one_batch(git_repo, payloads)
    state = tmp_path / "state"
    args = ["--state", str(state), "--smtp", smtp.hostport, "--until-idle"]
    ok = batchq("reconcile", "--repo", str(git_repo.path), *args)
    assert ok.returncode == 0, ok.stderr
    moved = git_repo.path.rename(tmp_path / "moved")
    failed = batchq("reconcile", "--repo", str(git_repo.path), *args)
    assert failed.returncode == 1
    assert "sync failed: cannot fetch branch main of" in failed.stderr
    assert states(state) == {"b": "Completed"}
    shown = batchq("status", "--state", str(state))
    assert "sync error: cannot fetch branch main" in shown.stderr
    moved.rename(git_repo.path)


def test_credentials_in_a_remote_url_never_show(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = "http://robot:s3cret-token@127.0.0.1:9/nothing.git"
    failed = batchq("reconcile", "--repo", url, "--state", str(state), "--until-idle")
    assert failed.returncode == 1
    assert "s3cret-token" not in failed.stderr and "robot" not in failed.stderr
    assert "http://***@127.0.0.1:9/nothing.git" in failed.stderr
    with sqlite3.connect(local_db_path(state)) as c:
        stored = " ".join(str(v) for (v,) in c.execute("SELECT value FROM meta"))
    assert "s3cret-token" not in stored


def test_a_mirror_killed_half_built_or_mid_fetch_heals(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    """A SIGKILL while the mirror is created, then the lock files a killed fetch leaves."""
    one_batch(git_repo, payloads)
    state = tmp_path / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--until-idle", "--timeout", "60"]
    killed = batchq(*args, failpoint="mirror-built:1")
    assert killed.returncode == -signal.SIGKILL
    assert list((state / "git").glob("mirror-*.new-*")), "the kill left a half-built mirror"
    first = batchq(*args)
    assert first.returncode == 0, first.stderr
    assert states(state) == {"b": "Completed"}
    assert not list((state / "git").glob("mirror-*.new-*"))

    # what `git fetch` leaves when it is killed while updating refs
    mirror = next((state / "git").glob("mirror-*.git"))
    for stale in ("refs/remotes/origin/main.lock", "packed-refs.lock", "shallow.lock"):
        (mirror / stale).write_text("")
    git_repo.write("batches/c.yaml", batch_doc([payloads.add("c-1", b"c\n")]))
    git_repo.commit("another")
    again = batchq(*args)
    assert again.returncode == 0, again.stderr
    assert states(state) == {"b": "Completed", "c": "Completed"}
    assert not list(mirror.glob("**/*.lock"))


def test_a_reconciler_that_fails_to_start_leaves_the_state_dir_free(
        git_repo: GitRepo, tmp_path: Path) -> None:
    from reconciler.app.service import Reconciler, Settings

    state = tmp_path / "state"
    broken = Settings(repo=str(git_repo.path), state_dir=state, backend="kubernetes",
                      kubeconfig=str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a bad config
        Reconciler(broken)
    working = Reconciler(Settings(repo=str(git_repo.path), state_dir=state))
    working.close()
