"""The report email's fast path against the `email` package's default policy, byte for byte.

`reportmail` writes a plain report message directly instead of through `EmailMessage`
(6 ms of CPU per report before). A differential test: for hostile and non-ASCII inputs
(long subjects that fold, non-ASCII and quoted display names, encoded-word look-alikes,
CR/LF and controls in fields, long and non-ASCII body lines, a body line that is the MIME
boundary, 10,000-item batches), whatever the fast path writes must be exactly what the
package writes with the same boundary, and a whole report must be the bytes the code
before it built with `EmailMessage` (the same random boundary from the same seed).
"""

from __future__ import annotations

import itertools
import json
import random
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

import pytest

from reconciler.control.reportmail import (
    Header,
    Mailbox,
    fast_message,
    reference_message,
    report_message,
)
from reconciler.control.reports import _item_json, _json_array, build_report, message_id
from reconciler.domain.model import (
    Batch,
    BatchSpec,
    Depositor,
    Item,
    ItemStatus,
    Notification,
    Profile,
)
from reconciler.domain.states import JobState
from reconciler.support.controlchars import escape_controls

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network

BOUNDARY = "===============1234567890123456789=="
NOW = 1_764_000_000.25

SUBJECTS = [
    "Ingest: OK -- Submission Processed: maps-2026-11",
    "Ingest: FAIL -- Submission Failed: " + "a" * 43,  # the line is 78 long: not folded
    "Ingest: FAIL -- Submission Failed: " + "a" * 44,  # 79: folded
    "Ingest: FAIL -- Batch File Invalid: " + "long-name-" * 20,
    "Ingest: OK -- Submission Processed: Café Ñandú — 東京",
    "Ingest: OK -- Submission Processed: =?utf-8?q?forged?=",
    "Ingest: OK -- Submission Processed: " + escape_controls("a\r\nBcc: evil@example.org"),
    "Ingest: OK -- Submission Processed: " + escape_controls("tab\there\x1b[31m"),
    "Ingest:  OK  --  two  spaces",
    "Ingest: OK -- trailing space ",
    " leading space",
    'Ingest: OK -- "quoted" (comment) <angle> a;b,c:d@e.f [x]\\',
    'a "b" (c) <d> e;f,g:h@i.j [k]\\ =x ?y %z ~!',  # specials, short: not folded
    "",
]
SENDERS = [
    Mailbox("batchq@example.org"),
    Mailbox("batchq@example.org", "Batch Queue"),
    Mailbox("batchq@example.org", "Queue, The"),
    Mailbox("batchq@example.org", "Zoë Ångström"),
    Mailbox("batchq@example.org", 'The "Queue"'),
    Mailbox("batchq@example.org", "=?utf-8?q?forged?="),
    Mailbox("batchq@example.org", "Dr. Queue"),
    Mailbox("batchq@example.org", "A very long display name for the batch queue's sender"),
    Mailbox("first.last+tag@sub.example.org", "First Last"),
]
RECIPIENTS = [
    "jane@example.org",
    "jane@example.org, ops@example.org",
    ", ".join(f"depositor-{n}@archive.example.org" for n in range(10)),
    "undisclosed-recipients:;",
    "o'brien+x@example.org",
]
BODIES = [
    "Batch: maps\n\nITEM  STATE\nmap-1  Completed\n",
    "Depositor:  Zoë Ångström <zoe@example.org>\nTitle: 東京の地図\n",
    "A line longer than seventy-eight octets, as a long message column makes it: " * 2 + "\n",
    "Non-ASCII and long: " + "é" * 80 + "\n",
    "Exactly seventy-eight octets long, not one more, so it stays seven bit: xxxxx\n",
    f"A body that holds the boundary:\n--{BOUNDARY}\n",
    f"A body that holds the closing boundary:\n--{BOUNDARY}--\n",
    f"--{BOUNDARY}",  # the first and last line
    f"Not boundary lines: --{BOUNDARY}\n--{BOUNDARY}x\n--{BOUNDARY}--x\n-{BOUNDARY}\n",
    f"A boundary line that ends in CR LF:\r\n--{BOUNDARY}\r\n",
    "From the archive: a line that starts with From\nFrom here\n",
    "No final line break",
    "\n\n\n",
]


def headers(subject: str, sender: Mailbox, to: str, extra: bool) -> list[Header]:
    out: list[Header] = [("Subject", subject), ("From", sender), ("To", to)]
    if extra:
        out += [("Bcc", "admin@example.org, audit@example.org"),
                ("Reply-To", Mailbox("help@example.org", "Help Desk"))]
    out += [("Date", formatdate(NOW, usegmt=True)),
            ("Message-ID", "<maps-2026-11.0f3a.2@example.net>"),
            ("X-Batchq-Report", "maps-2026-11:0f3a:2")]
    return out


ATTACHMENTS = [("completed.json", json.dumps([{"id": "a", "title": "Zoë"}], indent=2).encode()),
               ("failed.json", b"[]")]


def test_the_fast_path_writes_what_the_package_writes_or_stands_aside() -> None:
    fast_taken = 0
    for subject, sender, to, extra in itertools.product(SUBJECTS, SENDERS, RECIPIENTS,
                                                        (False, True)):
        hs = headers(subject, sender, to, extra)
        fast = fast_message(hs, BODIES[0], ATTACHMENTS, BOUNDARY)
        if fast is not None:
            fast_taken += 1
            assert fast == reference_message(hs, BODIES[0], ATTACHMENTS, BOUNDARY), hs
    for body in BODIES:
        hs = headers(SUBJECTS[0], SENDERS[1], RECIPIENTS[1], True)
        fast = fast_message(hs, body, ATTACHMENTS, BOUNDARY)
        if fast is not None:
            fast_taken += 1
            assert fast == reference_message(hs, body, ATTACHMENTS, BOUNDARY), repr(body)
    for mid in ("<a.b-c@example.net>", "<a.b@[127.0.0.1]>", "<a b@example.net>", "a@b",
                "<" + "x" * 70 + "@example.net>", "<=?utf-8?q?x?=@example.net>", "<a@b>c"):
        hs = [(n, mid if n == "Message-ID" else v)
              for n, v in headers(SUBJECTS[0], SENDERS[0], RECIPIENTS[0], False)]
        fast = fast_message(hs, BODIES[0], ATTACHMENTS, BOUNDARY)
        if fast is not None:
            fast_taken += 1
            assert fast == reference_message(hs, BODIES[0], ATTACHMENTS, BOUNDARY), mid
    assert fast_taken >= 70  # the plain inputs do take it (the test is not vacuous)


@pytest.mark.parametrize("body", BODIES)
def test_plain_reports_take_the_fast_path_and_hostile_ones_do_not(body: str) -> None:
    plain = headers(SUBJECTS[0], SENDERS[1], RECIPIENTS[1], True)
    fast = fast_message(plain, body, ATTACHMENTS, BOUNDARY)
    lines = body.splitlines()
    expected_fast = not {f"--{BOUNDARY}", f"--{BOUNDARY}--"} & set(lines) and all(
        len(line.encode()) <= 78 for line in lines)
    assert (fast is not None) == expected_fast


@pytest.mark.parametrize("seed", range(3))
def test_a_whole_message_is_the_package_s_with_the_same_random_boundary(seed: int) -> None:
    """report_message draws its boundary as the generator does: from the same random
    state, the same bytes, on the fast path and on the package's."""
    for subject, sender, body in itertools.product(SUBJECTS, SENDERS[:4], BODIES):
        hs = headers(subject, sender, RECIPIENTS[1], False)
        random.seed(seed)
        ours = report_message(hs, body, ATTACHMENTS)
        random.seed(seed)
        assert ours == reference_message(hs, body, ATTACHMENTS), (subject, sender, body)


def test_a_body_line_that_is_the_drawn_boundary_gets_the_package_s_next_one() -> None:
    random.seed(7)
    drawn = "=" * 15 + f"{random.randrange(2**63 - 1):019d}" + "=="
    body = f"--{drawn}\n"
    hs = headers(SUBJECTS[0], SENDERS[0], RECIPIENTS[0], False)
    random.seed(7)
    ours = report_message(hs, body, ATTACHMENTS)
    random.seed(7)
    assert ours == reference_message(hs, body, ATTACHMENTS)
    assert f'boundary="{drawn}.0"' in ours.decode()


# --- whole reports, against the code before the fast path (EmailMessage, field by field)

def before(batch: Batch, profile: Profile | None, items: list[ItemStatus], domain: str,
           now: float, body: str, subject: str, recipients: tuple[str, ...], rid: str) -> bytes:
    """build_report's email as it was built before reportmail (kept here verbatim)."""
    def mailbox(address: str, name: str | None) -> Address | str:
        return Address(display_name=name, addr_spec=address) if name else address

    notif = profile.notification if profile else None
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = mailbox(notif.sender, notif.sender_name) if notif else "batchq@localhost"
    msg["To"] = ", ".join(recipients) if recipients else "undisclosed-recipients:;"
    if notif and notif.bcc:
        msg["Bcc"] = ", ".join(notif.bcc)
    if notif and notif.reply_to:
        msg["Reply-To"] = mailbox(notif.reply_to, notif.reply_to_name)
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = message_id(rid, domain)
    msg["X-Batchq-Report"] = escape_controls(rid)
    msg.set_content(body)
    completed = [s for s in items if s.state == JobState.COMPLETED]
    failed = [s for s in items if s.state == JobState.FAILED]
    for name, rows in (("completed.json", completed), ("failed.json", failed)):
        data = _json_array([_item_json(s) for s in rows])
        msg.add_attachment(data, maintype="application", subtype="json", filename=name)
    return bytes(msg)


def items_of(n: int, title: str, message: str) -> list[ItemStatus]:
    return [ItemStatus(item=Item(id=f"item-{i:05d}", url=f"https://repo.example.org/{i}.tif",
                                 title=title if i % 2 else None),
                       seq=i, state=JobState.FAILED if i % 3 == 0 else JobState.COMPLETED,
                       attempts=1 + i % 2, message=message if i % 3 == 0 else "",
                       started_at=1.76e9 + i, finished_at=1.76e9 + i + 0.5)
            for i in range(n)]


CASES = {
    "plain": ("maps-2026-11", "Jane Doe", None, "Map of Oakland", "exit 1", 10),
    "non-ascii names": ("cartes-2026", "Zoë Ångström-Þórsdóttir", "Dépôt Numérique",
                        "Carte de l'Île — 東京", "échec: octets reçus ≠ attendus", 10),
    "crlf in fields": ("letters", "Eve\r\nBcc: all@example.org", None,  # names: refused
                       "Title\r\nwith breaks\x1b[2J", "line one\nline two\r\n\tindented", 12),
    "long everything": ("a" * 63, "A" * 90, "Q" * 90, "word " * 60,
                        "sha512 " + "f" * 128 + " expected, got " + "0" * 128, 20),
    "quoted names": ("quotes", 'Doe, "JD" Jane (the depositor)', "Queue; the <one>",
                     'a "quoted" title', "exit 2", 5),
    "encoded-word look-alike": ("ew", "=?utf-8?q?Jane?=", "=?utf-8?b?UXVldWU=?=",
                                "=?utf-8?q?t?=", "=?x?q?y?=", 4),
    "10,000 items": ("big-batch", "Jane Doe", None, "Map", "exit 1", 10_000),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["initial", "update"])
def test_whole_reports_are_the_bytes_the_email_package_built(case: str, kind: str) -> None:
    name, depositor, sender_name, title, message, n = CASES[case]
    items = items_of(n, title, message)
    spec = BatchSpec(profile="demo", depositor=Depositor(name=depositor,
                                                         email="jane@example.org"))
    profile = Profile(name="demo", notification=Notification(
        recipients=("curator@example.org",), bcc=("admin@example.org",),
        sender="batchq@example.org", sender_name=sender_name,
        reply_to="help@example.org", reply_to_name=sender_name))
    batch = Batch(name=name, spec=spec, generation=2, source_path=f"batches/{name}.yaml",
                  source_revision="0f" * 20, submitted_at=1.76e9, uid="3c2b1a")
    previous = {s.item.id: "Pending" for s in items[: n // 2]}
    for seed in range(2):
        random.seed(seed)
        report = build_report(batch, spec, items, profile, kind=kind, round_=2,
                              previous=previous, message_id_domain="example.net", now=NOW,
                              site_url="https://batchq.example.org")
        random.seed(seed)
        assert report.message == before(batch, profile, items, "example.net", NOW,
                                        report.body, report.subject, report.recipients,
                                        report.id)
    parsed = message_from_bytes(report.message, policy=policy.default)
    assert parsed["Subject"] == report.subject and not parsed.defects
