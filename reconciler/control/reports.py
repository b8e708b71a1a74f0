"""StatusReports: what the depositor is told, built from observed state (DESIGN §5).

A report is a pure function of the batch, its items and the previous report's job states
(kept in that report, so nothing unbounded needs to live in the Batch status),
so rebuilding it after a crash gives the same content; its id (batch, incarnation, report
round) makes saving it twice a no-op. The email is built here too, with a Message-ID made
of the report id and the installation's own domain, so a message that is ever re-sent is
recognisably the same message, and a batch whose name was used before, or a report of
another installation, never shares one (mail systems drop a second message with a
Message-ID they have seen).

What the report says follows Merritt's batch report (CDLUC3/mrt-ingest, `BatchState.dump`
and the job lines under it): the submission id, when it was submitted and completed, the
numbers of pending, completed and failed jobs, and each job's status message — here never
cut: a long message (a digest, a URL) is wrapped between words, so every value a depositor
needs arrives whole. A link to the batch's page is added when the site's URL is known, and
the JSON attachments give times as RFC 3339 (ISO 8601) in UTC.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from email.utils import formatdate
from urllib.parse import quote

from reconciler.control.reportmail import Header, Mailbox, report_message
from reconciler.domain.model import Batch, BatchSpec, Item, ItemStatus, Profile, Report
from reconciler.domain.states import BatchState, JobState
from reconciler.support.controlchars import escape_controls
from reconciler.support.timefmt import rfc3339, rfc3339_or_none

BODY_ROWS = 500  # beyond this the per-job table is in the attachments only
TITLE_WIDTH = 40  # the title and message columns wrap at these widths, between words
MESSAGE_WIDTH = 72


_ATEXT = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")


def report_id(batch: Batch, round_: int) -> str:
    """`name:uid:round`; `name:round` for a batch stored before incarnations had uids."""
    return f"{batch.name}:{batch.uid}:{round_}" if batch.uid else f"{batch.name}:{round_}"


def message_id(report_id: str, domain: str) -> str:
    """A batch name, uid and round are dot-atom text: the id reads as what it stands for
    (the name of a file that never parsed may hold anything else: it becomes `-`)."""
    return f"<{_ATEXT.sub('-', report_id.replace(':', '.'))}@{domain}>"


def job_states(items: list[ItemStatus]) -> dict[str, str]:
    return {s.item.id: str(s.state) for s in items}


def changed_since(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Items whose state differs from the last report (new items count as changed)."""
    return [item for item, state in current.items() if previous.get(item) != state]


ERROR_KINDS = ("manifest-error", "file-error")  # no job ran: nothing completed


def subject_for(kind: str, ok: bool, batch: str) -> str:
    verdict = "OK" if ok else "FAIL"
    what = {
        "initial": "Submission Processed" if ok else "Submission Failed",
        "update": "Submission Updated",
        "manifest-error": "Manifest Invalid",
        "file-error": "Batch File Invalid",
    }[kind]
    # a batch named after a file that never parsed may hold anything: shown escaped
    return f"Ingest: {verdict} -- {what}: {escape_controls(batch)}"


def recipients_for(spec: BatchSpec, profile: Profile | None) -> tuple[str, ...]:
    wanted = [spec.depositor.email]
    suppressed: tuple[str, ...] = ()
    if profile is not None:
        wanted += list(profile.notification.recipients)
        suppressed = profile.notification.suppressed_addresses
    out: list[str] = []
    for addr in wanted:
        if addr.lower() not in {s.lower() for s in suppressed} and addr not in out:
            out.append(addr)
    return tuple(out)


def _wrap(text: str, width: int) -> list[str]:
    """`text` in lines of about `width`, broken only between words: a word longer than
    that (a digest, a URL) keeps a line of its own, whole."""
    if len(text) <= width and text == text.strip(" ") and text.isprintable():
        return [text]  # one line as it is (most titles, every empty message): no regex
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def _table(items: list[ItemStatus]) -> list[str]:
    """One row per job; a long title or message continues on the next lines, in its
    column (escaped before measuring, so the columns line up)."""
    rows: list[tuple[str, str, str, list[str], list[str]]] = [
        ("ITEM", "STATE", "ATTEMPTS", ["TITLE"], ["MESSAGE"])]
    for s in items[:BODY_ROWS]:
        title = _wrap(escape_controls(s.item.title or ""), TITLE_WIDTH)
        about = _about(s.item)
        if about:  # an object's files and identifiers go under its title
            title = [t for t in title if t] + _wrap(escape_controls(about), TITLE_WIDTH)
        rows.append((escape_controls(s.item.id), str(s.state), str(s.attempts), title,
                     _wrap(escape_controls(s.message), MESSAGE_WIDTH)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    title_width = max(len(line) for r in rows for line in r[3])
    lines = []
    for ident, state, attempts, title, message in rows:
        for n in range(max(len(title), len(message))):
            first = (ident, state, attempts) if n == 0 else ("", "", "")
            cells = [c.ljust(widths[i]) for i, c in enumerate(first)]
            cells.append((title[n] if n < len(title) else "").ljust(title_width))
            cells.append(message[n] if n < len(message) else "")
            lines.append("  ".join(cells).rstrip())
    if len(items) > BODY_ROWS:
        lines.append(f"... and {len(items) - BODY_ROWS} more jobs: see the attachments")
    return lines


def _about(item: Item) -> str:
    """`3 files; ark:/13030/m5; local: a, b`: what the report says of an object beyond
    its title ("" for a plain single-file item without identifiers)."""
    parts = [item.files_text()] if item.files or item.container else []
    if item.identifiers():
        parts.append(item.identifiers())
    return "; ".join(parts)


def _json_array(rows: list[dict[str, object]]) -> bytes:
    """A JSON array of one item a line: as easy to read and to diff as `indent=2`, and
    made by the C encoder, which `indent` turns off (it was a third of the CPU of a
    10,000-item batch's report)."""
    if not rows:
        return b"[]"
    return ("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]").encode()


def _item_json(s: ItemStatus) -> dict[str, object]:
    return {
        "id": s.item.id,
        "title": s.item.title,
        "url": s.item.url,
        "files": s.item.file_count(),  # null: a container, its files known once unpacked
        "primaryId": s.item.primary_id,
        "localIds": list(s.item.local_ids),
        "state": str(s.state),
        "attempts": s.attempts,
        "message": s.message,
        "startedAt": rfc3339_or_none(s.started_at),
        "finishedAt": rfc3339_or_none(s.finished_at),
    }


def build_report(
    batch: Batch,
    spec: BatchSpec,
    items: list[ItemStatus],
    profile: Profile | None,
    *,
    kind: str,
    round_: int,
    previous: dict[str, str],
    message_id_domain: str,
    now: float | None = None,
    site_url: str | None = None,
) -> Report:
    """Build the report (and its email) for one reporting round of `batch`, whose spec in
    force is `spec`; `site_url` (the web site's base URL) adds a link to the batch page."""
    now = time.time() if now is None else now
    current = job_states(items)
    changed = changed_since(previous, current) if kind == "update" else []
    completed = [s for s in items if s.state == JobState.COMPLETED]
    failed = [s for s in items if s.state == JobState.FAILED]
    pending = len(items) - len(completed) - len(failed)
    finished = [s.finished_at for s in items if s.finished_at]
    completed_at = max(finished) if finished and kind not in ERROR_KINDS else now
    ok = kind not in ERROR_KINDS and not failed
    subject = subject_for(kind, ok, batch.name)
    recipients = recipients_for(spec, profile)
    lines = [f"Batch:      {batch.name}"]
    if site_url:
        lines.append(f"Batch page: {site_url}/batches/{quote(batch.name, safe='')}")
    lines += [
        f"Profile:    {spec.profile}",
        f"Depositor:  {spec.depositor.name + ' ' if spec.depositor.name else ''}"
        f"<{spec.depositor.email}>",
        f"Commit:     {batch.source_revision}",
        f"Submitted:  {rfc3339(batch.submitted_at)}",
        f"Completed:  {rfc3339(completed_at)}",
        f"Status:     {BatchState.COMPLETED if ok else BatchState.FAILED}",
        f"Reported:   {formatdate(now, usegmt=True)}",
        "",
    ]
    if kind == "file-error":
        lines += [f"The batch file {batch.source_path} could not be read at this commit, so"
                  " the batch did not start:",
                  *(f"  {line}" for line in batch.spec_error.split("\n")), "",
                  "Fix the file and commit it again: the batch starts as soon as a valid"
                  f" version is committed. `batchq validate {batch.source_path}` shows these"
                  " errors before you commit."]
    elif kind == "manifest-error":
        lines += ["The batch manifest could not be used, so no job was run:",
                  f"  {batch.status.manifest_error}", "",
                  "This batch will not run again: a batch's items are fixed when it is"
                  " admitted, and a later edit of its manifest is not applied to it.",
                  "To run the corrected manifest, fix it and commit the batch file with a new"
                  f" metadata.name (for example {batch.name}-2): this batch is then retired"
                  " as if its file were deleted, and the new one starts afresh."]
    else:
        lines += [f"Jobs: {len(items)}   Completed: {len(completed)}   Failed: {len(failed)}"
                  f"   Pending: {pending}", ""]
        if kind == "update":
            lines.append("Changed since the last report:")
            for item in changed:
                lines.append(f"  {item}: {previous.get(item, 'new')} -> {current[item]}")
            lines.append("")
        lines += _table(items)
    # one line of the body per line here: a title, name or message that holds a line break
    # or a terminal escape is shown escaped and cannot forge a line of the report
    body = "\n".join(escape_controls(line) for line in lines) + "\n"
    notif = profile.notification if profile else None
    emailed = bool(recipients) and not (notif and notif.suppress)
    if kind == "update" and not changed:
        emailed = False
    rid = report_id(batch, round_)
    headers: list[Header] = [
        ("Subject", subject),
        ("From", Mailbox(notif.sender, notif.sender_name) if notif
         else Mailbox("batchq@localhost")),
        ("To", ", ".join(recipients) if recipients else "undisclosed-recipients:;")]
    if notif and notif.bcc:
        headers.append(("Bcc", ", ".join(notif.bcc)))
    if notif and notif.reply_to:
        headers.append(("Reply-To", Mailbox(notif.reply_to, notif.reply_to_name)))
    headers += [("Date", formatdate(now, usegmt=True)),
                ("Message-ID", message_id(rid, message_id_domain)),
                ("X-Batchq-Report", escape_controls(rid))]
    attachments = [(name, _json_array([_item_json(s) for s in rows]))
                   for name, rows in (("completed.json", completed), ("failed.json", failed))]
    return Report(
        id=rid,
        batch=batch.name,
        kind=kind,
        created_at=now,
        subject=subject,
        recipients=recipients,
        body=body,
        changed=tuple(changed),
        job_states=current,
        emailed=emailed,
        message=report_message(headers, body, attachments),
    )
