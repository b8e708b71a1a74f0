"""Remote manifests are downloaded outside the reconcile pass (DESIGN §10).

A pass only starts a batch's download and, on a later pass, picks up its result; meanwhile
the batch stays Processing ("downloading the manifest"), so a server that hangs or trickles
delays only its own batch, within the profile's deadline and size limit. Nothing is
stored until the result is picked up, so a reconciler killed mid-download simply
downloads again. The threads touch no store: they only fetch and parse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.domain.model import Item

MAX_PARALLEL = 4  # downloads at once; more wait for a free slot (their batches wait too)
GRACE = 30.0  # seconds a download may take past its transfer deadline (parsing) in `wait`


@dataclass
class _Download:
    key: object  # what was asked for: a changed URL or profile starts a new download
    ends_by: float  # monotonic time by which the transfer's own deadline has passed
    done: threading.Event = field(default_factory=threading.Event)
    items: list[Item] = field(default_factory=list)
    error: BaseException | None = None


class ManifestDownloads:
    """One background download per batch at most; see the module docstring."""

    def __init__(self, on_done: Callable[[], None] = lambda: None,
                 max_parallel: int = MAX_PARALLEL) -> None:
        self._on_done = on_done  # wakes the loop, which picks the result up at once
        self.max_parallel = max_parallel
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        self._finished = 0  # downloads finished, in all
        self._seen = 0  # ... as of the start of the last pass

    def poll(self, batch: str, key: object, read: Callable[[], list[Item]], *,
             deadline: float) -> list[Item] | None:
        """The batch's items once `read` (which gives up after `deadline` seconds) has
        finished in the background, its error raised here; None while it runs or waits
        for a slot (started if it was not)."""
        with self._lock:
            download = self._downloads.get(batch)
            if download is not None and download.key != key:
                del self._downloads[batch]  # asked for something else now: drop the old one
                download = None
            if download is None:
                running = sum(not d.done.is_set() for d in self._downloads.values())
                if running < self.max_parallel:
                    download = _Download(key, time.monotonic() + deadline)
                    self._downloads[batch] = download
                    threading.Thread(target=self._fetch, args=(download, read), daemon=True,
                                     name=f"batchq-manifest-{batch}").start()
                return None
            if not download.done.is_set():
                return None
            del self._downloads[batch]
        if download.error is not None:
            raise download.error
        return download.items

    def _fetch(self, download: _Download, read: Callable[[], list[Item]]) -> None:
        try:
            download.items = read()
        except BaseException as exc:  # handed to the pass, which reports or logs it
            download.error = exc
        finally:
            with self._lock:
                download.done.set()
                self._finished += 1
            self._on_done()

    def discard(self, batch: str) -> None:
        """Forget a batch's download (its file was deleted); a running thread ends alone."""
        with self._lock:
            self._downloads.pop(batch, None)

    def wait(self) -> bool:
        """Wait for the running downloads (each up to its deadline and a grace); True if
        there were any."""
        with self._lock:
            running = [d for d in self._downloads.values() if not d.done.is_set()]
        for d in running:
            d.done.wait(max(0.0, d.ends_by + GRACE - time.monotonic()))
        return bool(running)

    def pass_started(self) -> None:
        with self._lock:
            self._seen = self._finished

    def batches(self) -> set[str]:
        """The batches with a download running or finished and not yet picked up: a pass
        steps them, so a finished download is read at once."""
        with self._lock:
            return set(self._downloads)

    def busy(self) -> bool:
        """A download runs, or one finished after the last pass began (its result waits)."""
        with self._lock:
            return self._finished != self._seen or any(
                not d.done.is_set() for d in self._downloads.values())
