"""Per-batch back-off: a batch whose step raises waits 1 s, 2 s, 4 s … 5 min between tries.

Like the rate-limited work queue of a Kubernetes controller: the failures are counted per
batch, in memory (a restarted reconciler tries every batch at once), forgotten when a step
succeeds, and a new commit to the batch is acted on at once rather than after the delay. A
broken batch so costs one try per delay, not one exception per pass, and the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler.domain.model import Batch

BASE_SECONDS = 1.0
CAP_SECONDS = 300.0
# `reconcile --until-idle` waits through this many tries (1 + 2 + 4 s) before it calls a
# failing batch stuck rather than busy; `run` keeps trying at the capped rate for good.
TRIES_WORTH_WAITING_FOR = 3


@dataclass(frozen=True)
class Failure:
    tries: int  # consecutive failed tries
    error: str
    delay: float  # seconds from the last failure to the next try
    retry_at: float  # epoch seconds
    generation: int  # the spec it failed on: a new commit is tried at once
    revision: str


class Backoff:
    """Failures by batch name; see the module docstring."""

    def __init__(self, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> None:
        self.base = base
        self.cap = cap
        self.failures: dict[str, Failure] = {}

    def waiting(self, batch: Batch, now: float) -> bool:
        """Skip this batch on this pass?"""
        f = self.failures.get(batch.name)
        return f is not None and now < f.retry_at and (f.generation, f.revision) == (
            batch.generation, batch.source_revision)

    def failed(self, batch: Batch, error: str, now: float | None = None) -> Failure:
        now = time.time() if now is None else now
        previous = self.failures.get(batch.name)
        tries = previous.tries + 1 if previous else 1
        delay = min(self.base * 2 ** (tries - 1), self.cap)
        failure = Failure(tries, error, delay, now + delay, batch.generation,
                          batch.source_revision)
        self.failures[batch.name] = failure
        return failure

    def succeeded(self, name: str) -> bool:
        """Forget the batch's failures; True if it had any."""
        return self.failures.pop(name, None) is not None

    def due(self, now: float) -> set[str]:
        """The batches whose next try is due: a pass steps them whatever else changed."""
        return {name for name, f in self.failures.items() if now >= f.retry_at}

    def retrying(self) -> bool:
        """Is a batch waiting for a try that is still worth waiting for?"""
        return any(f.tries <= TRIES_WORTH_WAITING_FOR for f in self.failures.values())
