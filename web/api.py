"""JSON mirroring the pages, with the same query parameters and the same paging.

- `GET /api/batches?state=&page=`: the list (`batches`), counts by state, paging, and the
  site facts (last sync, sync error, file errors, refused deletion).
- `GET /api/batches/<name>?state=&q=&page=`: one batch, a page of its jobs (`jobs`), its
  whole timeline (oldest first) and its reports (oldest first, each with its changes).
- `GET /api/batches/<name>/jobs?state=&q=&page=`: just the page of jobs.

An unknown state is a 400, an unknown batch a 404; a page past the end is clamped.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, request

from web.storage import get_store
from web.views import (
    JOB_STATES,
    STATES,
    batch_summary,
    event_view,
    job_page,
    paging,
    reports_view,
    site_status,
)

bp = Blueprint("api", __name__, url_prefix="/api")


def _state(allowed: list[str]) -> str | None:
    state = request.args.get("state") or None
    if state is not None and state not in allowed:
        abort(400, f"unknown state {state!r}; one of {', '.join(allowed)}")
    return state


def _jobs(name: str) -> dict[str, Any]:
    state = _state(JOB_STATES)
    query = (request.args.get("q") or "").strip()[:200] or None
    pg, rows = job_page(get_store(), name, state=state, query=query,
                        page=request.args.get("page"),
                        size=int(current_app.config["JOB_PAGE_SIZE"]))
    return {**pg.to_json(), "state": state, "q": query, "rows": rows}


@bp.get("/batches")
def batches() -> dict[str, Any]:
    store = get_store()
    state = _state(STATES)
    counts = store.count_batches()
    total = counts.get(state, 0) if state else sum(counts.values())
    pg = paging(request.args.get("page"), int(current_app.config["PAGE_SIZE"]), total)
    page = store.page_batches(state=state, offset=pg.offset, limit=pg.size)
    pg.total = page.total
    cfg = current_app.config
    return {**pg.to_json(), "state": state, "counts": counts,
            "site": site_status(store, cfg["STATE_DIR"], float(cfg["STALL_SECONDS"])),
            "batches": [batch_summary(b) for b in page.rows]}


@bp.get("/batches/<name>")
def batch(name: str) -> dict[str, Any]:
    store = get_store()
    b = store.get_batch(name)
    if b is None:
        abort(404, f"no batch named {name!r}")
    out = batch_summary(b)
    out["jobPage"] = _jobs(name)
    out["timeline"] = [event_view(e) for e in store.list_events(name)]
    out["reports"] = reports_view(store, store.list_reports(name))
    return out


@bp.get("/batches/<name>/jobs")
def jobs(name: str) -> dict[str, Any]:
    if get_store().get_batch(name) is None:
        abort(404, f"no batch named {name!r}")
    return _jobs(name)
