"""When the reconciler last finished a pass and a sync, in a file under the state dir.

It is not store state on purpose: a pass with nothing to do must write nothing to the
store. The web site reads it for the "last sync" time and for `/healthz`, which fails when
the loop stalls.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class Heartbeat:
    """`beat()` after a pass or a sync; the file is replaced atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "heartbeat.json"

    def beat(self, *, sync: bool = False, head: str = "", interval: float = 0.0,
             duration: float | None = None, counters: dict[str, float] | None = None) -> None:
        """`counters`: figures of this process kept beside the times (syncs, passes, the
        batches a pass stepped), for operators and tests to read."""
        data = read_heartbeat(self.path.parent)
        data.update(counters or {})
        now = time.time()
        if sync:
            data.update(lastSync=now, head=head)
        if duration is not None:
            data.update(lastPass=now, passSeconds=duration, interval=interval)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def read_heartbeat(state_dir: Path) -> dict[str, float | str]:
    try:
        return dict(json.loads((state_dir / "heartbeat.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}
