"""The client-side token bucket (support/ratelimit.py) on a clock the test moves: a burst
goes at once, then one write per 1/qps, and waiting never lets more through than the rate."""

from __future__ import annotations

import pytest

from reconciler.support.ratelimit import TokenBucket


class Clock:
    """A clock that moves only when the bucket sleeps (so no test waits for real)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_burst_goes_at_once_then_the_rate_applies() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 3, clock=clock.time, sleep=clock.sleep)
    for _ in range(3):
        bucket.take()
    assert clock.slept == []
    for _ in range(20):
        bucket.take()
    assert clock.now - 100.0 == pytest.approx(2.0, abs=1e-9)  # 20 more at 10 a second


def test_idle_time_refills_no_more_than_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(5.0, 2, clock=clock.time, sleep=clock.sleep)
    clock.now += 3600.0  # an hour idle
    for _ in range(2):
        bucket.take()
    assert clock.slept == []
    bucket.take()
    assert clock.slept == [pytest.approx(0.2, abs=1e-9)]


def test_no_rate_means_no_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(0.0, 0, clock=clock.time, sleep=clock.sleep)
    for _ in range(1000):
        bucket.take()
    assert clock.slept == []

