"""Times as text: RFC 3339 in UTC with a `Z`, the one format batchq writes and reads.

The Batch status and Jobs on Kubernetes (metav1.Time, whole seconds), Leases (MicroTime,
microseconds), the JSON API and `batchq status --json` all write it, and the pages read it
back. Formatting cuts to the unit asked for; parsing takes what the API server or the
kubernetes client hands over (text with `Z` or an offset, or a datetime), and a time
without a zone is UTC. Times inside batchq are POSIX seconds (floats) everywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime

SECONDS = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def rfc3339(ts: float, *, micro: bool = False) -> str:
    """`2026-11-28T16:54:46Z` (or `...46.123456Z` with `micro`) for POSIX seconds."""
    return datetime.fromtimestamp(ts, UTC).strftime(MICROSECONDS if micro else SECONDS)


def rfc3339_or_none(ts: float | None, *, micro: bool = False) -> str | None:
    """None for a time never set: None, or 0 (the model's dataclasses use either)."""
    return rfc3339(ts, micro=micro) if ts else None


def parse_rfc3339(value: str | datetime) -> float:
    """POSIX seconds of an RFC 3339 time (a zone-less one is UTC)."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parse_rfc3339_or_none(value: str | datetime | None) -> float | None:
    """None for a field that is absent or empty."""
    return parse_rfc3339(value) if value else None
