"""The one place that chooses a backend (DESIGN §1): everything else asks for a Store.

`open_backend` gives the reconciler its store plus what only the process running the loop
needs (the local job runner, the event that wakes the loop, the API client for leader
election); `store_factory` gives read-only users (the site, `batchq status`) a way to open
stores, one per request where a connection belongs to one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.store.base import Store

if TYPE_CHECKING:
    from reconciler.store.local.runner import LocalRunner

LOCAL_DB = "batchq.sqlite3"


@dataclass(frozen=True)
class BackendSettings:
    """Where observed state lives."""

    backend: str = "local"  # local | kubernetes
    state_dir: Path = Path(".batchq")  # local: the SQLite file and the job dirs
    namespace: str = "batchq"  # kubernetes: where Batches, Jobs and ConfigMaps live
    kubeconfig: str | None = None  # kubernetes: None means in-cluster config
    storage_claim: str = ""  # kubernetes: the PVC Jobs mount (filesystem); "": none
    s3_secret: str = "batchq-s3"  # kubernetes: the Secret with the S3 credentials
    kube_concurrency: int = 8  # kubernetes: Job creates in flight at once
    kube_qps: float = 20.0  # kubernetes: API writes a second, on average (<= 0: no limit)
    kube_burst: int = 30  # kubernetes: API writes at once before the rate applies


@dataclass
class Backend:
    """An open backend for the reconciler loop."""

    store: Store
    wake: threading.Event  # set when a job ends or a watch sees a change
    runner: LocalRunner | None = None  # local: starts and reaps the job processes
    api: Any = field(default=None)  # kubernetes: the API client (leader election)
    # kubernetes: fence(may_write) makes the store ask may_write() before each write
    fence: Callable[[Callable[[], bool]], None] | None = None


def local_db_path(state_dir: Path) -> Path:
    return state_dir / LOCAL_DB


def open_backend(settings: BackendSettings) -> Backend:
    if settings.backend == "local":
        from reconciler.store.local.runner import LocalRunner
        from reconciler.store.local.sqlite import SqliteStore

        local = SqliteStore(local_db_path(settings.state_dir))
        runner = LocalRunner(local, settings.state_dir / "jobs")
        return Backend(store=local, wake=runner.wake, runner=runner)
    if settings.backend == "kubernetes":
        from reconciler.store.kubernetes.limits import ClientLimits
        from reconciler.store.kubernetes.store import KubernetesStore

        limits = ClientLimits(settings.kube_concurrency, settings.kube_qps,
                              settings.kube_burst)
        if problem := limits.check():
            raise ValueError(problem)
        k8s = KubernetesStore.connect(settings.namespace, settings.kubeconfig,
                                      storage_claim=settings.storage_claim,
                                      s3_secret=settings.s3_secret, limits=limits)
        return Backend(store=k8s, wake=k8s.wake, api=k8s.api, fence=k8s.fence_with)
    raise ValueError(f"unknown backend {settings.backend!r}: use local or kubernetes")


def open_store(settings: BackendSettings) -> Store:
    """A store for reading (no runner): `batchq status`, `batchq web`."""
    if settings.backend == "local":
        from reconciler.store.local.sqlite import SqliteStore

        return SqliteStore(local_db_path(settings.state_dir))
    return open_backend(settings).store


def store_factory(settings: BackendSettings,
                  shared: Store | None = None) -> tuple[Callable[[], Store], bool]:
    """(factory, shared): a SQLite connection serves one thread, so the local backend opens
    one per call; any other store (watch caches) is opened once, or `shared` is reused, and
    handed out as is."""
    if settings.backend == "local":
        path = local_db_path(settings.state_dir)

        def open_local() -> Store:
            from reconciler.store.local.sqlite import SqliteStore

            return SqliteStore(path)  # parsed specs are shared by every store of the process

        return open_local, False
    instance = shared if shared is not None else open_store(settings)
    return (lambda: instance), True
