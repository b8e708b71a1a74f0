"""The store of one request: opened on first use, closed in teardown.

Pages only read, through the `Store` protocol, so the site works on both backends. A
SQLite connection belongs to the thread that opened it, so the local backend gets one per
request; a shared store (Kubernetes watch caches) is handed out as is and never closed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import current_app, g

from reconciler.store.base import Store

# Parsed batch specs, shared by the per-request SQLite stores of this process. A spec is
# immutable and keyed by its JSON, so sharing is safe; without it every request would parse
# a 10,000-item spec again (about 200 ms). Interim: SqliteStore keeps this cache per
# instance; once the store shares it per process, this module needs no part of it.
_SPECS: dict[str, Any] = {}


def local_store_factory(path: Path) -> Callable[[], Store]:
    """Open the local backend's SQLite file, one connection per call (per request)."""
    from reconciler.store.local import SqliteStore

    def open_store() -> Store:
        store = SqliteStore(path)
        if isinstance(getattr(store, "_specs", None), dict):
            store._specs = _SPECS
        return store

    return open_store


def get_store() -> Store:
    """This request's store, opened on first use."""
    if "store" not in g:
        g.store = current_app.config["STORE_FACTORY"]()
    store: Store = g.store
    return store


def close_store(_exc: BaseException | None = None) -> None:
    store = g.pop("store", None)
    if store is not None and not current_app.config["SHARED_STORE"]:
        store.close()
