"""What the pages and the JSON API show, computed once from the store for both.

Every function here reads through the `ReadStore` protocol and returns plain JSON-ready
values, so the HTML templates and /api/... can never disagree. Times are RFC 3339 UTC
strings (`reconciler.support.timefmt`); the templates turn them into "3 min ago" with the
exact time in a title.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.domain.guidance import next_step, why_pending
from reconciler.domain.model import Batch, ItemStatus, Report
from reconciler.domain.refusals import refusals_of
from reconciler.domain.states import BatchState, JobState
from reconciler.store.base import (
    WAITING,
    Delivery,
    Event,
    ReadStore,
    RecipientState,
    SyncState,
)
from reconciler.support.controlchars import escape_controls
from reconciler.support.heartbeat import read_heartbeat
from reconciler.support.redaction import redact_text
from reconciler.support.timefmt import rfc3339_or_none as iso

STATES = [str(s) for s in BatchState]
JOB_STATES = [str(s) for s in JobState]
# batch states in which something will move without a new commit: the pages refresh
ACTIVE = {BatchState.PENDING, BatchState.PROCESSING, BatchState.REPORTING,
          BatchState.UPDATE_REPORTING}
RUNNING_JOBS = (JobState.PENDING, JobState.PROCESSING)
CHANGES_SHOWN = 200  # of one report's changes; the count says how many there are in all
QUERY_MAX = 200  # characters of a job search that are used


class BadFilter(ValueError):
    """A query parameter a list cannot be filtered by (the site answers 400 with it)."""


@dataclass
class Paging:
    page: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def to_json(self) -> dict[str, int]:
        return {"total": self.total, "page": self.page, "pages": self.pages,
                "pageSize": self.size}


def paging(raw: str | None, size: int, total: int) -> Paging:
    """Page `raw` (1-based) of `total` rows, clamped to the pages that exist."""
    try:
        page = max(1, int(raw or 1))
    except ValueError:
        page = 1
    p = Paging(page, max(1, size), total)
    p.page = min(p.page, p.pages)
    return p


def percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def batch_summary(b: Batch) -> dict[str, Any]:
    """One batch as the list shows it (the detail adds to it)."""
    counts = {k: v for k, v in b.status.counts.items() if v}
    total = b.status.item_count or sum(counts.values())
    completed, failed = counts.get(JobState.COMPLETED, 0), counts.get(JobState.FAILED, 0)
    running = sum(counts.get(s, 0) for s in RUNNING_JOBS)
    spec = b.spec
    state = shown_state(b)
    return {
        "name": b.name,
        "state": state,
        "message": b.status.message,
        "generation": b.generation,
        "observedGeneration": b.status.observed_generation,
        "sourcePath": b.source_path,
        "sourceRevision": b.source_revision,
        "specError": b.spec_error,
        "manifestError": b.status.manifest_error,
        "profile": spec.profile if spec else None,
        "depositor": {"name": spec.depositor.name, "email": spec.depositor.email}
        if spec else None,
        "priority": spec.priority if spec else None,
        "requestedState": spec.state if spec else None,
        "jobs": total,
        "counts": counts,
        "progress": round(percent(completed + failed, total)),  # finished, either way
        "completed": completed,
        "failed": failed,
        "completedPercent": percent(completed, total),
        "failedPercent": percent(failed, total),
        "processingPercent": percent(counts.get(JobState.PROCESSING, 0), total),
        # something moves without a new commit: queued, running, reporting, a restart
        "active": (state in ACTIVE and spec is not None)
        or (state not in (BatchState.HELD, BatchState.DELETED) and running > 0),
        "submittedAt": iso(b.submitted_at),
        "updatedAt": iso(b.updated_at),
        "startedAt": iso(b.status.started_at),
        "finishedAt": iso(b.status.finished_at),
        "deletedAt": iso(b.status.deleted_at),
        "conditions": [{"type": c.type, "status": c.status, "reason": c.reason,
                        "message": c.message, "lastTransition": iso(c.last_transition)}
                       for c in b.status.conditions],
        "failures": list(b.status.failures),
    }


def shown_state(b: Batch) -> str:
    """Invalid for a file that never parsed (it waits for nothing), else the stored state."""
    return "Invalid" if b.spec is None and b.spec_error else str(b.status.state)


def guidance(store: ReadStore, b: Batch) -> dict[str, str]:
    """Why the batch waits and what to do next (`reconciler.domain.guidance`), for the
    batch page and its API view; read only for the states they concern."""
    why = nxt = ""
    if b.status.state in (BatchState.PENDING, BatchState.HELD):
        try:
            sync = store.load_sync_state()
        except ValueError:
            sync = SyncState()
        why = why_pending(b, store.list_batches(), sync.queue, sync.profiles)
    elif b.status.state == BatchState.FAILED and b.spec is not None:
        reports = store.list_reports(b.name)
        nxt = next_step(b, store.list_items(b.name), reports[-1].job_states if reports else {})
    return {"why": why, "next": nxt}


def job_output(store: ReadStore, batch: str, job: str) -> dict[str, Any] | None:
    """A job's output tail for its page, or None when `job` is not a job of `batch`. Shown
    with credentials hidden and control characters escaped, line by line."""
    found = next((j for j in store.list_jobs(batch) if j.name == job), None)
    if found is None:
        return None
    text = store.job_output(job)
    shown = "\n".join(escape_controls(redact_text(line)) for line in text.split("\n")) \
        if text else None
    return {"batch": batch, "job": job, "item": found.item, "attempt": found.attempt,
            "output": shown}


def job_view(s: ItemStatus) -> dict[str, Any]:
    return {"item": s.item.id, "title": s.item.title, "url": s.item.url, "name": s.job_name,
            "files": s.item.file_count(), "primaryId": s.item.primary_id,
            "localIds": list(s.item.local_ids),
            "state": str(s.state), "attempts": s.attempts, "message": s.message,
            "startedAt": iso(s.started_at), "finishedAt": iso(s.finished_at)}


def job_page(store: ReadStore, name: str, *, state: str | None, query: str | None,
             page: str | None, size: int) -> tuple[Paging, list[dict[str, Any]]]:
    """One page of a batch's jobs: a COUNT and a LIMIT/OFFSET read, whatever its size."""
    total = store.total_items(name, state=state, query=query)
    pg = paging(page, size, total)
    rows = store.list_items(name, state=state, query=query, offset=pg.offset, limit=pg.size)
    return pg, [job_view(s) for s in rows]


def state_filter(raw: str | None, allowed: list[str], what: str) -> str | None:
    """The `state=` filter: None for all, else one of `allowed` (else BadFilter)."""
    state = raw or None
    if state is not None and state not in allowed:
        raise BadFilter(f"unknown {what} {state!r}; one of {', '.join(allowed)}")
    return state


@dataclass
class BatchList:
    """One page of the batch list, as the page and /api/batches both show it."""

    state: str | None
    counts: dict[str, int]  # batches by state, over all pages
    paging: Paging
    rows: list[dict[str, Any]]
    depositor: str | None = None


def _depositor_list(store: ReadStore, state: str | None, depositor: str, page: str | None,
                    size: int) -> BatchList:
    """One depositor's batches (by email, any case), newest activity first."""
    theirs = [b for b in store.list_batches()
              if b.spec is not None and b.spec.depositor.email.lower() == depositor]
    counts: dict[str, int] = {}
    for b in theirs:
        counts[str(b.status.state)] = counts.get(str(b.status.state), 0) + 1
    rows = sorted((b for b in theirs if state is None or b.status.state == state),
                  key=lambda b: (-b.updated_at, b.name))
    pg = paging(page, size, len(rows))
    return BatchList(state, counts, pg, [batch_summary(b) for b in
                                         rows[pg.offset:pg.offset + pg.size]], depositor)


def batch_list(store: ReadStore, args: Mapping[str, str], size: int) -> BatchList:
    """The list for the request's `state=`, `depositor=` (an email) and `page=` (newest
    activity first)."""
    state = state_filter(args.get("state"), STATES, "state")
    depositor = (args.get("depositor") or "").strip().lower()[:QUERY_MAX]
    if depositor:
        return _depositor_list(store, state, depositor, args.get("page"), size)
    counts = store.count_batches()
    total = counts.get(state, 0) if state else sum(counts.values())
    pg = paging(args.get("page"), size, total)
    page = store.page_batches(state=state, offset=pg.offset, limit=pg.size)
    pg.total = page.total
    return BatchList(state, counts, pg, [batch_summary(b) for b in page.rows])


@dataclass
class JobList:
    """One page of a batch's jobs, as the batch page and /api/batches/<name> show it."""

    state: str | None
    query: str | None
    paging: Paging
    rows: list[dict[str, Any]]


def job_list(store: ReadStore, name: str, args: Mapping[str, str], size: int) -> JobList:
    """The jobs for the request's `state=`, `q=` (a search) and `page=`."""
    state = state_filter(args.get("state"), JOB_STATES, "job state")
    query = (args.get("q") or "").strip()[:QUERY_MAX] or None
    pg, rows = job_page(store, name, state=state, query=query, page=args.get("page"),
                        size=size)
    return JobList(state, query, pg, rows)


def event_view(e: Event) -> dict[str, Any]:
    return {"at": iso(e.at), "reason": e.reason, "message": e.message,
            "revision": e.revision}


def delivery_summary(emailed: bool, accepted: bool, states: list[RecipientState]) -> str:
    """One phrase for a report's email: sent, waiting, partly refused, undeliverable."""
    if not emailed:
        return "not emailed"
    if not states:  # not tried yet (or delivered before recipients were recorded)
        return "emailed" if accepted else "waiting to be emailed"
    delivered = sum(d.state == Delivery.DELIVERED for d in states)
    waiting = sum(d.state in WAITING for d in states)
    if waiting and not delivered:
        return "waiting to be emailed"
    if delivered == len(states):
        return "emailed"
    if delivered and waiting:
        return "emailed to some recipients; the others are tried again"
    if delivered:
        return "emailed to some recipients; undeliverable to the others"
    return "undeliverable"


def reports_view(store: ReadStore, reports: list[Report]) -> list[dict[str, Any]]:
    """Reports oldest first, each with what changed since the one before it."""
    out: list[dict[str, Any]] = []
    previous: Report | None = None
    for r in reports:
        view: dict[str, Any] = {
            "id": r.id, "round": r.id.rpartition(":")[2], "kind": r.kind,
            "createdAt": iso(r.created_at), "subject": r.subject,
            "recipients": list(r.recipients), "body": r.body, "changed": list(r.changed),
            "emailed": r.emailed, "delivered": bool(r.emailed and store.delivered(r.id)),
            "previous": previous.id if previous else None,
        }
        states = store.recipient_states(r.id) if r.emailed else []
        view["delivery"] = [{"recipient": d.address, "state": str(d.state),
                             "meaning": d.state.meaning, "code": d.code, "detail": d.detail,
                             "attempts": d.attempts, "at": iso(d.at)} for d in states]
        view["deliverySummary"] = delivery_summary(r.emailed, view["delivered"], states)
        if previous is None:
            view["changes"], view["changesTotal"] = [], 0
        else:
            before = previous.job_states
            changed = [i for i, s in r.job_states.items() if before.get(i) != s]
            view["changesTotal"] = len(changed)
            view["changes"] = [{"item": i, "from": before.get(i), "to": r.job_states[i]}
                               for i in changed[:CHANGES_SHOWN]]
        out.append(view)
        previous = r
    return out


def heartbeat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """When the loop last passed and synced: from HEARTBEAT when the site is told where
    (`batchq web` on Kubernetes: the leader's Lease), else the state dir's heartbeat file
    (the loop's own site, or the embedded backend's on the same disk)."""
    source = cfg.get("HEARTBEAT")
    return dict(source()) if source is not None else read_heartbeat(Path(cfg["STATE_DIR"]))


def site_status(store: ReadStore, beat: dict[str, Any], stall_seconds: float) -> dict[str, Any]:
    """The repository-wide facts every page shows: last sync, sync and file errors."""
    last_sync = beat.get("lastSync")
    age = round(time.time() - float(last_sync), 1) if last_sync else None
    interval = float(beat.get("interval") or 0)
    try:
        state = store.load_sync_state()
    except ValueError:  # a stored field is not JSON: show the page without it
        state = SyncState()
    return {
        "lastSync": iso(float(last_sync)) if last_sync else None,
        "syncAgeSeconds": age,
        "syncStale": age is None or age > max(stall_seconds, 3 * interval),
        "head": str(beat.get("head") or state.synced_commit or ""),
        "syncError": state.sync_error,
        "deletionRefused": state.deletion_refused,
        "fileErrors": {str(k): str(v) for k, v in sorted(state.file_errors.items())},
        "accessRefusals": [dict(r.to_dict(), line=r.line())
                           for r in refusals_of(state.access_refusals)],
    }
