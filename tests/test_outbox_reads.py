"""What the mailer reads on every pass costs what is waiting, not what was ever sent.

The mailer is asked after every pass for the messages due (`pending_outbox`); before the
`outbox_waiting` index that read walked every message ever queued, so an installation that
had sent 100,000 reports paid for them on each pass. Measured in SQLite's virtual-machine
steps (deterministic): the read with 2,000 messages delivered costs what it costs with 20.

Writing a message to the outbox directory needs only its recipients: `Envelope.of` reads
the headers, and the bytes sent over SMTP (without Bcc) are made only when it is sent. Both
are compared here with the email package's parse of the whole message.
"""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

import pytest

from reconciler.control.smtp import Envelope
from reconciler.store.base import Delivery, RecipientState
from reconciler.store.local.sqlite import SqliteStore
from tests.test_store_batch_reads import vm_steps
from tests.test_store_contract import apply, report, spec


def store_with_history(tmp_path: Path, delivered: int) -> SqliteStore:
    """A store whose outbox holds `delivered` messages sent and one still waiting."""
    store = SqliteStore(tmp_path / f"{delivered}.db")
    with store.transaction():
        for n in range(delivered + 1):
            name = f"b{n:05d}"
            apply(store, name, spec("i"))
            store.save_report(report(name, 1, emailed=True))
            if n < delivered:
                sent = RecipientState("d@x", Delivery.DELIVERED, 250, "ok", 1, time.time())
                store.record_delivery(f"{name}:1", [sent], error="", retry_at=None)
    return store


def test_the_messages_due_are_read_without_walking_those_sent(tmp_path: Path) -> None:
    small, big = store_with_history(tmp_path, 20), store_with_history(tmp_path, 2_000)
    try:
        costs = []
        for store, waiting in ((small, "b00020:1"), (big, "b02000:1")):
            assert [e.report_id for e in store.pending_outbox(time.time())] == [waiting]
            costs.append(vm_steps(store.db, lambda: store.pending_outbox(  # noqa: B023
                time.time())))
        assert costs[1] < 1.5 * costs[0], costs  # before: about 40 times as many
    finally:
        small.close()
        big.close()


MESSAGES = {
    "plain": b"From: batchq@example.org\nTo: jane@example.org\nSubject: hi\n\nbody\n",
    "cc, bcc and a folded To": (
        b"From: Batch Q <batchq@example.org>\nTo: Jane <jane@example.org>,\n"
        b" \"Doe, John\" <john@example.org>\nCc: ops@example.org\n"
        b"Bcc: audit@example.org, jane@example.org\nSubject: hi\n\nbody\n"),
    "encoded names and a Sender": (
        "Sender: relay@example.org\nFrom: =?utf-8?q?Jos=C3=A9?= <jose@example.org>\n"
        "To: =?utf-8?b?w4lsb2TDrWU=?= <elodie@example.org>\nSubject: x\n"
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
        "--B\nContent-Type: text/plain; charset=utf-8\n\nh\u00e9\n--B--\n").encode(),
    "a non-ASCII address": (
        "From: batchq@example.org\nTo: j\u00fcrgen@b\u00fccher.example\nSubject: x\n\nb\n"
    ).encode(),
    "no recipient": b"From: batchq@example.org\nSubject: x\n\nbody\n",
    "CRLF, and a body line that looks like a header": (
        b"From: batchq@example.org\r\nTo: jane@example.org,\r\n john@example.org\r\n"
        b"Subject: x\r\n\r\nTo: body@example.org\r\nCc: body@example.org\r\n"),
    "no body at all": b"From: batchq@example.org\nTo: jane@example.org\nSubject: x\n",
}


@pytest.mark.parametrize("raw", MESSAGES.values(), ids=list(MESSAGES))
def test_the_envelope_from_the_headers_is_that_of_the_whole_message(raw: bytes) -> None:
    whole = message_from_bytes(raw, policy=policy.SMTP)
    assert isinstance(whole, EmailMessage)
    header = whole.get_all("Sender") or whole.get_all("From") or []
    sender = next(a for _, a in getaddresses([str(v) for v in header]) if a)
    recipients: list[str] = []
    for field in ("To", "Cc", "Bcc"):
        for _, address in getaddresses([str(v) for v in whole.get_all(field) or []]):
            if address not in recipients:
                recipients.append(address)
    envelope = Envelope.of(raw)
    assert (envelope.sender, list(envelope.recipients)) == (sender, recipients)
    international = any(not a.isascii() for a in [sender, *recipients])
    assert envelope.international is international
    del whole["Bcc"]
    assert envelope.data == whole.as_bytes(
        policy=policy.SMTPUTF8 if international else policy.SMTP)
    assert b"audit@example.org" not in envelope.data
