"""Real parts for tests: Git repositories, an SMTP server, a payload server with gates."""

from __future__ import annotations

import email
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiosmtpd.controller import Controller as SmtpController

T = TypeVar("T")
DEPOSITOR = ("Jane Depositor", "jane@example.org")
ADMIN = ("Alex Admin", "admin@example.org")


class GitRepo:
    """A real repository on disk; the tests commit to it as depositor or admin."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)
        self._tick = 1_700_000_000

    def git(self, *args: str, who: tuple[str, str] = DEPOSITOR) -> str:
        self._tick = getattr(self, "_tick", 1_700_000_000) + 60
        env = dict(os.environ)
        env.update(GIT_AUTHOR_NAME=who[0], GIT_AUTHOR_EMAIL=who[1], GIT_COMMITTER_NAME=who[0],
                   GIT_COMMITTER_EMAIL=who[1], GIT_AUTHOR_DATE=f"@{self._tick} +0000",
                   GIT_COMMITTER_DATE=f"@{self._tick} +0000")
        out = subprocess.run(["git", *args], cwd=self.path, env=env, check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def write(self, rel: str, content: str | bytes | dict[str, Any]) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)

    def remove(self, rel: str) -> None:
        (self.path / rel).unlink()

    def commit(self, message: str, who: tuple[str, str] = DEPOSITOR) -> str:
        self.git("add", "-A", who=who)
        self.git("commit", "-q", "--allow-empty", "-m", message, who=who)
        return self.git("rev-parse", "HEAD")

    def edit_batch(self, rel: str, who: tuple[str, str] = ADMIN, **spec: Any) -> str:
        data = yaml.safe_load((self.path / rel).read_text())
        data["spec"].update(spec)
        self.write(rel, data)
        return self.commit(f"admin: {rel}: {spec}", who=who)


@dataclass
class Mailbox:
    """What the loopback SMTP server received."""

    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpServer:
    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self._ctl: SmtpController | None = None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._ctl = SmtpController(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._ctl.start()

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.stop()
            self._ctl = None


class PayloadServer:
    """Serves payloads over HTTP; a gated path answers only once the test releases it."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gates: dict[str, threading.Event] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                outer.requests.append(name)
                gate = outer.gates.get(name)
                if gate is not None:
                    gate.wait(120)
                body = outer.files.get(name)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def add(self, name: str, body: bytes, *, gated: bool = False) -> dict[str, Any]:
        """Serve `body` at /name; return the manifest item for it (digest of `body`)."""
        self.files[name] = body
        if gated:
            self.gates[name] = threading.Event()
        return {"id": name, "url": self.base + name, "title": f"Title of {name}",
                "size": len(body),
                "digest": {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()}}

    def release(self, *names: str) -> None:
        for n in names:
            self.gates[n].set()

    def close(self) -> None:
        for g in self.gates.values():
            g.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(pred: Callable[[], T], timeout: float = 30.0, step: Callable[[], object] | None = None,
             what: str = "", *, interval: float = 0.05,
             detail: Callable[[], str] | None = None) -> T:
    """The one way tests wait: call `step` (if any) then `pred` until `pred` returns something
    truthy, and return it; every `interval` seconds, for at most `timeout` seconds, then fail
    naming `what` (and `detail()`, e.g. a log tail). Never a fixed sleep: a test waits for
    the condition it needs, as long as it takes and no longer."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}{more}")
        time.sleep(interval)


def profile_doc(prefix: str, **notification: Any) -> dict[str, Any]:
    notif = {"from": "batchq@example.org", "bccAdmins": ["ops@example.org"]}
    notif.update(notification)
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
            "spec": {"allowedUrlPrefixes": [prefix], "notification": notif}}


def logging_profile_doc(runs: Path, after: str = "") -> dict[str, Any]:
    """Profile "test" whose job appends its item's id to `runs` (then runs the shell
    command `after`): the file says which items ran, and how often."""
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
            "spec": {"job": {"command": ["/bin/sh", "-c",
                                         f'echo "$BATCHQ_ITEM_ID" >> {runs}{after}']},
                     "allowedUrlPrefixes": ["http://127.0.0.1/"],
                     "notification": {"from": "batchq@example.org"}}}


def queue_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": spec}


def batch_doc(items: list[dict[str, Any]] | None = None, url: str | None = None,
              **spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {"items": items} if items is not None else {"url": url}
    body: dict[str, Any] = {"profile": "test",
                            "depositor": {"name": DEPOSITOR[0], "email": DEPOSITOR[1]},
                            "manifest": manifest}
    body.update(spec)
    return {"apiVersion": "batchq.dev/v1", "kind": "Batch", "spec": body}


def batchq(*args: str, env: dict[str, str] | None = None, failpoint: str = "",
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real `batchq` command in a process of its own (`python -m reconciler ARGS`):
    `env` is laid over this process's environment; `failpoint` arms BATCHQ_FAILPOINTS."""
    full = {**os.environ, **(env or {})}
    if failpoint:
        full["BATCHQ_FAILPOINTS"] = failpoint
    return subprocess.run([sys.executable, "-m", "reconciler", *args], env=full,
                          capture_output=True, text=True, timeout=timeout)


class SmtpTrickler:
    """An SMTP server that accepts, then sends its greeting one byte a second and never
    ends the line (at most `seconds` bytes), until `close`."""

    def __init__(self, seconds: int = 120) -> None:
        self.seconds = seconds
        self.stop = threading.Event()
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.hostport = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            for byte in b"220 " + b"z" * self.seconds:
                if self.stop.wait(1.0):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
