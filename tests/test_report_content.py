"""What the report email carries, as Merritt's batch report does (issue 8 §4): submission,
submitted and completed dates, counts of pending/completed/failed jobs, every failure's
whole message, a link to the batch page, and RFC 3339 times in the JSON attachments. The
message is the one a real `batchq reconcile` sent to a real SMTP server on loopback."""

from __future__ import annotations

import email
import hashlib
import json
from datetime import datetime
from email import policy
from email.message import Message
from pathlib import Path

import pytest
import yaml

from reconciler.support.timefmt import rfc3339
from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq, profile_doc

TITLE = "Letters of the Oakland harbour commission, with the survey maps of 1911 and 1912"


def attachment(msg: Message, name: str) -> list[dict[str, object]]:
    [part] = [p for p in msg.walk() if p.get_filename() == name]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return list(json.loads(payload))


def body(msg: Message) -> str:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode().replace("\r\n", "\n")


def field(text: str, name: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(f"{name}:")]
    return line.split(":", 1)[1].strip()


def test_the_report_carries_merritts_fields_and_every_failure_whole(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    good = payloads.add("good", b"good payload\n")
    good["title"] = TITLE
    bad = payloads.add("bad", b"the bytes that arrived\n")
    wanted = hashlib.sha512(b"the bytes that were meant\n").hexdigest()
    got = hashlib.sha512(b"the bytes that arrived\n").hexdigest()
    bad["digest"] = {"algorithm": "sha512", "value": wanted}
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/b.yaml", batch_doc([good, bad]))
    git_repo.commit("submit b")
    submitted = int(git_repo.git("log", "-1", "--format=%ct"))
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60",
                  "--site-url", "http://127.0.0.1:8080/batchq/")
    assert done.returncode == 0, done.stderr
    [msg] = smtp.mailbox.messages
    assert msg["Subject"] == "Ingest: FAIL -- Submission Failed: b"
    text = body(msg)
    assert field(text, "Batch") == "b"
    assert field(text, "Batch page") == "http://127.0.0.1:8080/batchq/batches/b"
    assert field(text, "Submitted") == rfc3339(submitted)
    assert field(text, "Status") == "Failed"
    assert "Jobs: 2   Completed: 1   Failed: 1   Pending: 0" in text
    # each digest arrives whole (a token of its own on a line), and no body line is long
    tokens = {t.rstrip(",") for line in text.splitlines() for t in line.split()}
    assert wanted in tokens and got in tokens
    assert all(len(line) < 200 for line in text.splitlines())
    assert " ".join(TITLE.split()) in " ".join(text.split())  # the title whole, wrapped
    failed = attachment(msg, "failed.json")
    assert [f["id"] for f in failed] == ["bad"]
    assert failed[0]["message"] == f"digest mismatch: expected sha512 {wanted}, got {got}"
    rows = failed + attachment(msg, "completed.json")
    [part] = [p for p in msg.walk() if p.get_filename() == "completed.json"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    lines = payload.decode().splitlines()  # one item a line
    assert lines[0] == "[" and lines[-1] == "]" and json.loads(lines[1]) == rows[1]
    finished = []
    for row in rows:
        for key in ("startedAt", "finishedAt"):
            value = row[key]
            assert isinstance(value, str) and value.endswith("Z"), row
            finished.append(datetime.fromisoformat(value).timestamp())
    assert field(text, "Completed") == rfc3339(max(finished))


def test_without_a_site_url_the_report_has_no_page_link(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/b.yaml", batch_doc([payloads.add("one", b"one\n")]))
    git_repo.commit("submit b")
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    [msg] = smtp.mailbox.messages
    text = body(msg)
    assert "Batch page:" not in text
    assert "Jobs: 1   Completed: 1   Failed: 0   Pending: 0" in text
    assert field(text, "Status") == "Completed"


def test_display_names_are_quoted_and_encoded_by_batchq(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    sender_name = 'Merritt Ingest, UC3 "Preservation" <Team>'
    reply_name = "Équipe dépôt — Ops"
    git_repo.write("profiles/test.yaml", profile_doc(
        payloads.base, fromName=sender_name, replyTo="help@example.org",
        replyToName=reply_name))
    git_repo.write("batches/b.yaml", batch_doc([payloads.add("one", b"one\n")]))
    git_repo.commit("submit b")
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    [raw] = smtp.mailbox.messages
    msg = email.message_from_bytes(raw.as_bytes(), policy=policy.default)
    [sender] = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (sender_name, "batchq@example.org")
    [reply] = msg["Reply-To"].addresses
    assert (reply.display_name, reply.addr_spec) == (reply_name, "help@example.org")
    assert raw.as_bytes().isascii()  # the non-ASCII name went out as an encoded word
    assert smtp.mailbox.envelopes[0][0] == "batchq@example.org"  # MAIL FROM: the address


@pytest.mark.parametrize(("name", "says"), [
    ("=?utf-8?q?Your_Bank?=", "contains an encoded word (=?...?=); write the name itself"),
    ("Ops\nBcc: evil@example.org", "contains a line break"),
    ("Ops\x1b[2J", "contains a control character; give plain text"),
    ("   ", "is blank; give a name or leave the field out"),
])
def test_a_display_name_that_could_forge_a_header_is_refused_at_its_line(
        tmp_path: Path, name: str, says: str) -> None:
    profile = tmp_path / "profiles" / "test.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(profile_doc("http://127.0.0.1:1/", fromName=name),
                                      sort_keys=False))
    line = next(n for n, text in enumerate(profile.read_text().splitlines(), 1)
                if text.lstrip().startswith("fromName:"))
    out = batchq("validate", str(profile))
    assert out.returncode == 1
    [said] = out.stdout.splitlines()
    assert out.stderr == "1 error in 1 of 1 file\n"
    assert said.startswith(f"{profile}:{line}:") and "spec.notification.fromName: " in said
    assert said.endswith(says) or f"{says}," in said


def test_a_short_title_or_message_is_wrapped_as_textwrap_wraps_it() -> None:
    """The table's one-line shortcut gives what `textwrap` gives, for every text it takes:
    short and long, with spaces at either end or in runs, tabs, line breaks and other
    white space, empty."""
    import random
    import textwrap

    from reconciler.control.reports import _wrap

    rng = random.Random(13)
    alphabet = ["a", "B", "7", "-", " ", "  ", "\t", "\n", "\r", "\x0b", "\xa0", "\u2028",
                "é", "word", "x" * 45]
    texts = ["", " ", "a", " a", "a ", "a  b", "\t", TITLE, "x" * 40, "x" * 41, "x" * 72,
             *("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
               for _ in range(3000))]
    for width in (5, 40, 72):
        for text in texts:
            wrapped = textwrap.wrap(text, width, break_long_words=False,
                                    break_on_hyphens=False) or [""]
            assert _wrap(text, width) == wrapped, (text, width)
