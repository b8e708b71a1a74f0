"""`batchq web` on gunicorn, the production WSGI server, run in-process.

A master process binds the address and keeps `workers` processes alive, each serving
`threads` requests at once (gunicorn's gthread worker): a worker silent for `timeout`
seconds is killed and replaced; on SIGTERM the master stops listening, lets requests in
flight finish for up to `graceful_timeout` seconds, and exits 0 (SIGINT or SIGQUIT: at
once). That is what kubelet expects of a pod, and the werkzeug server (`--server
werkzeug`, for development) does not do.

The site is built in each worker, after the fork (`open_site`), never in the master: a
Kubernetes store runs watch threads, and threads do not survive a fork; SQLite
connections stay per request (web.storage). /metrics needs no multiprocess mode: every
figure is read from the store at scrape time (web.ops.StoreCollector), so whichever worker
answers gives the whole truth.

gunicorn's own lines and the access lines go through the process's log handler (the
project's text or JSON lines), the access line as `request method=... path=... status=...`.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from reconciler.support.logfmt import transition

# What a worker serves, and what to close when it exits (a shared store's watch threads).
Site = tuple[Flask, Callable[[], None]]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def steady_malloc(mmap_threshold: int = 8 << 20, trim_threshold: int = 16 << 20) -> bool:
    """Keep freed memory in the process for the next request (glibc; elsewhere a no-op).

    A request for a big batch allocates and frees megabytes (its stored spec JSON, its
    rows); with glibc's adaptive defaults a gunicorn worker handed them back to the kernel
    after each request and faulted them in again on the next: ~2,500 page faults and a
    third more CPU per `/` at 1,000 batches (bench/README.md). Fixed thresholds keep up to
    `trim_threshold` bytes of free heap, and serve blocks under `mmap_threshold` from it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold))


def default_workers() -> int:
    """2 x the CPUs this process may run on + 1 (gunicorn's advice), at most 8: each worker
    keeps its own parsed specs and, on Kubernetes, its own watch caches."""
    return min(2 * len(os.sched_getaffinity(0)) + 1, 8)


@dataclass(frozen=True)
class ServerOptions:
    """The `batchq web` flags gunicorn takes; seconds are whole (gunicorn's settings)."""

    listen: str  # HOST:PORT
    workers: int
    threads: int = 4
    timeout: int = 30  # a worker silent this long is killed and replaced
    graceful_timeout: int = 25  # SIGTERM: requests in flight get this long to finish
    keepalive: int = 5  # seconds an idle keep-alive connection is kept
    access_log: bool = False

    def settings(self) -> dict[str, Any]:
        """The gunicorn settings these options stand for."""
        return {
            "bind": [self.listen],
            "workers": self.workers,
            "worker_class": "gthread",
            "threads": self.threads,
            "timeout": self.timeout,
            "graceful_timeout": self.graceful_timeout,
            "keepalive": self.keepalive,
            "accesslog": "-" if self.access_log else None,
            "errorlog": "-",
            "logger_class": SiteLogger,
            "proc_name": "batchq-web",
            # no runtime control socket: nothing of ours uses it, and its default place
            # under $HOME is read-only in the container
            "control_socket_disable": True,
        }


class SiteLogger(Logger):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's log, through the handler `batchq` set up: no handler of its own, so its
    lines are the project's text or JSON lines; the access line carries its fields."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self.loglevel = logging.INFO
        for log in (self.error_log, self.access_log):
            log.propagate = True  # to the root logger's handler (reconciler.app.cli)
            log.setLevel(logging.INFO)

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any],
               request_time: datetime.timedelta) -> None:
        if not self.cfg.accesslog:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        transition(self.access_log, "request", {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("RAW_URI") or environ.get("PATH_INFO"),
            "status": int(status),
            "bytes": getattr(resp, "sent", None),
            "seconds": round(request_time.total_seconds(), 6),
            "remote": environ.get("REMOTE_ADDR"),
            "agent": environ.get("HTTP_USER_AGENT"),
        })


class GunicornSite(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    """The site as a gunicorn application: settings from `ServerOptions`, no command line
    or config file of gunicorn's own (the `batchq web` flags are the only ones)."""

    def __init__(self, open_site: Callable[[], Site], options: ServerOptions) -> None:
        self.open_site = open_site
        self.options = options
        self.close_site: Callable[[], None] = lambda: None
        super().__init__(prog="batchq web")

    def load_config(self) -> None:
        for key, value in self.options.settings().items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._worker_exit)

    def load(self) -> Flask:
        """In each worker, after the fork."""
        steady_malloc()
        app, self.close_site = self.open_site()
        return app

    def _worker_exit(self, server: Any, worker: Any) -> None:
        self.close_site()


def serve_gunicorn(open_site: Callable[[], Site], options: ServerOptions) -> None:
    """Serve until SIGTERM or SIGINT; gunicorn's master ends the process (SystemExit: 0
    after a graceful stop). Worker processes leave through SystemExit as well."""
    GunicornSite(open_site, options).run()
