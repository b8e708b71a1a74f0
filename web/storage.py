"""The store of one request: opened on first use, closed in teardown.

Pages only read, through the `ReadStore` protocol, so the site works on both backends. A
SQLite connection belongs to the thread that opened it, so the local backend gets one per
request; a shared store (Kubernetes watch caches) is handed out as is and never closed.
"""

from __future__ import annotations

from flask import current_app, g

from reconciler.store.base import ReadStore


def get_store() -> ReadStore:
    """This request's store, opened on first use."""
    if "store" not in g:
        g.store = current_app.config["STORE_FACTORY"]()
    store: ReadStore = g.store
    return store


def close_store(_exc: BaseException | None = None) -> None:
    store = g.pop("store", None)
    if store is not None and not current_app.config["SHARED_STORE"]:
        store.close()
