"""`batchq web` as it runs in production: gunicorn's master and worker processes, over real
HTTP on 127.0.0.1, on a state dir the real reconciler filled from a real Git repository.

What is proved: the pages, the API, /healthz and /metrics are served by gunicorn with
two workers; a signed push webhook leaves `sync-requested` and an unsigned one is refused;
SIGTERM stops the server with exit 0 while a request is in flight, and that request is
answered; access lines come out in the project's text and JSON formats; werkzeug stays
available as the development server; bad option values get a one-line error.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import (
    GitRepo,
    PayloadServer,
    batch_doc,
    batchq,
    free_port,
    profile_doc,
    wait_for,
)

SECRET = "a shared webhook secret"
BATCHES = ("maps", "photos")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two completed batches, reconciled by `batchq reconcile` from a real repository."""
    root = tmp_path_factory.mktemp("site")
    payloads = PayloadServer()
    try:
        repo = GitRepo(root / "repo")
        repo.write("profiles/test.yaml", profile_doc(payloads.base))
        for name in BATCHES:
            items = [payloads.add(f"{name}-{i}", f"{name} {i}\n".encode()) for i in (1, 2)]
            repo.write(f"batches/{name}.yaml", batch_doc(items))
        repo.commit("submit")
        done = batchq("reconcile", "--repo", str(repo.path), "--state", str(root / "state"),
                      "--until-idle", "--timeout", "120")
        assert done.returncode == 0, done.stderr
    finally:
        payloads.close()
    yield root / "state"


class Site:
    """A `batchq web` process; its log (stderr) goes to a file the test reads."""

    def __init__(self, state: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "BATCHQ_WEBHOOK_SECRET": SECRET}
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "web", "--state", str(state),
                 "--listen", f"127.0.0.1:{self.port}", *args],
                stdout=sink, stderr=subprocess.STDOUT, env=env)
        wait_for(self.answers, 60, what="the site to answer", detail=self.text)

    def text(self) -> str:
        return self.log.read_text()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"batchq web exited {self.proc.returncode}:\n{self.text()}")
        try:
            conn = self.connect()
            conn.request("GET", "/livez")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": "push",
            "Content-Type": "application/json", "Content-Length": str(len(body))}


def test_gunicorn_workers_serve_every_route_and_log_json_access_lines(
        state: Path, tmp_path: Path) -> None:
    (state / "sync-requested").unlink(missing_ok=True)
    site = Site(state, tmp_path / "web.log", "--workers", "2", "--access-log",
                "--log-format", "json")
    try:
        workers = wait_for(lambda: len(children(site.proc.pid)) >= 2 and
                           children(site.proc.pid), 30, what="two worker processes")
        assert len(workers) == 2, workers

        code, headers, body = site.get("/")
        assert code == 200 and headers["Server"].startswith("gunicorn"), headers
        assert all(name in body.decode() for name in BATCHES)
        code, headers, body = site.get("/api/batches")
        assert code == 200 and headers["Server"].startswith("gunicorn")
        listed = json.loads(body)
        assert {b["name"]: b["state"] for b in listed["batches"]} == dict.fromkeys(
            BATCHES, "Completed")
        code, _, body = site.get("/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok", body
        code, _, body = site.get("/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        completed = [s.value for s in families["batchq_batches"].samples
                     if s.labels["state"] == "Completed"]
        assert completed == [2.0]

        unsigned = json.dumps({"ref": "refs/heads/main"}).encode()
        conn = site.connect()
        conn.request("POST", "/hooks/git", body=unsigned,
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 401
        conn.close()
        assert not (state / "sync-requested").exists()

        site.proc.send_signal(signal.SIGTERM)
        assert site.proc.wait(60) == 0, site.text()
    finally:
        site.stop()
    lines = [json.loads(line) for line in site.text().splitlines() if line.startswith("{")]
    served = {(r["method"], r["path"], r["status"]) for r in lines
              if r.get("event") == "request" and r["logger"] == "gunicorn.access"}
    assert {("GET", "/", 200), ("GET", "/api/batches", 200), ("GET", "/healthz", 200),
            ("GET", "/metrics", 200), ("POST", "/hooks/git", 401)} <= served, lines
    request = next(r for r in lines if r.get("path") == "/api/batches")
    assert request["bytes"] > 0 and request["seconds"] >= 0 and request["time"].endswith("Z")
    assert "Shutting down: Master" in {r["message"] for r in lines}


def read_by_the_server(port: int, client: socket.socket) -> bool:
    """Has the server accepted `client`'s connection to `port` and read all it was sent?
    In /proc/net/tcp a connection still in the listen backlog has no inode (nothing holds
    it), and rx_queue counts the bytes the server has not read yet. Only then is a request
    in flight: one still in the backlog is reset when the server stops listening."""
    want_local = f"0100007F:{port:04X}"
    want_remote = f"0100007F:{client.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote:
            return fields[9] != "0" and int(fields[4].split(":")[1], 16) == 0
    return False


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
        state: Path, tmp_path: Path) -> None:
    """A signed webhook whose body is still arriving when the server gets SIGTERM is
    answered (202, `sync-requested` written), and then the server exits 0. One worker, so
    the probe connection shows when that worker has begun its graceful stop."""
    (state / "sync-requested").unlink(missing_ok=True)
    site = Site(state, tmp_path / "web.log", "--workers", "1", "--access-log",
                "--graceful-timeout", "20")
    try:
        probe = site.connect()
        probe.request("GET", "/livez")
        assert probe.getresponse().read() and probe.sock is not None  # kept alive
        body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
        hook = socket.create_connection(("127.0.0.1", site.port), timeout=30)
        head = "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
        hook.sendall(f"POST /hooks/git HTTP/1.1\r\nHost: site\r\n{head}\r\n".encode()
                     + body[:10])
        wait_for(lambda: read_by_the_server(site.port, hook), 30,
                 what="the worker to read the webhook's head", detail=site.text)

        site.proc.send_signal(signal.SIGTERM)

        def stopping() -> bool:
            """The worker answers a kept-alive connection with `Connection: close` once
            it is stopping."""
            probe.request("GET", "/livez")
            resp = probe.getresponse()
            resp.read()
            return resp.getheader("Connection", "").lower() == "close"

        wait_for(stopping, 30, what="the worker to begin its graceful stop",
                 detail=site.text)
        assert not (state / "sync-requested").exists()  # the request is still in flight
        hook.sendall(body[10:])
        answer = hook.makefile("rb").read()
        hook.close()
        assert answer.startswith(b"HTTP/1.1 202 "), answer
        assert b'"sync requested"' in answer
        assert (state / "sync-requested").exists()
        assert site.proc.wait(30) == 0, site.text()
    finally:
        site.stop()
    log = site.text()
    assert "INFO gunicorn.access: request method=POST path=/hooks/git status=202" in log, log
    assert "Traceback" not in log


def test_the_werkzeug_development_server_stays_available(state: Path, tmp_path: Path) -> None:
    site = Site(state, tmp_path / "web.log", "--server", "werkzeug")
    try:
        code, headers, body = site.get("/api/batches")
        assert code == 200 and headers["Server"].startswith("Werkzeug"), headers
        assert len(json.loads(body)["batches"]) == len(BATCHES)
    finally:
        site.stop()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--workers", "0", "argument --workers: 0 is less than 1: give 1 or more"),
    ("--threads", "many", "argument --threads: 'many' is not a whole number"),
    ("--server", "flask", "argument --server: invalid choice: 'flask'"),
])
def test_bad_server_options_get_one_line(tmp_path: Path, flag: str, value: str,
                                         message: str) -> None:
    run = batchq("web", "--state", str(tmp_path), flag, value)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
