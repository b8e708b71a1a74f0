"""The status site: read-only pages over the store interface, so it serves both backends.

`create_app(config)` is the factory. Configuration is layered: `DEFAULTS`, then the file
named by `BATCHQ_WEB_CONFIG` (`.json`, or a Python file of UPPERCASE names), then the
`config` argument. Nothing runs at import time; the blueprints are registered explicitly:
`pages` (HTML), `api` (JSON under /api), `ops` (/healthz, /metrics, /hooks/git).

A store is opened lazily per request and closed in teardown (`web.storage`): SQLite
connections belong to one thread, and the threaded server runs each request in its own.
The Kubernetes store reads from watch caches and is shared instead (`SHARED_STORE`).

`batchq web` serves the site on gunicorn (`web.server`, worker processes) or, with
`--server werkzeug` for development, on werkzeug's threaded server (`serve_app`);
`serve_in_thread` runs it beside the reconcile loop for `batchq run --web`, where a
verified push webhook wakes the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from reconciler.store.backends import BackendSettings, store_factory
from reconciler.store.base import ReadStore

DEFAULTS: dict[str, Any] = {
    # () -> ReadStore, called once per request that needs the store. None: the local
    # backend's SQLite file under STATE_DIR.
    "STORE_FACTORY": None,
    # True: the factory returns one store shared by every request (the Kubernetes store,
    # which reads from watch caches); it is never closed by the site.
    "SHARED_STORE": False,
    # The reconciler's state dir: heartbeat.json (last sync, last pass) and the
    # sync-requested file the webhook leaves when TRIGGER_SYNC is None.
    "STATE_DIR": Path(".batchq"),
    # () -> None: ask the reconcile loop for a sync now (`rec.wake.set` in `batchq run`).
    "TRIGGER_SYNC": None,
    # () -> bool: may this process take the webhook now (`batchq run` under leader
    # election: does it lead)? None: always (/readyz).
    "READY": None,
    # () -> dict shaped as support/heartbeat.py's: where the loop's heartbeat is read
    # (`batchq web` on Kubernetes: the leader's Lease). None: STATE_DIR's heartbeat file.
    "HEARTBEAT": None,
    "WEBHOOK_SECRET": None,  # GitHub: HMAC-SHA256 secret for X-Hub-Signature-256
    "GITLAB_TOKEN": None,  # GitLab: the X-Gitlab-Token value
    # e.g. https://github.com/org/repo: commits link to {url}/commit/{sha}, files to
    # {url}/blob/{sha}/{path}. None: revisions are shown, not linked.
    "REPO_WEB_URL": None,
    # /healthz fails when the last pass is older than max(STALL_SECONDS, 3 x interval).
    "STALL_SECONDS": 120.0,
    "PAGE_SIZE": 50,  # batches per page of the list
    "JOB_PAGE_SIZE": 100,  # jobs per page of a batch
    "TIMELINE_LIMIT": 200,  # newest timeline lines on a batch page (the API has them all)
    "REFRESH_SECONDS": 10,  # pages reload themselves this often while work is moving
    "MAX_CONTENT_LENGTH": 25 * 1024 * 1024,  # GitHub's largest push payload
}

ENVIRONMENT = {  # for `batchq web` / `batchq run --web`: deployment secrets from the env
    "WEBHOOK_SECRET": "BATCHQ_WEBHOOK_SECRET",
    "GITLAB_TOKEN": "BATCHQ_GITLAB_TOKEN",
    "REPO_WEB_URL": "BATCHQ_REPO_WEB_URL",
}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the site; see the module docstring for the configuration layers."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    path = os.environ.get("BATCHQ_WEB_CONFIG")
    if path:
        if path.endswith(".json"):
            app.config.update(json.loads(Path(path).read_text()))
        else:
            app.config.from_pyfile(os.path.abspath(path))
    app.config.update(config or {})
    app.config["STATE_DIR"] = Path(app.config["STATE_DIR"])
    app.config.setdefault("STARTED_AT", time.time())  # /healthz: a new process's grace
    if app.config["STORE_FACTORY"] is None:
        factory, shared = store_factory(BackendSettings(state_dir=app.config["STATE_DIR"]))
        app.config.update(STORE_FACTORY=factory, SHARED_STORE=shared)

    from web import api, ops, pages, storage

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.teardown_appcontext(storage.close_store)
    pages.install(app)
    return app


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_server(store: Callable[[], ReadStore], listen: str, state_dir: Path,
                 trigger: Callable[[], None] | None = None, *, shared: bool = False,
                 config: dict[str, Any] | None = None) -> BaseWSGIServer:
    """The threaded werkzeug server for the site, bound but not yet serving.

    `store` is a zero-argument factory (`reconciler.store.backends.store_factory`), called
    per request; `shared=True` when it always returns the same store, which is then never
    closed. Port 0 binds a free port (`server.server_port`).
    """
    host, port = _split(listen)
    return make_server(host, port, create_app(site_settings(
        store, state_dir, trigger, shared=shared, config=config)), threaded=True)


def site_settings(store: Callable[[], ReadStore], state_dir: Path,
                  trigger: Callable[[], None] | None = None, *, shared: bool = False,
                  config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`create_app`'s configuration for a served site: the deployment's secrets from the
    environment (`ENVIRONMENT`), the store factory, the state dir, then `config`."""
    settings: dict[str, Any] = {key: os.environ[var] for key, var in ENVIRONMENT.items()
                                if os.environ.get(var)}
    settings.update({"STORE_FACTORY": store, "SHARED_STORE": shared,
                     "STATE_DIR": Path(state_dir), "TRIGGER_SYNC": trigger})
    settings.update(config or {})
    return settings


def serve_app(app: Flask, listen: str) -> None:
    """`batchq web --server werkzeug`: werkzeug's threaded server, one process, on
    HOST:PORT until interrupted; for development (gunicorn serves production: web.server)."""
    host, port = _split(listen)
    server = make_server(host, port, app, threaded=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def serve_in_thread(args: argparse.Namespace, rec: Any) -> threading.Thread:
    """`batchq run --web HOST:PORT`: the site beside the loop, in a daemon thread.

    The local backend gets a new SQLite connection per request; the Kubernetes store
    (watch caches) is shared with the loop. A verified webhook wakes the loop at once.
    """
    state = Path(args.state)
    settings = BackendSettings(backend=args.backend, state_dir=state,
                               namespace=args.namespace, kubeconfig=args.kubeconfig)
    store, shared = store_factory(settings, shared=rec.store)
    elector = rec.elector
    ready = {"READY": (lambda: bool(elector.leader))} if elector is not None else {}
    server = build_server(store, args.web, state, trigger=rec.request_sync, shared=shared,
                          config=ready)
    thread = threading.Thread(target=server.serve_forever, name="batchq-web", daemon=True)
    thread.start()
    return thread
