"""Report email as Postfix delivers it: per recipient, 5xx final, 4xx retried with back-off
up to a maximum age, an overall deadline per transaction. Every server here is a real
SMTP server on loopback (aiosmtpd, or a raw socket) that misbehaves on purpose, and the
outcome is read back through `batchq status`, `status --json` and the batch page."""

from __future__ import annotations

import email
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController

from reconciler.store.backends import BackendSettings, store_factory
from reconciler.store.base import Delivery, RecipientState
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import (
    GitRepo,
    PayloadServer,
    SmtpTrickler,
    batch_doc,
    free_port,
    profile_doc,
    wait_for,
)
from tests.harness import Harness
from web.app import create_app

GONE = "gone@example.org"  # the address the misbehaving servers refuse
DEPOSITOR = "jane@example.org"
ADMIN_BCC = "ops@example.org"  # profile_doc's bccAdmins


class Scripted:
    """An aiosmtpd handler: RCPT and DATA replies scripted per test, everything recorded."""

    def __init__(self, rcpt: dict[str, list[str]] | None = None,
                 data: list[str] | None = None) -> None:
        self.rcpt = rcpt or {}  # address -> replies to give first, in order (then 250)
        self.data = data or []  # replies to DATA to give first, in order (then 250)
        self.rcpt_seen: list[str] = []
        self.data_seen = 0
        self.messages: list[Message] = []
        self.envelopes: list[list[str]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.rcpt_seen.append(address)
        script = self.rcpt.get(address)
        if script:
            return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_seen += 1
        if self.data:
            return self.data.pop(0)
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class ScriptedServer:
    def __init__(self, handler: Scripted) -> None:
        self.handler = handler
        self.port = free_port()
        self.ctl = SmtpController(handler, hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.ctl.stop()



def submit(h: Harness, payloads: PayloadServer, name: str, **notification: Any) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base, **notification))
    h.repo.write(f"batches/{name}.yaml", batch_doc([payloads.add(f"{name}-1", b"one\n")]))
    h.repo.commit(f"submit {name}")


def states(h: Harness, name: str) -> dict[str, RecipientState]:
    [report] = h.store.list_reports(name)
    return {r.address: r for r in h.store.recipient_states(report.id)}


def status_cli(state: Path, *args: str) -> str:
    env = dict(os.environ, BATCHQ_STATE=str(state))
    out = subprocess.run([sys.executable, "-m", "reconciler", "status", *args], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


def page(state: Path, name: str) -> str:
    app = create_app({"STORE_FACTORY": store_factory(BackendSettings(state_dir=state))[0],
                      "STATE_DIR": state, "TESTING": True})
    resp = app.test_client().get(f"/batches/{name}")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


@pytest.fixture
def harness(git_repo: GitRepo, tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(smtp: str, **settings: Any) -> Harness:
        h = Harness(git_repo, tmp_path / "state", smtp, **settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_a_partial_refusal_is_recorded_per_recipient_and_never_sent_again(
        harness: Any, payloads: PayloadServer, tmp_path: Path) -> None:
    server = ScriptedServer(Scripted(rcpt={GONE: ["550 5.1.1 <gone@example.org>: no such user"]}))
    try:
        h: Harness = harness(server.hostport)
        submit(h, payloads, "part", recipients=[GONE])
        h.until_idle()
        assert h.state("part") == "Completed"
        [msg] = server.handler.messages
        assert msg["Subject"] == "Ingest: OK -- Submission Processed: part"
        assert server.handler.envelopes == [[DEPOSITOR, ADMIN_BCC]]
        got = states(h, "part")
        assert {a: (r.state, r.code) for a, r in got.items()} == {
            DEPOSITOR: (Delivery.DELIVERED, 250), GONE: (Delivery.BOUNCED, 550),
            ADMIN_BCC: (Delivery.DELIVERED, 250)}
        assert got[GONE].detail == "550 5.1.1 <gone@example.org>: no such user"
        # closed: not due even far in the future, so nobody gets it twice, after a restart too
        assert h.store.pending_outbox(now=1e12) == []
        h.restart()
        h.until_idle()
        assert h.rec.deliver() == 0
        assert len(server.handler.messages) == 1
        assert server.handler.rcpt_seen == [DEPOSITOR, GONE, ADMIN_BCC]
    finally:
        server.stop()

    state = tmp_path / "state"
    [report] = json.loads(status_cli(state, "part", "--json"))["batches"][0]["reports"]
    assert report["emailed"] is True
    assert [(d["recipient"], d["state"], d["code"]) for d in report["delivery"]] == [
        (DEPOSITOR, "delivered", 250), (GONE, "bounced", 550), (ADMIN_BCC, "delivered", 250)]
    text = status_cli(state, "part")
    assert (f"to {GONE}: undeliverable: refused by the server, not retried (1 attempt,"
            in text)
    assert "550 5.1.1 <gone@example.org>: no such user" in text
    html = page(state, "part")
    assert "emailed to some recipients; undeliverable to the others" in html
    assert "550 5.1.1 &lt;gone@example.org&gt;: no such user" in html


def test_a_4xx_is_retried_with_back_off_until_the_server_accepts(
        harness: Any, payloads: PayloadServer, tmp_path: Path) -> None:
    greylist = "451 4.7.1 greylisted, try again later"
    server = ScriptedServer(Scripted(rcpt={DEPOSITOR: [greylist, greylist]}))
    try:
        h: Harness = harness(server.hostport, smtp_backoff=1.0)
        submit(h, payloads, "grey")
        h.until_idle()  # the first attempt is deferred, and nothing is due for a while
        first = states(h, "grey")
        assert (first[DEPOSITOR].state, first[DEPOSITOR].code) == (Delivery.DEFERRED, 451)
        assert first[ADMIN_BCC].state == Delivery.DELIVERED  # accepted in that same try
        assert server.handler.envelopes == [[ADMIN_BCC]]
        assert "deferred, will be tried again" in status_cli(tmp_path / "state", "grey")
        at, backoff = first[DEPOSITOR].at, 1.0 * 2 ** (first[DEPOSITOR].attempts - 1)
        assert h.store.pending_outbox(now=at + backoff - 0.01) == []  # 1 s, 2 s, 4 s, ...
        assert len(h.store.pending_outbox(now=at + backoff + 0.01)) == 1
        wait_for(lambda: states(h, "grey")[DEPOSITOR].state == Delivery.DELIVERED,
                 timeout=60, step=h.rec.deliver, what="the third attempt to be accepted")
        final = states(h, "grey")
        assert (final[DEPOSITOR].attempts, final[ADMIN_BCC].attempts) == (3, 1)
        # the accepted bcc never got it again: two messages, one per recipient
        assert server.handler.envelopes == [[ADMIN_BCC], [DEPOSITOR]]
        assert server.handler.rcpt_seen == [DEPOSITOR, ADMIN_BCC, DEPOSITOR, DEPOSITOR]
        assert h.store.pending_outbox(now=1e12) == []
    finally:
        server.stop()


def test_a_4xx_past_the_maximum_age_is_given_up_visibly(
        harness: Any, payloads: PayloadServer, tmp_path: Path) -> None:
    server = ScriptedServer(Scripted(rcpt={DEPOSITOR: ["451 4.3.0 mailbox busy"] * 1000,
                                           ADMIN_BCC: ["451 4.3.0 mailbox busy"] * 1000}))
    try:
        h: Harness = harness(server.hostport, smtp_backoff=0.05, smtp_max_age=1.0)
        submit(h, payloads, "old")
        h.until_idle()
        wait_for(lambda: all(r.state == Delivery.EXPIRED for r in states(h, "old").values()),
                 timeout=60, step=h.rec.deliver, what="the email to be given up")
        tries = len(server.handler.rcpt_seen)
        assert h.store.pending_outbox(now=1e12) == []
        assert h.rec.deliver() == 0
        assert len(server.handler.rcpt_seen) == tries  # not tried again
        assert server.handler.messages == []
    finally:
        server.stop()
    detail = states(h, "old")[DEPOSITOR].detail
    assert detail.startswith("gave up after ") and detail.endswith(": 451 4.3.0 mailbox busy")
    [report] = json.loads(status_cli(tmp_path / "state", "old", "--json"))[
        "batches"][0]["reports"]
    assert report["emailed"] is False
    assert {d["state"] for d in report["delivery"]} == {"expired"}
    assert "undeliverable: given up after the maximum age" in status_cli(tmp_path / "state")
    assert ">undeliverable</strong>" in page(tmp_path / "state", "old")


def test_a_5xx_to_data_bounces_every_recipient_and_is_not_retried(
        harness: Any, payloads: PayloadServer, tmp_path: Path) -> None:
    server = ScriptedServer(Scripted(data=["554 5.6.0 message content rejected"]))
    try:
        h: Harness = harness(server.hostport)
        submit(h, payloads, "rej")
        h.until_idle()
        got = states(h, "rej")
        assert {(r.state, r.detail) for r in got.values()} == {
            (Delivery.BOUNCED, "554 5.6.0 message content rejected")}
        assert h.store.pending_outbox(now=1e12) == []
        h.until_idle()
        assert h.rec.deliver() == 0
        assert server.handler.data_seen == 1
        assert server.handler.messages == []
    finally:
        server.stop()
    assert h.state("rej") == "Completed"  # the batch's own outcome stands
    assert h.batch("rej").status.message.startswith("report queued for email")
    [report] = json.loads(status_cli(tmp_path / "state", "rej", "--json"))[
        "batches"][0]["reports"]
    assert report["emailed"] is False
    assert "undeliverable" in page(tmp_path / "state", "rej")


def test_a_server_that_trickles_its_greeting_is_cut_at_the_deadline(
        harness: Any, payloads: PayloadServer, tmp_path: Path) -> None:
    trickler = SmtpTrickler()
    try:
        h: Harness = harness(trickler.hostport, smtp_timeout=1.5)
        submit(h, payloads, "trick")
        h.until_idle()  # one attempt, cut at 1.5 s, deferred
        got = states(h, "trick")
        assert {(r.state, r.detail) for r in got.values()} == {
            (Delivery.DEFERRED, f"no answer within 1.5 s from {trickler.hostport}")}
        assert trickler.connections == 1
    finally:
        trickler.close()


def test_a_state_file_from_before_per_recipient_delivery_keeps_its_outbox(
        tmp_path: Path) -> None:
    """The outbox of an older release: what was delivered stays closed, what waited waits."""
    path = tmp_path / "batchq.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE outbox (report_id TEXT PRIMARY KEY, batch TEXT NOT NULL,"
                   " message BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error"
                   " TEXT NOT NULL DEFAULT '', next_attempt_at REAL NOT NULL DEFAULT 0,"
                   " delivered_at REAL)")
        db.execute("INSERT INTO outbox VALUES ('a:1', 'a', x'00', 1, '', 0, 1700000000)")
        db.execute("INSERT INTO outbox VALUES ('b:1', 'b', x'00', 2, 'refused', 0, NULL)")
    store = SqliteStore(path)
    try:
        assert [e.report_id for e in store.pending_outbox(now=1e12)] == ["b:1"]
        assert (store.delivered("a:1"), store.delivered("b:1")) == (True, False)
        assert store.outbox_stats() == {"delivered": 1, "failed": 2, "waiting": 1}
    finally:
        store.close()
