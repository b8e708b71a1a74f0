"""HTML pages: the batch list and one batch. They read; they never change anything."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from web.app import get_store
from web.views import (
    ACTIVE,
    JOB_STATES,
    STATES,
    batch_summary,
    iso,
    paging,
    report_view,
    site_status,
)

bp = Blueprint("pages", __name__)


def ago(value: str | None) -> str:
    """'3 min ago' for an ISO time (the exact time goes in a title attribute)."""
    if not value:
        return "—"
    then = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    delta = max(0, int(time.time() - then))
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            return f"{delta // seconds} {unit} ago"
    return f"{delta} s ago"


def short(rev: str | None) -> str:
    return (rev or "")[:10]


FILTERS = {"ago": ago, "short": short}


def _links() -> dict[str, Any]:
    base = (current_app.config.get("REPO_WEB_URL") or "").rstrip("/")

    def commit_url(rev: str) -> str | None:
        return f"{base}/commit/{rev}" if base and rev else None

    def file_url(rev: str, path: str) -> str | None:
        return f"{base}/blob/{rev}/{path}" if base and rev and path else None

    return {"commit_url": commit_url, "file_url": file_url}


@bp.get("/")
def index() -> str:
    store = get_store()
    state = request.args.get("state") or None
    if state not in STATES:
        state = None
    size = int(current_app.config["PAGE_SIZE"])
    first = store.page_batches(state=state, offset=0, limit=size)
    pg = paging(request.args.get("page"), size, first.total)
    page = first if pg.offset == 0 else store.page_batches(state=state, offset=pg.offset,
                                                          limit=size)
    counts = store.count_batches()
    rows = [batch_summary(b) for b in page.rows]
    refresh = any(counts.get(s, 0) for s in ACTIVE)
    return render_template("index.html", rows=rows, counts=counts, states=STATES,
                           state=state, paging=pg, site=site_status(store,
                           current_app.config["STATE_DIR"]), refresh=refresh, **_links())


@bp.get("/batches/<name>")
def batch(name: str) -> str:
    store = get_store()
    b = store.get_batch(name)
    if b is None:
        abort(404)
    state = request.args.get("state") or None
    if state not in JOB_STATES:
        state = None
    query = (request.args.get("q") or "").strip()[:200] or None
    size = int(current_app.config["JOB_PAGE_SIZE"])
    total = store.total_items(name, state=state, query=query)
    pg = paging(request.args.get("page"), size, total)
    items = store.list_items(name, state=state, query=query, offset=pg.offset, limit=size)
    events = [{"at": iso(e.at), "reason": e.reason, "message": e.message,
               "revision": e.revision} for e in store.list_events(name)]
    reports = [report_view(store, r) for r in store.list_reports(name)]
    summary = batch_summary(b)
    return render_template(
        "batch.html", b=summary, items=items, events=list(reversed(events)),
        reports=list(reversed(reports)), job_states=JOB_STATES, state=state, query=query or "",
        paging=pg, iso=iso, site=site_status(store, current_app.config["STATE_DIR"]),
        refresh=summary["state"] in ACTIVE, **_links())
