"""For machines: /healthz (fails when the loop stalls), /readyz (this reconciler leads),
/livez (the site answers), /metrics, and the push webhook.

The webhook is the site's only POST and changes nothing itself: it asks the reconciler
for an immediate sync, after checking GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the
raw body with the shared secret) or GitLab's `X-Gitlab-Token`. A request with neither, a
bad one, or one for a scheme that is not configured gets 401 and triggers nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from reconciler.domain.refusals import refusals_of
from reconciler.domain.states import BatchState
from reconciler.store.base import ReadStore, SyncState
from web.storage import get_store
from web.views import JOB_STATES, STATES, heartbeat

bp = Blueprint("ops", __name__)


@bp.record_once
def _registry(state: BlueprintSetupState) -> None:
    """One registry per app; its collector reads the store at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    state.app.extensions["batchq.metrics"] = registry


@bp.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    """200 while the reconcile loop passes; 503 once its last pass is too old."""
    cfg = current_app.config
    beat = heartbeat(cfg)
    interval = float(beat.get("interval") or 0)
    limit = max(float(cfg["STALL_SECONDS"]), 3 * interval)
    now = time.time()
    last = beat.get("lastPass")
    sync = beat.get("lastSync")
    facts: dict[str, Any] = {
        "limitSeconds": limit,
        "lastSyncAgeSeconds": round(now - float(sync), 1) if sync else None,
        "head": beat.get("head") or None,
    }
    if not last:
        up = now - float(cfg["STARTED_AT"])
        if up <= limit:  # a new process: its first pass may still be running
            return {"status": "starting", "uptimeSeconds": round(up, 1), **facts}, 200
        return {"status": "stalled", "reason": "no reconcile pass recorded", **facts}, 503
    age = round(now - float(last), 1)
    if age > limit:
        return {"status": "stalled", "reason": f"the last reconcile pass was {age:.0f} s ago",
                "lastPassAgeSeconds": age, **facts}, 503
    return {"status": "ok", "lastPassAgeSeconds": age, **facts}, 200


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """200 when this process should get traffic that needs the acting reconciler (the push
    webhook): under leader election, only while it leads; a site without a loop is ready."""
    ready = current_app.config.get("READY")
    if ready is None or ready():
        return {"status": "ready"}, 200
    return {"status": "standing by", "reason": "another reconciler holds the Lease"}, 503


@bp.get("/livez")
def livez() -> tuple[dict[str, Any], int]:
    """200 while this process answers: the site's own liveness (/healthz is the loop's)."""
    return {"status": "ok"}, 200


class StoreCollector:
    """Reads the store at scrape time, so the numbers are never stale or duplicated."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = get_store()
        batches = GaugeMetricFamily("batchq_batches", "Batches by state", labels=["state"])
        counts = store.count_batches()
        for state in STATES:
            batches.add_metric([state], counts.get(state, 0))
        yield batches
        totals = dict.fromkeys(JOB_STATES, 0)
        for b in store.list_batches():
            if b.status.state == BatchState.DELETED:  # its jobs are gone
                continue
            for state, n in b.status.counts.items():
                totals[state] = totals.get(state, 0) + n
        jobs = GaugeMetricFamily("batchq_jobs", "Jobs (the current attempt of each item) by "
                                 "state, across batches that are not deleted",
                                 labels=["state"])
        for state, n in totals.items():
            jobs.add_metric([state], n)
        yield jobs
        beat = heartbeat(current_app.config)
        now = time.time()
        yield GaugeMetricFamily("batchq_reconcile_duration_seconds",
                                "Duration of the last reconcile pass",
                                value=float(beat.get("passSeconds") or 0))
        last_pass = beat.get("lastPass")
        yield GaugeMetricFamily("batchq_reconcile_last_pass_age_seconds",
                                "Seconds since the last reconcile pass finished",
                                value=now - float(last_pass) if last_pass else float("nan"))
        stats = store.outbox_stats()
        yield CounterMetricFamily("batchq_emails_sent", "Report emails delivered",
                                  value=stats.get("delivered", 0))
        yield CounterMetricFamily("batchq_emails_failed", "Failed email delivery attempts",
                                  value=stats.get("failed", 0))
        yield GaugeMetricFamily("batchq_emails_waiting", "Report emails not yet delivered",
                                value=stats.get("waiting", 0))
        last_sync = beat.get("lastSync")
        yield GaugeMetricFamily("batchq_git_sync_age_seconds",
                                "Seconds since the last successful Git sync",
                                value=now - float(last_sync) if last_sync else float("nan"))
        sync = _sync_state(store)
        yield GaugeMetricFamily("batchq_git_sync_error",
                                "1 while the last Git sync failed",
                                value=1 if sync.sync_error else 0)
        yield GaugeMetricFamily("batchq_file_errors",
                                "Files in the repository that cannot be used",
                                value=len(sync.file_errors))
        refused = GaugeMetricFamily("batchq_access_refusals", "Changes the access policy"
                                    " refused, kept while the file holds them; applied: 1 in"
                                    " mode warn", labels=["path", "applied"])
        for r in refusals_of(sync.access_refusals):
            refused.add_metric([r.path, str(int(r.applied))], 1)
        yield _summed(refused)


def _summed(family: GaugeMetricFamily) -> GaugeMetricFamily:
    """One sample per label set (a file refused twice counts 2)."""
    totals: dict[tuple[str, ...], float] = {}
    for sample in family.samples:
        key = tuple(sample.labels.values())
        totals[key] = totals.get(key, 0.0) + sample.value
    family.samples = []
    for key, value in totals.items():
        family.add_metric(list(key), value)
    return family


def _sync_state(store: ReadStore) -> SyncState:
    try:
        return store.load_sync_state()
    except ValueError:  # a stored field is not JSON: the gauges read as if it were empty
        return SyncState()


@bp.get("/metrics")
def metrics() -> Response:
    registry: CollectorRegistry = current_app.extensions["batchq.metrics"]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _verified() -> bool:
    """GitHub's body signature or GitLab's token, whichever the request carries."""
    cfg = current_app.config
    signature = request.headers.get("X-Hub-Signature-256")
    if signature is not None:
        secret = cfg.get("WEBHOOK_SECRET")
        if not secret or not signature.startswith("sha256="):
            return False
        body = request.get_data(cache=False)
        expected = hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature[len("sha256="):].encode(), expected.encode())
    token = request.headers.get("X-Gitlab-Token")
    if token is not None:
        wanted = cfg.get("GITLAB_TOKEN")
        return bool(wanted) and hmac.compare_digest(token.encode(), str(wanted).encode())
    return False


@bp.post("/hooks/git")
def git_hook() -> tuple[dict[str, str], int]:
    if not _verified():
        return {"error": "missing or bad webhook signature or token"}, 401
    if request.headers.get("X-GitHub-Event") == "ping":  # sent once when the hook is added
        return {"status": "pong"}, 200
    trigger = current_app.config.get("TRIGGER_SYNC")
    if trigger is not None:
        trigger()
    else:  # a separate `batchq web`: the loop looks for this file while it waits
        state_dir = current_app.config["STATE_DIR"]
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "sync-requested").touch()
    return {"status": "sync requested"}, 202

