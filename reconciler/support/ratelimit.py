"""A client-side token bucket, as client-go's (`QPS`, `Burst`): an API server answers many
clients, and one that writes as fast as it can starves the others (and earns 429s).

`TokenBucket(qps, burst).take()` blocks until a token is free; tokens refill at `qps` a
second up to `burst`. `qps <= 0` means no limit. Thread-safe: every writer of one client
shares one bucket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """At most `burst` at once, then `qps` a second on average."""

    def __init__(self, qps: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if qps > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1 when qps is set (got {burst})")
        self.qps, self.burst = qps, max(burst, 1)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Take a token (possibly one not yet refilled); how long to wait until it is."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def take(self) -> None:
        """Wait for a token (at once while the burst lasts)."""
        if self.qps <= 0:
            return
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
