"""Named fail points, for proving that a reconciler killed anywhere loses nothing, and that
a step that raises costs only its own batch.

`BATCHQ_FAILPOINTS=after-report-saved:2,after-job-created` makes the process SIGKILL
itself the 2nd time it reaches `after-report-saved`, or the 1st time it reaches
`after-job-created`; `step@b:raise` makes every step of batch `b` raise FailPoint;
`after-job-created:sleep=0.5` makes every pass there take half a second longer (a slow
pass on purpose, e.g. one longer than the leader's Lease). Unset (always, outside
tests), `hit` is a dictionary look-up.
"""

from __future__ import annotations

import os
import signal
import time

RAISE = "raise"
SLEEP = "sleep="
_counts: dict[str, int] = {}


class FailPoint(RuntimeError):
    """Raised where a `:raise` fail point is armed."""


def _parse(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = part.partition(":")
        out[name] = action or "1"
    return out


_armed = _parse(os.environ.get("BATCHQ_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Raise here if this point is armed to raise; sleep here if it is armed to sleep;
    die here, abruptly, if it is armed with a count and the count is reached."""
    if name not in _armed:
        return
    if _armed[name] == RAISE:
        raise FailPoint(f"fail point {name} reached")
    if _armed[name].startswith(SLEEP):
        time.sleep(float(_armed[name].removeprefix(SLEEP)))
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(_armed[name]):
        os.kill(os.getpid(), signal.SIGKILL)
