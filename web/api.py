"""JSON mirroring the pages, with the same query parameters and the same paging.

- `GET /api/batches?state=&depositor=&page=`: the list (`batches`), counts by state,
  paging, and the site facts (last sync, sync error, file errors, refused deletion).
- `GET /api/batches/<name>?state=&q=&page=`: one batch, a page of its jobs (`jobs`), its
  whole timeline (oldest first) and its reports (oldest first, each with its changes).
- `GET /api/batches/<name>/jobs?state=&q=&page=`: just the page of jobs.
- `GET /api/batches/<name>/jobs/<job>/output`: the end of that job's output (stderr, then
  stdout), credentials hidden; 404 for a name that is not one of the batch's jobs.

An unknown state is a 400, an unknown batch a 404; a page past the end is clamped. The
lists are computed by `web.views`, as for the pages, so both always show the same rows.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, request

from web.storage import get_store
from web.views import (
    batch_list,
    batch_summary,
    event_view,
    guidance,
    heartbeat,
    job_list,
    job_output,
    reports_view,
    site_status,
)

bp = Blueprint("api", __name__, url_prefix="/api")


def _jobs(name: str) -> dict[str, Any]:
    jobs = job_list(get_store(), name, request.args, int(current_app.config["JOB_PAGE_SIZE"]))
    return {**jobs.paging.to_json(), "state": jobs.state, "q": jobs.query, "rows": jobs.rows}


@bp.get("/batches")
def batches() -> dict[str, Any]:
    store = get_store()
    cfg = current_app.config
    listing = batch_list(store, request.args, int(cfg["PAGE_SIZE"]))
    return {**listing.paging.to_json(), "state": listing.state, "counts": listing.counts,
            "depositor": listing.depositor,
            "site": site_status(store, heartbeat(cfg), float(cfg["STALL_SECONDS"])),
            "batches": listing.rows}


@bp.get("/batches/<name>")
def batch(name: str) -> dict[str, Any]:
    store = get_store()
    b = store.get_batch(name)
    if b is None:
        abort(404, f"no batch named {name!r}")
    out = batch_summary(b) | guidance(store, b)
    out["jobPage"] = _jobs(name)
    out["timeline"] = [event_view(e) for e in store.list_events(name)]
    out["reports"] = reports_view(store, store.list_reports(name))
    return out


@bp.get("/batches/<name>/jobs/<job>/output")
def output(name: str, job: str) -> dict[str, Any]:
    view = job_output(get_store(), name, job)
    if view is None:
        abort(404, f"batch {name!r} has no job {job!r}")
    return view


@bp.get("/batches/<name>/jobs")
def jobs(name: str) -> dict[str, Any]:
    if get_store().get_batch(name) is None:
        abort(404, f"no batch named {name!r}")
    return _jobs(name)
