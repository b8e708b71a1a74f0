"""Delivering queued report emails: SMTP when configured, else `.eml` files (DESIGN §5).

Reports enter the outbox in the same transaction that saves them, so a crash never loses
one. Delivery is per recipient, as Postfix does it: each attempt's replies are recorded as
soon as the server has answered, before QUIT, so a recipient that was accepted is never
sent the message again. A 5xx bounces that recipient for good (recorded, shown, not
retried); a 4xx or no answer defers it, and it is tried again with exponential back-off
until the message reaches the maximum age (Postfix's `maximal_queue_lifetime`), when it
is given up visibly. An SMTP outage delays reports but never drops or repeats them.

One window is left, as in every mail system: a crash after the server accepted the
message (250 to DATA) and before that reply is recorded sends it again on restart. Then
the copy carries the same Message-ID (recipients' mail programs show one), and losing the
report instead would be worse; `tests/test_crash_safety.py` kills the process in it.

`deliver` is one round over what is due; `reconciler.control.mailer` runs rounds in a
thread of its own, so a slow or dead server never holds the reconcile loop.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.control.smtp import Envelope, Relay, Reply, SmtpClient
from reconciler.store.base import WAITING, Delivery, OutboxEntry, RecipientState, Store
from reconciler.support import failpoints
from reconciler.support.nospace import NoSpaceLeft, nearly_full

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may take, and when a deferred recipient is tried again."""

    timeout: float = 120.0  # overall deadline of one SMTP transaction
    first_backoff: float = 5.0  # then doubled after each attempt ...
    max_backoff: float = 300.0  # ... up to this
    max_age: float = 5 * 24 * 3600.0  # deferred this long after queueing: given up

    def backoff(self, attempts: int) -> float:
        """The wait after the `attempts`-th attempt (1-based)."""
        return float(min(self.max_backoff, self.first_backoff * 2 ** max(0, attempts - 1)))


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


def _state(reply: Reply) -> Delivery:
    if reply.accepted:
        return Delivery.DELIVERED
    return Delivery.BOUNCED if reply.permanent else Delivery.DEFERRED


def _age(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


class Delivering:
    """One round of deliveries over one store (see `deliver`)."""

    def __init__(self, store: Store, *, smtp: Relay | str | None, outbox_dir: Path,
                 policy: RetryPolicy, now: float) -> None:
        self.store = store
        self.smtp = smtp
        self.outbox_dir = outbox_dir
        self.policy = policy
        self.now = now
        self.server_down: Reply | None = None  # no answer earlier in this round

    def entry(self, entry: OutboxEntry) -> int:
        """Deliver one entry to the recipients still waiting and record what each got;
        return how many were accepted."""
        envelope = Envelope.of(entry.message)
        known = {r.address: r for r in entry.recipients}
        states = [known.get(a, RecipientState(a)) for a in envelope.recipients] + [
            r for r in entry.recipients if r.address not in envelope.recipients]
        waiting = [r.address for r in states if r.state in WAITING]
        if not waiting:  # nothing left to try (or no recipient at all): close the entry
            self.store.record_delivery(entry.report_id, states, error="", retry_at=None)
            return 0
        if self.smtp is None:
            path = write_eml(self.outbox_dir, entry.report_id, entry.message)
            replies = dict.fromkeys(waiting, Reply(250, f"written to {path}"))
            return self._record(entry, states, replies)
        if self.server_down is not None:  # as Postfix: do not knock on a door that was shut
            note = Reply(0, f"not tried: {self.server_down.describe()}")
            return self._record(entry, states, dict.fromkeys(waiting, note))
        with SmtpClient(self.smtp, self.policy.timeout) as client:
            replies = client.send(envelope, waiting)
            failpoints.hit("after-smtp-send")  # sent, not yet recorded
            if all(r.code == 0 and not r.permanent for r in replies.values()):
                self.server_down = next(iter(replies.values()))
            return self._record(entry, states, replies)  # before QUIT

    def _record(self, entry: OutboxEntry, states: list[RecipientState],
                replies: dict[str, Reply]) -> int:
        now = self.now
        age = now - entry.queued_at if entry.queued_at > 0 else 0.0
        updated: list[RecipientState] = []
        for r in states:
            reply = replies.get(r.address)
            if reply is None:
                updated.append(r)
                continue
            state = _state(reply)
            detail = reply.describe()
            if state == Delivery.DEFERRED and age >= self.policy.max_age:
                state, detail = Delivery.EXPIRED, f"gave up after {_age(age)}: {detail}"
            updated.append(replace(r, state=state, code=reply.code, detail=detail,
                                   attempts=r.attempts + 1, at=now))
        failed = [r for r in updated if r.address in replies and r.state != Delivery.DELIVERED]
        details = {r.detail for r in failed}
        error = (details.pop() if len(details) == 1
                 else "; ".join(f"{r.address}: {r.detail}" for r in failed))
        still = any(r.state in WAITING for r in updated)
        retry_at = now + self.policy.backoff(entry.attempts + 1) if still else None
        self.store.record_delivery(entry.report_id, updated, error=error, retry_at=retry_at)
        for r in failed:
            level = logging.WARNING if r.state == Delivery.DEFERRED else logging.ERROR
            log.log(level, "report %s to %s %s: %s", entry.report_id, r.address, r.state,
                    r.detail)
        return sum(1 for r in updated
                   if r.state == Delivery.DELIVERED and r.address in replies)


@dataclass(frozen=True)
class RoundResult:
    handled: int  # entries whose attempt was recorded
    sent: int  # of those, how many went out (to anyone)


def deliver_due(store: Store, *, smtp: Relay | str | None, outbox_dir: Path,
                policy: RetryPolicy | None = None, now: float | None = None,
                stop: Callable[[], bool] | None = None) -> RoundResult:
    """One round over what is due; `stop` is asked before each message."""
    round_ = Delivering(store, smtp=smtp, outbox_dir=outbox_dir,
                        policy=policy or RetryPolicy(), now=time.time() if now is None else now)
    handled = sent = 0
    for entry in store.pending_outbox(round_.now):
        if stop is not None and stop():
            break
        if nearly_full(outbox_dir):  # a message sent but not marked would go out twice
            raise NoSpaceLeft(outbox_dir.parent, "too little room to record a delivery, so"
                              " no email is sent")
        failpoints.hit("before-deliver")
        accepted = round_.entry(entry)
        failpoints.hit("after-deliver")
        handled += 1
        sent += accepted > 0
    return RoundResult(handled, sent)


def deliver(store: Store, *, smtp: Relay | str | None, outbox_dir: Path,
            policy: RetryPolicy | None = None, now: float | None = None) -> int:
    """Deliver what is due; return how many messages went out (to anyone)."""
    return deliver_due(store, smtp=smtp, outbox_dir=outbox_dir, policy=policy, now=now).sent
