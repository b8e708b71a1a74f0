"""When the reconciler last finished a pass and a sync, in a file under the state dir.

It is not store state on purpose: a pass with nothing to do must write nothing to the
store. The web site reads it for the "last sync" time and for `/healthz`, which fails when
the loop stalls.

Its readers measure staleness in tens of seconds (`/healthz` allows at least 120 s), while
a busy loop passes hundreds of times a second: the figures are kept in memory and the file
is replaced at most once every `MIN_WRITE_SECONDS` (a sync, the first beat and `flush()`
at once), with a trailing write so that it is never more than that behind the loop.
Before, every pass read and parsed the file, then wrote and renamed a new one: 0.25 ms of
CPU, and 1 to 2.6 ms of the loop's time on a loaded machine (the rename waits on the
file system, which the store's fsyncs keep busy).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

MIN_WRITE_SECONDS = 1.0


class Heartbeat:
    """`beat()` after a pass or a sync; the file is replaced atomically; `flush()` writes
    what the last beats left in memory (before the process lets go of the state dir)."""

    def __init__(self, state_dir: Path, min_write_seconds: float = MIN_WRITE_SECONDS) -> None:
        self.path = state_dir / "heartbeat.json"
        self.min_write_seconds = min_write_seconds
        self._data = read_heartbeat(state_dir)  # what an earlier process left stays shown
        self._lock = threading.Lock()
        self._dirty = False
        self._written = -float("inf")  # monotonic time of the last write
        self._timer: threading.Timer | None = None

    def beat(self, *, sync: bool = False, head: str = "", interval: float = 0.0,
             duration: float | None = None, counters: dict[str, float] | None = None) -> None:
        """`counters`: figures of this process kept beside the times (syncs, passes, the
        batches a pass stepped), for operators and tests to read."""
        with self._lock:
            self._data.update(counters or {})
            now = time.time()
            if sync:
                self._data.update(lastSync=now, head=head)
            if duration is not None:
                self._data.update(lastPass=now, passSeconds=duration, interval=interval)
            self._dirty = True
            wait = self._written + self.min_write_seconds - time.monotonic()
            if sync or wait <= 0:
                self._write()
            elif self._timer is None:  # the trailing write: the file is never left behind
                self._timer = threading.Timer(wait, self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the figures of the beats not written yet, if any."""
        with self._lock:
            if self._dirty:
                self._write()

    def _flush_later(self) -> None:
        """The trailing write, from its timer's thread: a failure (a full disk, a state dir
        gone) is left to the next beat, which writes from the loop and raises there."""
        with contextlib.suppress(OSError):
            self.flush()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._data))
        os.replace(tmp, self.path)
        self._dirty = False
        self._written = time.monotonic()


def read_heartbeat(state_dir: Path) -> dict[str, float | str]:
    try:
        return dict(json.loads((state_dir / "heartbeat.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}
