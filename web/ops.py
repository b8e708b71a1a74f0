"""For machines: /healthz (fails when the loop stalls), /metrics, and the push webhook.

The webhook is the site's only POST and changes nothing itself: it asks the reconciler
for an immediate sync, after checking GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the
body with the shared secret) or GitLab's `X-Gitlab-Token`; anything else gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from reconciler.service import read_heartbeat
from reconciler.store.base import Store
from web.app import get_store
from web.views import JOB_STATES, STATES

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    beat = read_heartbeat(current_app.config["STATE_DIR"])
    last = beat.get("lastPass")
    interval = float(beat.get("interval") or 0)
    limit = max(float(current_app.config["STALL_SECONDS"]), 3 * interval)
    if not last:
        return {"status": "stalled", "reason": "no reconcile pass recorded yet"}, 503
    age = time.time() - float(last)
    if age > limit:
        return {"status": "stalled", "lastPassAgeSeconds": round(age, 1),
                "limitSeconds": limit}, 503
    return {"status": "ok", "lastPassAgeSeconds": round(age, 1)}, 200


class StoreCollector:
    """Reads the store at scrape time, so the numbers are never stale or duplicated."""

    def __init__(self, store: Store, state_dir: Any) -> None:
        self.store = store
        self.state_dir = state_dir

    def collect(self) -> Any:
        batches = GaugeMetricFamily("batchq_batches", "Batches by state", labels=["state"])
        counts = self.store.count_batches()
        for state in STATES:
            batches.add_metric([state], counts.get(state, 0))
        yield batches
        jobs = GaugeMetricFamily("batchq_jobs", "Jobs (current attempt of each item) by state",
                                 labels=["state"])
        totals = dict.fromkeys(JOB_STATES, 0)
        for b in self.store.list_batches():
            for state, n in b.status.counts.items():
                totals[state] = totals.get(state, 0) + n
        for state, n in totals.items():
            jobs.add_metric([state], n)
        yield jobs
        beat = read_heartbeat(self.state_dir)
        yield GaugeMetricFamily("batchq_reconcile_duration_seconds",
                                "Duration of the last reconcile pass",
                                value=float(beat.get("passSeconds") or 0))
        stats = self.store.outbox_stats()
        yield CounterMetricFamily("batchq_emails_sent", "Report emails delivered",
                                  value=stats["delivered"])
        yield CounterMetricFamily("batchq_emails_failed", "Failed delivery attempts",
                                  value=stats["failed"])
        yield GaugeMetricFamily("batchq_emails_waiting", "Report emails not yet delivered",
                                value=stats["waiting"])
        last = beat.get("lastSync")
        yield GaugeMetricFamily("batchq_git_sync_age_seconds", "Seconds since the last sync",
                                value=time.time() - float(last) if last else float("nan"))


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry()
    registry.register(StoreCollector(get_store(), current_app.config["STATE_DIR"]))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")


def _verified() -> bool:
    body = request.get_data(cache=True)
    secret = current_app.config.get("WEBHOOK_SECRET")
    signature = request.headers.get("X-Hub-Signature-256", "")
    if secret and signature.startswith("sha256="):
        expected = hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature[len("sha256="):], expected)
    token = current_app.config.get("GITLAB_TOKEN")
    given = request.headers.get("X-Gitlab-Token")
    if token and given is not None:
        return hmac.compare_digest(given.encode(), str(token).encode())
    return False


@bp.post("/hooks/git")
def git_hook() -> tuple[dict[str, str], int]:
    if not _verified():
        return {"error": "missing or bad signature"}, 401
    trigger = current_app.config.get("TRIGGER_SYNC")
    if trigger is not None:
        trigger()
    else:
        (current_app.config["STATE_DIR"] / "sync-requested").touch()
    return {"status": "sync requested"}, 202
