"""Named crash points, for proving that a reconciler killed anywhere loses nothing.

`BATCHQ_FAILPOINTS=after-report-saved:2,after-job-created` makes the process SIGKILL
itself the 2nd time it reaches `after-report-saved`, or the 1st time it reaches
`after-job-created`. Unset (always, outside tests), `hit` is a dictionary look-up.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        out[name] = int(n or "1")
    return out


_armed = _parse(os.environ.get("BATCHQ_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Die here, abruptly, if this point is armed and its count is reached."""
    if name not in _armed:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
