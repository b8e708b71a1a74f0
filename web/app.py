"""The status site: read-only pages over the store interface, so it serves both backends.

`create_app(config)` is the factory (defaults → `BATCHQ_WEB_CONFIG` file → `config`);
blueprints: pages (HTML), api (JSON), ops (/healthz, /metrics, /hooks/git). A store is
opened lazily per request and closed in teardown, unless the config shares one store
(the Kubernetes store reads from watch caches and is safe to share between threads).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, g
from werkzeug.serving import make_server

from reconciler.store.base import Store

DEFAULTS: dict[str, Any] = {
    "STORE_FACTORY": None,  # () -> Store
    "SHARED_STORE": False,  # True: the factory's store is shared, never closed per request
    "STATE_DIR": Path(".batchq"),
    "TRIGGER_SYNC": None,  # () -> None; None: touch STATE_DIR/sync-requested
    "WEBHOOK_SECRET": None,  # GitHub X-Hub-Signature-256 secret
    "GITLAB_TOKEN": None,  # GitLab X-Gitlab-Token
    "REPO_WEB_URL": None,  # e.g. https://github.com/org/repo: links to commits and files
    "STALL_SECONDS": 120.0,
    "PAGE_SIZE": 50,
    "JOB_PAGE_SIZE": 100,
}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    path = os.environ.get("BATCHQ_WEB_CONFIG")
    if path:
        app.config.update(json.loads(Path(path).read_text()))
    app.config.update(config or {})
    app.config["STATE_DIR"] = Path(app.config["STATE_DIR"])

    from web import api, ops, pages

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.teardown_appcontext(_close_store)
    app.jinja_env.filters.update(pages.FILTERS)
    return app


def get_store() -> Store:
    """This request's store, opened on first use."""
    from flask import current_app

    if "store" not in g:
        factory = current_app.config["STORE_FACTORY"]
        if factory is None:
            raise RuntimeError("STORE_FACTORY is not configured")
        g.store = factory()
    store: Store = g.store
    return store


def _close_store(_exc: BaseException | None) -> None:
    from flask import current_app

    store = g.pop("store", None)
    if store is not None and not current_app.config["SHARED_STORE"]:
        store.close()


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


def serve(store_factory: Callable[[], Store], listen: str, state_dir: Path,
          trigger: Callable[[], None] | None = None, shared: bool = False,
          block: bool = True) -> Any:
    """Serve the site on HOST:PORT (threaded). With block=False return the server."""
    app = create_app({"STORE_FACTORY": store_factory, "STATE_DIR": state_dir,
                      "TRIGGER_SYNC": trigger, "SHARED_STORE": shared,
                      "WEBHOOK_SECRET": os.environ.get("BATCHQ_WEBHOOK_SECRET"),
                      "GITLAB_TOKEN": os.environ.get("BATCHQ_GITLAB_TOKEN"),
                      "REPO_WEB_URL": os.environ.get("BATCHQ_REPO_WEB_URL")})
    host, port = _split(listen)
    server = make_server(host, port, app, threaded=True)
    if block:
        server.serve_forever()
    return server


def serve_in_thread(args: argparse.Namespace, rec: Any) -> threading.Thread:
    """`batchq run --web`: the site beside the loop; a webhook wakes the loop at once."""
    if args.backend == "local":
        from reconciler.store.local import SqliteStore

        def factory() -> Store:
            return SqliteStore(args.state / "batchq.sqlite3")

        server = serve(factory, args.web, args.state, trigger=rec.wake.set, block=False)
    else:
        server = serve(lambda: rec.store, args.web, args.state, trigger=rec.wake.set,
                       shared=True, block=False)
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    return thread
