"""Delivering queued report emails: SMTP when configured, else `.eml` files (DESIGN §5).

Reports enter the outbox in the same transaction that saves them, so a crash never loses
one; delivery marks each message done only after the server accepted it (or the file is in
place). A message that fails waits with exponential back-off and is tried again later, so
an SMTP outage delays reports but never drops them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import smtplib
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path

from reconciler.store.base import Store
from reconciler.support import failpoints
from reconciler.support.nospace import NoSpaceLeft, nearly_full

log = logging.getLogger(__name__)
BACKOFF = (5.0, 15.0, 60.0, 300.0)


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host or "127.0.0.1", int(port or 25))


def eml_name(report_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", report_id) + ".eml"


def write_eml(outbox: Path, report_id: str, message: bytes) -> Path:
    """Atomically place the message in `outbox/`; an existing file is kept as is."""
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / eml_name(report_id)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(message)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return path


def send_smtp(hostport: str, message: bytes, accepted: Callable[[], None],
              timeout: float = 10.0) -> None:
    """Send one message; `accepted` runs as soon as the server has taken it, before QUIT,
    so the window in which a crash could make us send it again is as short as it can be."""
    host, port = parse_hostport(hostport)
    msg = message_from_bytes(message, policy=policy.SMTP)
    smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        smtp.send_message(msg)
        accepted()
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()


def deliver(store: Store, *, smtp: str | None, outbox_dir: Path, now: float | None = None) -> int:
    """Deliver what is due; return how many messages went out."""
    now = time.time() if now is None else now
    sent = 0
    for entry in store.pending_outbox(now):
        if nearly_full(outbox_dir):  # a message sent but not marked would go out twice
            raise NoSpaceLeft(outbox_dir.parent, "too little room to record a delivery, so"
                              " no email is sent")
        failpoints.hit("before-deliver")
        def accepted(report_id: str = entry.report_id) -> None:
            store.mark_delivered(report_id)

        try:
            if smtp:
                send_smtp(smtp, entry.message, accepted)
            else:
                write_eml(outbox_dir, entry.report_id, entry.message)
                accepted()
        except (OSError, smtplib.SMTPException) as exc:
            delay = BACKOFF[min(entry.attempts, len(BACKOFF) - 1)]
            log.warning("report %s not delivered (%s); next try in %.0f s",
                        entry.report_id, exc, delay)
            store.mark_delivery_failed(entry.report_id, str(exc) or type(exc).__name__,
                                       now + delay)
            continue
        failpoints.hit("after-deliver")
        sent += 1
    return sent
