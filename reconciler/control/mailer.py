"""The outbox delivered by a thread of its own, so a slow or dead SMTP server delays only
email: a pass asks for a round (`kick`) and goes on at once.

The thread has its own store (a SQLite connection belongs to one thread; the Kubernetes
store is shared, its caches are locked), so it records each recipient's reply the moment
the server gives it, before QUIT, exactly as a delivery inside the pass did. Only one
round runs at a time, so no message is ever being sent twice at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from reconciler.control.notify import RetryPolicy, deliver_due
from reconciler.control.smtp import Relay
from reconciler.store.base import Store
from reconciler.support.nospace import NoSpaceLeft

log = logging.getLogger(__name__)


class Mailer:
    """Runs delivery rounds in a background thread; see the module docstring."""

    def __init__(self, open_store: Callable[[], Store], *, owns_store: bool,
                 smtp: Relay | str | None, outbox_dir: Path, policy: RetryPolicy,
                 on_round: Callable[[], None] = lambda: None,
                 may_send: Callable[[], bool] = lambda: True) -> None:
        self._open_store = open_store
        self._owns_store = owns_store  # False: the loop's own (shared) store, not ours to close
        self.smtp = smtp
        self.outbox_dir = outbox_dir
        self.policy = policy
        self._on_round = on_round  # a round recorded something: the loop may look again
        self._may_send = may_send  # asked before each message (the leader's Lease)
        self._cond = threading.Condition()
        self.no_space: NoSpaceLeft | None = None  # the last round's, for the loop to raise
        self._asked = 0  # rounds asked for
        self._done = 0  # rounds asked for that a finished round covered
        self._sent = 0  # messages that went out, in all
        self._stopping = False
        self._thread: threading.Thread | None = None

    def kick(self) -> int:
        """Ask for a round (starting the thread the first time); return its ticket."""
        with self._cond:
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batchq-mailer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._asked

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """Wait until the round of `ticket` has finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= ticket or self._stopping,
                                       timeout) and self._done >= ticket

    def deliver_now(self, timeout: float | None = None) -> int:
        """A round, waited for; how many messages went out meanwhile (tests, `--once`).
        NoSpaceLeft when the round found the state dir too full to record a delivery."""
        with self._cond:
            before = self._sent
        self.wait(self.kick(), timeout)
        self.raise_if_no_space()
        with self._cond:
            return self._sent - before

    def raise_if_no_space(self) -> None:
        """Raise the NoSpaceLeft of the last round, if it had one: a full state dir is the
        loop's to tell (one line), not this thread's."""
        if self.no_space is not None:
            raise self.no_space

    def close(self, timeout: float | None = None) -> None:
        """Stop after the message being sent, if any (its deadline bounds the wait)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self.policy.timeout + 10 if timeout is None else timeout)

    def _run(self) -> None:
        try:
            store = self._open_store()
        except Exception:
            log.exception("cannot open the store for delivering email; none is sent")
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            return
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping or self._done < self._asked)
                    if self._stopping:
                        return
                    covers = self._asked  # one round serves every kick made before it
                handled = sent = 0
                try:
                    result = deliver_due(store, smtp=self.smtp, outbox_dir=self.outbox_dir,
                                         policy=self.policy,
                                         stop=lambda: self._stopping or not self._may_send())
                    handled, sent = result.handled, result.sent
                except NoSpaceLeft as exc:  # the loop ends its pass with it and tells it
                    self.no_space = exc
                except Exception:  # the thread outlives one bad round; the next retries
                    log.exception("delivering the outbox failed")
                else:
                    self.no_space = None
                with self._cond:
                    self._done = covers
                    self._sent += sent
                    self._cond.notify_all()
                if handled:
                    self._on_round()
        finally:
            if self._owns_store:
                store.close()
