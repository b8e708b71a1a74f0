"""What the pages and the JSON API show, computed once from the store for both."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.model import Batch, Report
from reconciler.service import read_heartbeat
from reconciler.store.base import Store

ACTIVE = {"Pending", "Processing", "Reporting", "UpdateReporting"}
STATES = ["Pending", "Held", "Processing", "Reporting", "UpdateReporting", "Completed",
          "Failed", "Deleted"]
JOB_STATES = ["Pending", "Held", "Processing", "Completed", "Failed"]


def iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def paging(raw: str | None, size: int, total: int) -> Paging:
    try:
        page = max(1, int(raw or 1))
    except ValueError:
        page = 1
    p = Paging(page, size, total)
    p.page = min(p.page, p.pages)
    return p


def batch_summary(b: Batch) -> dict[str, Any]:
    counts = dict(b.status.counts)
    total = b.status.item_count or sum(counts.values())
    done = counts.get("Completed", 0) + counts.get("Failed", 0)
    spec = b.spec
    return {
        "name": b.name,
        "state": str(b.status.state),
        "message": b.status.message,
        "generation": b.generation,
        "observedGeneration": b.status.observed_generation,
        "sourcePath": b.source_path,
        "sourceRevision": b.source_revision,
        "specError": b.spec_error,
        "profile": spec.profile if spec else None,
        "depositor": {"name": spec.depositor.name, "email": spec.depositor.email}
        if spec else None,
        "priority": spec.priority if spec else None,
        "requestedState": spec.state if spec else None,
        "jobs": total,
        "counts": counts,
        "progress": round(100 * done / total) if total else 0,
        "completedPercent": round(100 * counts.get("Completed", 0) / total) if total else 0,
        "failedPercent": round(100 * counts.get("Failed", 0) / total) if total else 0,
        "updatedAt": iso(b.updated_at),
        "startedAt": iso(b.status.started_at),
        "finishedAt": iso(b.status.finished_at),
        "conditions": [{"type": c.type, "status": c.status, "reason": c.reason,
                        "message": c.message} for c in b.status.conditions],
        "failures": list(b.status.failures),
    }


def report_view(store: Store, r: Report) -> dict[str, Any]:
    return {
        "id": r.id, "kind": r.kind, "createdAt": iso(r.created_at), "subject": r.subject,
        "recipients": list(r.recipients), "body": r.body, "changed": list(r.changed),
        "emailed": r.emailed, "delivered": bool(r.emailed and store.delivered(r.id)),
    }


def site_status(store: Store, state_dir: Any) -> dict[str, Any]:
    beat = read_heartbeat(state_dir)
    last_sync = beat.get("lastSync")
    return {
        "lastSync": iso(float(last_sync)) if last_sync else None,
        "syncAgeSeconds": round(time.time() - float(last_sync), 1) if last_sync else None,
        "head": beat.get("head") or store.get_meta("synced_commit"),
        "syncError": store.get_meta("sync_error") or "",
        "deletionRefused": store.get_meta("deletion_refused") or "",
        "fileErrors": json.loads(store.get_meta("file_errors") or "{}"),
    }
