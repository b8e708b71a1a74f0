"""A slow or dead peer never stops the loop (issue 7 §3): a Git remote, an SMTP server and a
manifest server that accept a connection and then hang or trickle. Each drives the real
`batchq` command and reads the state file, as an operator would see it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import (
    GitRepo,
    PayloadServer,
    SmtpServer,
    SmtpTrickler,
    batch_doc,
    batchq,
    profile_doc,
    wait_for,
)

HANG_BOUND = 120.0  # no server thread here waits longer than this, whatever happens



def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "reconciler", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def read_db(state: Path, sql: str, *args: Any) -> list[Any]:
    if not (state / "batchq.sqlite3").exists():
        return []
    with sqlite3.connect(state / "batchq.sqlite3") as c:
        try:
            return c.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def states(state: Path) -> dict[str, str]:
    return dict(read_db(state, "SELECT name, state FROM batches"))


def message(state: Path, name: str) -> str:
    rows = read_db(state, "SELECT status_json FROM batches WHERE name=?", name)
    return str(json.loads(rows[0][0])["message"]) if rows else ""


def meta(state: Path, key: str) -> str:
    rows = read_db(state, "SELECT value FROM meta WHERE key=?", key)
    return str(rows[0][0]) if rows else ""


@pytest.fixture
def no_ps(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has no `ps` or `pgrep` (as in a slim container image), so
    nothing can list a process's children to kill them one by one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for f in os.scandir(d):
            target = bin_dir / f.name
            if f.name not in ("ps", "pgrep", "pkill", "pidof") and not target.exists():
                target.symlink_to(f.path)
    env = dict(os.environ, PATH=str(bin_dir))
    assert shutil.which("git", path=env["PATH"]) and not shutil.which("ps", path=env["PATH"])
    return env


class GitHttpRemote:
    """The test's repository served over plain ("dumb") HTTP as /x.git; `hang()` makes the
    server accept each connection and answer nothing until `serve()`."""

    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.answer = threading.Event()
        self.answer.set()
        self.hung = 0  # requests left without an answer
        remote = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(repo.path / ".git"), **kwargs)

            def translate_path(self, path: str) -> str:
                return super().translate_path(path.split("?")[0].removeprefix("/x.git"))

            def do_GET(self) -> None:
                if not remote.answer.is_set():
                    remote.hung += 1
                    remote.answer.wait(HANG_BOUND)
                    return  # the connection closes without a word
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/x.git"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, message: str) -> None:
        """Commit what the test wrote and make it fetchable over dumb HTTP."""
        self.repo.commit(message)
        self.repo.git("update-server-info")

    def hang(self) -> None:
        self.answer.clear()

    def serve(self) -> None:
        self.answer.set()

    def close(self) -> None:
        self.answer.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def remote(git_repo: GitRepo) -> Iterator[GitHttpRemote]:
    server = GitHttpRemote(git_repo)
    yield server
    server.close()


def test_a_hanging_git_remote_fails_reconcile_at_its_deadline_and_keeps_the_last_good_state(
        remote: GitHttpRemote, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path,
        no_ps: dict[str, str]) -> None:
    state = tmp_path / "state"
    common = ["--repo", remote.url, "--state", str(state), "--smtp", smtp.hostport]
    remote.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    remote.repo.write("batches/a.yaml", batch_doc([payloads.add("a-1", b"a\n")]))
    remote.publish("submit a")
    first = batchq("reconcile", *common, "--until-idle", "--timeout", "60")
    assert first.returncode == 0, first.stderr
    assert states(state) == {"a": "Completed"}

    remote.hang()
    remote.repo.write("batches/b.yaml", batch_doc([payloads.add("b-1", b"b\n")]))
    remote.publish("submit b")
    # `subprocess.run`'s timeout bounds the test: the fetch must give up after 2 s by itself
    failed = batchq("reconcile", *common, "--once", "--git-timeout", "2", env=no_ps,
                    timeout=60)
    assert failed.returncode == 1
    assert (f"batchq: sync failed: cannot fetch branch main of {remote.url}: no answer within"
            " 2 s") in failed.stderr
    assert "Traceback" not in failed.stderr
    assert remote.hung >= 1
    assert states(state) == {"a": "Completed"}  # the last good state stays
    shown = batchq("status", "--state", str(state))
    assert f"sync error: cannot fetch branch main of {remote.url}: no answer within 2 s" in (
        shown.stderr)

    remote.serve()  # back: the commit it held up is synced and runs
    again = batchq("reconcile", *common, "--until-idle", "--timeout", "60", env=no_ps)
    assert again.returncode == 0, again.stderr
    assert states(state) == {"a": "Completed", "b": "Completed"}
    assert meta(state, "sync_error") == ""
    assert sorted(smtp.mailbox.subjects()) == ["Ingest: OK -- Submission Processed: a",
                                               "Ingest: OK -- Submission Processed: b"]


def test_run_goes_on_passing_while_the_git_remote_hangs(
        remote: GitHttpRemote, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path,
        no_ps: dict[str, str]) -> None:
    state = tmp_path / "state"
    remote.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    remote.repo.write("batches/c.yaml", batch_doc([payloads.add("c-1", b"c\n", gated=True)]))
    remote.publish("submit c")
    proc = start("run", "--repo", remote.url, "--state", str(state), "--smtp", smtp.hostport,
                 "--interval", "0.2", "--git-timeout", "1", env=no_ps)
    try:
        wait_for(lambda: "c-1" in payloads.requests, timeout=60, what="c's job to start")
        remote.hang()
        wait_for(lambda: "no answer within 1 s" in meta(state, "sync_error"), timeout=60,
                 what="a sync to fail at its deadline")
        hung = remote.hung
        payloads.release("c-1")  # the job ends while every fetch hangs
        wait_for(lambda: states(state).get("c") == "Completed", timeout=60,
                 what="c to complete while the remote hangs")
        wait_for(lambda: "Ingest: OK -- Submission Processed: c" in smtp.mailbox.subjects(),
                 timeout=30, what="c's report")
        assert remote.hung > hung  # passes went on fetching, and failing, meanwhile
        assert "no answer within 1 s" in meta(state, "sync_error")

        remote.serve()
        remote.repo.write("batches/d.yaml", batch_doc([payloads.add("d-1", b"d\n")]))
        remote.publish("submit d")
        wait_for(lambda: states(state).get("d") == "Completed", timeout=60,
                 what="the next commit to be synced once the remote answers")
        assert meta(state, "sync_error") == ""
    finally:
        stop(proc)



def test_a_trickling_smtp_server_does_not_hold_a_new_batch(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    trickler = SmtpTrickler(int(HANG_BOUND))
    state = tmp_path / "state"
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/first.yaml", batch_doc([payloads.add("f-1", b"f\n")]))
    git_repo.commit("submit first")
    # the SMTP deadline is far beyond what the test waits: only a loop that does not wait
    # for the email can take the next batch through
    proc = start("run", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
                 trickler.hostport, "--smtp-timeout", "600", "--interval", "0.2")
    try:
        wait_for(lambda: states(state).get("first") == "Completed", timeout=60,
                 what="the first batch to complete")
        wait_for(lambda: trickler.connections >= 1, timeout=30,
                 what="its report to be trickled at")
        git_repo.write("batches/second.yaml", batch_doc([payloads.add("s-1", b"s\n")]))
        git_repo.commit("submit second")
        wait_for(lambda: states(state).get("second") == "Completed", timeout=60,
                 what="the second batch to go through while the email trickles")
        assert payloads.requests.count("s-1") == 1
        assert trickler.connections == 1  # still the one delivery, still trickling
        assert message(state, "first").startswith("report queued for email")
        doc = json.loads(batchq("status", "--json", "--state", str(state)).stdout)
        emailed = {b["name"]: [r["emailed"] for r in b["reports"]] for b in doc["batches"]}
        assert emailed == {"first": [False], "second": [False]}  # nothing was delivered
    finally:
        stop(proc)
        trickler.close()



def test_a_hanging_manifest_server_delays_only_its_own_batch(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    items = [payloads.add(f"m-{i}", f"m {i}\n".encode()) for i in (1, 2)]
    # the manifest is served only once released: until then each request hangs
    url = payloads.add("manifest.yaml", yaml.safe_dump(items).encode(), gated=True)["url"]
    state = tmp_path / "state"
    profile = profile_doc(payloads.base)
    profile["spec"]["manifest"] = {"timeoutSeconds": 600}  # far beyond what the test waits
    git_repo.write("profiles/test.yaml", profile)
    # first in the queue: a loop that read the manifest inside the pass would wait for it
    git_repo.write("batches/remote.yaml", batch_doc(url=url, priority=1))
    git_repo.write("batches/inline.yaml", batch_doc([payloads.add("i-1", b"i\n")]))
    git_repo.commit("a manifest on a server that hangs, and an inline batch")
    args = ["run", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
            smtp.hostport, "--interval", "0.2"]
    proc = start(*args)
    try:
        wait_for(lambda: states(state).get("inline") == "Completed", timeout=60,
                 what="the inline batch to complete while the manifest hangs")
        assert states(state)["remote"] == "Processing"
        assert message(state, "remote") == f"downloading the manifest {url}"
        assert payloads.requests.count("manifest.yaml") == 1
        # the inline report is out and recorded first: this kill is about the download, not
        # the (separately tested) moment between an SMTP server's 250 and its record
        wait_for(lambda: read_db(state, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS"
                                        " NOT NULL") == [(1,)], timeout=30,
                 what="the inline report to be delivered")
        # killed mid-download: the next reconciler simply downloads again
        stop(proc)
        proc = start(*args)
        wait_for(lambda: payloads.requests.count("manifest.yaml") == 2, timeout=60,
                 what="the download to restart")
        payloads.release("manifest.yaml")
        wait_for(lambda: states(state).get("remote") == "Completed", timeout=60,
                 what="the remote batch to complete once its manifest arrives")
        rows = read_db(state, "SELECT item_id FROM items WHERE batch='remote' ORDER BY seq")
        assert rows == [("m-1",), ("m-2",)]
        wait_for(lambda: len(smtp.mailbox.messages) >= 2, timeout=30, what="both reports")
        assert sorted(smtp.mailbox.subjects()) == [
            "Ingest: OK -- Submission Processed: inline",
            "Ingest: OK -- Submission Processed: remote"]
    finally:
        stop(proc)


def test_a_hanging_object_manifest_delays_only_its_own_batch(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    # an mrt-batch-manifest whose one object manifest hangs until released (issue 8 §2):
    # object manifests are read in the batch's background download, never in a pass
    files = [payloads.add(f"o-{i}", f"o {i}\n".encode()) for i in (1, 2)]
    head = ("#%checkm_0.7\n#%profile | http://uc3.cdlib.org/registry/ingest/manifest/{}\n"
            "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize |"
            " nfo:fileLastModified | nfo:fileName\n")
    payloads.add("object.checkm", (head.format("mrt-ingest-manifest") + "".join(
        f"{f['url']} | sha256 | {f['digest']['value']} | {f['size']} | | {f['id']}\n"
        for f in files) + "#%eof\n").encode(), gated=True)
    url = payloads.add("batch.checkm", (head.format("mrt-batch-manifest")
                                        + f"{payloads.base}object.checkm | | | | | obj\n"
                                        "#%eof\n").encode())["url"]
    state = tmp_path / "state"
    profile = profile_doc(payloads.base)
    profile["spec"]["manifest"] = {"timeoutSeconds": 600}  # far beyond what the test waits
    git_repo.write("profiles/test.yaml", profile)
    git_repo.write("batches/remote.yaml", batch_doc(url=url, priority=1))
    git_repo.write("batches/inline.yaml", batch_doc([payloads.add("i-1", b"i\n")]))
    git_repo.commit("an object manifest on a server that hangs, and an inline batch")
    proc = start("run", "--repo", str(git_repo.path), "--state", str(state), "--interval",
                 "0.2")
    try:
        wait_for(lambda: states(state).get("inline") == "Completed", timeout=60,
                 what="the inline batch to complete while the object manifest hangs")
        assert states(state)["remote"] == "Processing"
        assert message(state, "remote") == f"downloading the manifest {url}"
        assert payloads.requests.count("object.checkm") == 1
        payloads.release("object.checkm")
        wait_for(lambda: states(state).get("remote") == "Completed", timeout=60,
                 what="the remote batch to complete once its object manifest arrives")
        assert sorted(r for r in payloads.requests if r.startswith("o-")) == ["o-1", "o-2"]
    finally:
        stop(proc)
