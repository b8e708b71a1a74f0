"""HTML pages: the batch list and one batch. They read; they never change anything.

Templates autoescape everything (no `|safe` on data anywhere), and every response carries
a Content-Security-Policy that allows no script at all, so even a title crafted to break
out of the markup could not run. The pages need no JavaScript: filters are links and GET
forms, and a `<meta http-equiv="refresh">` reloads a page only while work is moving.
"""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    render_template,
    request,
)
from werkzeug.exceptions import BadRequest, HTTPException

from reconciler.domain.states import BatchState
from reconciler.support.timefmt import parse_rfc3339
from web.storage import get_store
from web.views import (
    JOB_STATES,
    STATES,
    BadFilter,
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

bp = Blueprint("pages", __name__)

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")


def ago(value: str | None) -> str:
    """'3 min ago' for an ISO time (the exact time goes in a title attribute)."""
    if not value:
        return "never"
    delta = int(time.time() - parse_rfc3339(value))
    if delta < 0:
        return "just now"
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            return f"{delta // seconds} {unit} ago"
    return f"{delta} s ago"


def utc(value: str | None) -> str:
    """'2026-11-28 16:54:46 UTC' for an ISO time."""
    return value.replace("T", " ").replace("Z", " UTC") if value else ""


def short(rev: str | None) -> str:
    return (rev or "")[:10]


def number(n: int | float) -> str:
    return f"{n:,}"


def _repo_url() -> str:
    return str(current_app.config.get("REPO_WEB_URL") or "").rstrip("/")


def commit_url(rev: str | None) -> str | None:
    """The commit on the repository's web host, when REPO_WEB_URL is configured."""
    base = _repo_url()
    return f"{base}/commit/{rev}" if base and rev else None


def file_url(rev: str | None, path: str | None) -> str | None:
    """A file as of a commit on the repository's web host, when REPO_WEB_URL is set."""
    base = _repo_url()
    return f"{base}/blob/{rev}/{path}" if base and rev and path else None


def install(app: Flask) -> None:
    """Filters, globals, headers and error pages the templates rely on."""
    app.jinja_env.filters.update(ago=ago, utc=utc, short=short, number=number)
    app.jinja_env.globals.update(commit_url=commit_url, file_url=file_url)

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if request.path.startswith(("/api/", "/hooks/", "/healthz", "/metrics")):
            return {"error": exc.name, "message": exc.description}, code
        return render_template("error.html", code=code, name=exc.name,
                               description=exc.description, site=None, refresh=False), code

    @app.errorhandler(BadFilter)
    def bad_filter(exc: BadFilter) -> Any:
        """A filter the lists cannot apply, on a page or in the API: a 400 that says why."""
        return http_error(BadRequest(str(exc)))


def _site() -> dict[str, Any]:
    cfg = current_app.config
    return site_status(get_store(), heartbeat(cfg), float(cfg["STALL_SECONDS"]))


@bp.get("/")
def index() -> str:
    listing = batch_list(get_store(), request.args, int(current_app.config["PAGE_SIZE"]))
    moving = (BatchState.PROCESSING, BatchState.REPORTING, BatchState.UPDATE_REPORTING)
    refresh = (any(listing.counts.get(s) for s in moving)
               or any(r["active"] for r in listing.rows))
    return render_template("index.html", rows=listing.rows, counts=listing.counts,
                           states=STATES, state=listing.state, paging=listing.paging,
                           depositor=listing.depositor,
                           site=_site(), refresh=refresh)


@bp.get("/batches/<name>")
def batch(name: str) -> str:
    store = get_store()
    b = store.get_batch(name)
    if b is None:
        abort(404, f"There is no batch named {name!r} (it may have been removed after its "
                   "retention period, or not synced yet).")
    jobs = job_list(store, name, request.args, int(current_app.config["JOB_PAGE_SIZE"]))
    events = [event_view(e) for e in store.list_events(name)]
    limit = int(current_app.config["TIMELINE_LIMIT"])
    reports = reports_view(store, store.list_reports(name))
    summary = batch_summary(b) | guidance(store, b)
    return render_template(
        "batch.html", b=summary, jobs=jobs.rows, job_states=JOB_STATES, state=jobs.state,
        query=jobs.query or "", paging=jobs.paging, events=events[::-1][:limit],
        hidden_events=max(0, len(events) - limit), reports=reports[::-1], site=_site(),
        refresh=summary["active"])


@bp.get("/batches/<name>/jobs/<job>/output")
def job_output_page(name: str, job: str) -> str:
    """The end of a job's output, linked from its row."""
    view = job_output(get_store(), name, job)
    if view is None:
        abort(404, f"batch {name!r} has no job {job!r}")
    return render_template("output.html", **view, site=_site(), refresh=False)


@bp.get("/batches/<name>/reports/<round_>.eml")
def report_message(name: str, round_: str) -> Response:
    """A report's email exactly as queued for sending (RFC 5322), as a download."""
    for r in get_store().list_reports(name):
        if r.id.rpartition(":")[2] == round_ and r.message:  # the current incarnation's
            return Response(r.message, mimetype="message/rfc822", headers={
                "Content-Disposition": f'attachment; filename="{name}-report-{round_}.eml"'})
    abort(404, f"no report {round_} of batch {name!r}")

