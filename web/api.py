"""JSON mirroring the pages: /api/batches, /api/batches/<name>, /api/batches/<name>/jobs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, request

from web.app import get_store
from web.views import JOB_STATES, STATES, batch_summary, iso, paging, report_view, site_status

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/batches")
def batches() -> dict[str, Any]:
    store = get_store()
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        abort(400, f"unknown state {state!r}")
    size = int(current_app.config["PAGE_SIZE"])
    total = store.page_batches(state=state, offset=0, limit=1).total
    pg = paging(request.args.get("page"), size, total)
    page = store.page_batches(state=state, offset=pg.offset, limit=size)
    return {"total": page.total, "page": pg.page, "pages": pg.pages, "pageSize": size,
            "counts": store.count_batches(),
            "site": site_status(store, current_app.config["STATE_DIR"]),
            "batches": [batch_summary(b) for b in page.rows]}


@bp.get("/batches/<name>")
def batch(name: str) -> dict[str, Any]:
    store = get_store()
    b = store.get_batch(name)
    if b is None:
        abort(404)
    out = batch_summary(b)
    out["timeline"] = [{"at": iso(e.at), "reason": e.reason, "message": e.message,
                        "revision": e.revision} for e in store.list_events(name)]
    out["reports"] = [report_view(store, r) for r in store.list_reports(name)]
    return out


@bp.get("/batches/<name>/jobs")
def jobs(name: str) -> dict[str, Any]:
    store = get_store()
    if store.get_batch(name) is None:
        abort(404)
    state = request.args.get("state") or None
    if state is not None and state not in JOB_STATES:
        abort(400, f"unknown job state {state!r}")
    query = (request.args.get("q") or "").strip()[:200] or None
    size = int(current_app.config["JOB_PAGE_SIZE"])
    total = store.total_items(name, state=state, query=query)
    pg = paging(request.args.get("page"), size, total)
    rows = store.list_items(name, state=state, query=query, offset=pg.offset, limit=size)
    return {"total": total, "page": pg.page, "pages": pg.pages, "pageSize": size, "jobs": [
        {"item": s.item.id, "title": s.item.title, "url": s.item.url, "name": s.job_name,
         "state": str(s.state), "attempt": s.attempts, "message": s.message,
         "startedAt": iso(s.started_at), "finishedAt": iso(s.finished_at)} for s in rows]}
