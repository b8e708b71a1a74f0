"""RFC 3339 in UTC with `Z`: the one way batchq writes times and reads them back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from reconciler.support.timefmt import (
    parse_rfc3339,
    parse_rfc3339_or_none,
    rfc3339,
    rfc3339_or_none,
)

T = 1_795_898_977.123456  # 2026-11-28T20:49:37.123456Z


def test_seconds_and_microseconds() -> None:
    assert rfc3339(T) == "2026-11-28T20:49:37Z"  # cut, not rounded
    assert rfc3339(T, micro=True) == "2026-11-28T20:49:37.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(T - 0.123456, micro=True) == "2026-11-28T20:49:37.000000Z"  # fixed width


def test_unset_times_are_none() -> None:
    assert rfc3339_or_none(None) is None and rfc3339_or_none(0) is None
    assert rfc3339_or_none(0.0, micro=True) is None
    assert rfc3339_or_none(T) == "2026-11-28T20:49:37Z"
    assert parse_rfc3339_or_none(None) is None and parse_rfc3339_or_none("") is None


@pytest.mark.parametrize("text", [
    "2026-11-28T20:49:37Z",
    "2026-11-28T20:49:37+00:00",
    "2026-11-28T21:49:37+01:00",
    "2026-11-28T20:49:37",  # no zone: UTC
])
def test_parsing_what_api_servers_and_clients_hand_over(text: str) -> None:
    assert parse_rfc3339(text) == int(T)
    assert parse_rfc3339_or_none(text) == int(T)


def test_datetimes_from_the_kubernetes_client() -> None:
    aware = datetime(2026, 11, 28, 21, 49, 37, tzinfo=timezone(timedelta(hours=1)))
    assert parse_rfc3339(aware) == int(T)
    assert parse_rfc3339(datetime(2026, 11, 28, 20, 49, 37)) == int(T)  # naive: UTC
    assert parse_rfc3339(datetime.fromtimestamp(T, UTC)) == pytest.approx(T)


def test_round_trips() -> None:
    assert parse_rfc3339(rfc3339(T)) == int(T)
    assert parse_rfc3339(rfc3339(T, micro=True)) == pytest.approx(T, abs=1e-6)
    assert rfc3339(parse_rfc3339("2026-11-28T20:49:37.5Z"), micro=True) == (
        "2026-11-28T20:49:37.500000Z")
