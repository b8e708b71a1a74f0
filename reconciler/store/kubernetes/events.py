"""Kubernetes Events on the Batch (events.k8s.io/v1), so `kubectl describe batch` and
`kubectl events --for batch/NAME` tell the batch's story beside the durable timeline.

As client-go's event recorder does it: the reporting controller is `batchq.dev/reconciler`
and the instance this process; an event that happens again (same object, type, reason,
action and note) is not a new object but one more in the first one's `series` (count and
last time), here across restarts too, because the event's name is a hash of what it says.
Events are a courtesy: one that cannot be written (RBAC, the API server busy) is logged and
costs the pass nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from reconciler.domain.states import BatchState as B
from reconciler.store.base import Delivery, RecipientState
from reconciler.store.kubernetes.names import GROUP, VERSION
from reconciler.store.kubernetes.rawjson import finish
from reconciler.support.timefmt import rfc3339

log = logging.getLogger(__name__)

CONTROLLER = "batchq.dev/reconciler"
NOTE_MAX = 1024  # the API server refuses a longer note


@dataclass(frozen=True)
class EventKind:
    """What kind of event a timeline reason is on the Batch: its type, reason and action."""

    type: str  # Normal | Warning
    reason: str  # CamelCase, what happened
    action: str  # what the controller did or tried to do


# timeline reason (the controller's, the sync's and the mailer's) -> the Event it makes
KINDS: dict[str, EventKind] = {
    "SpecApplied": EventKind("Normal", "SpecApplied", "Sync"),
    "Invalid": EventKind("Warning", "Invalid", "Sync"),
    "DeletionRefused": EventKind("Warning", "DeletionRefused", "Prune"),
    B.PROCESSING: EventKind("Normal", "Admitted", "Admit"),
    B.HELD: EventKind("Normal", B.HELD, "Hold"),
    B.PENDING: EventKind("Normal", "Released", "Release"),  # only ever from Held
    "Restarted": EventKind("Normal", "Restarted", "Restart"),
    "JobFailed": EventKind("Warning", "JobFailed", "ObserveJob"),
    B.REPORTING: EventKind("Normal", B.REPORTING, "Report"),
    B.UPDATE_REPORTING: EventKind("Normal", B.UPDATE_REPORTING, "Report"),
    B.COMPLETED: EventKind("Normal", B.COMPLETED, "Report"),
    B.FAILED: EventKind("Warning", B.FAILED, "Report"),
    B.DELETED: EventKind("Normal", B.DELETED, "Delete"),
    "ReportSent": EventKind("Normal", "ReportSent", "Email"),
    "ReportDeferred": EventKind("Warning", "ReportDeferred", "Email"),
    "ReportFailed": EventKind("Warning", "ReportFailed", "Email"),
}


def event_name(batch: str, uid: str, kind: EventKind, note: str) -> str:
    """The same event of the same object always gets the same name (a DNS subdomain)."""
    digest = hashlib.sha256("\0".join((uid, kind.type, kind.reason, kind.action, note))
                            .encode()).hexdigest()[:16]
    return f"{batch}.{digest}"


def event_body(name: str, batch: dict[str, Any], kind: EventKind, note: str,
               instance: str, now: float) -> dict[str, Any]:
    """A new events.k8s.io/v1 Event regarding the Batch `batch` (its object as read)."""
    meta = batch["metadata"]
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "eventTime": rfc3339(now, micro=True),
        "reportingController": CONTROLLER,
        "reportingInstance": instance[:128],
        "action": kind.action, "reason": kind.reason, "type": kind.type,
        "note": note[:NOTE_MAX],
        "regarding": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Batch",
                      "name": meta["name"], "namespace": meta["namespace"],
                      "uid": meta["uid"]},
    }


class EventRecorder:
    """Writes Events on Batches, each new one created and each repeat counted in its series."""

    def __init__(self, api: client.ApiClient, namespace: str,
                 instance: str | None = None) -> None:
        self.events = client.EventsV1Api(api)
        self.ns = namespace
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._counts: dict[str, int] = {}  # event name -> how many times it happened
        self._lock = threading.Lock()  # the controller and the mailer's thread both record

    def record(self, batch: dict[str, Any], reason: str, note: str) -> None:
        """Record that `reason` (a timeline reason, see KINDS) happened to the Batch."""
        kind = KINDS.get(reason)
        if kind is None:
            return
        note = " ".join(note.split())[:NOTE_MAX] or kind.reason
        name = event_name(batch["metadata"]["name"], batch["metadata"]["uid"], kind, note)
        try:
            with self._lock:
                self._record(name, batch, kind, note)
        except Exception as exc:  # a courtesy: the timeline is the record
            log.warning("could not record the event %s on batch %s: %s", kind.reason,
                        batch["metadata"]["name"], exc)

    def _record(self, name: str, batch: dict[str, Any], kind: EventKind, note: str) -> None:
        now = time.time()
        count = self._counts.get(name)
        if count is None:
            try:
                finish(self.events.create_namespaced_event(
                    self.ns, event_body(name, batch, kind, note, self.instance, now),
                    _preload_content=False))
                self._counts[name] = 1
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            # made before this process started (or by another instance): count on from it
            existing = json.loads(self.events.read_namespaced_event(
                name, self.ns, _preload_content=False).data)
            count = int((existing.get("series") or {}).get("count") or 1)
        try:
            finish(self.events.patch_namespaced_event(
                name, self.ns, {"series": {"count": count + 1,
                                           "lastObservedTime": rfc3339(now, micro=True)}},
                _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._counts.pop(name)  # the API server let it expire (--event-ttl): a new one
            self._record(name, batch, kind, note)
            return
        self._counts[name] = count + 1


def delivery_events(report_id: str, recipients: Sequence[RecipientState], error: str,
                    retry_at: float | None, *,
                    first_acceptance: bool) -> list[tuple[str, str]]:
    """(reason, note) of the Events one delivery attempt of a report makes: ReportSent the
    first time the server accepts it for someone, ReportFailed (when the entry closes) for
    each address it never reached (bounced, expired), ReportDeferred while it waits."""
    out: list[tuple[str, str]] = []
    sent = [r.address for r in recipients if r.state == Delivery.DELIVERED]
    if sent and first_acceptance:
        out.append(("ReportSent", f"report {report_id} accepted for {', '.join(sent)}"))
    for r in recipients if retry_at is None else ():  # once, when the entry closes
        if r.state in (Delivery.BOUNCED, Delivery.EXPIRED):
            out.append(("ReportFailed", f"report {report_id} to {r.address}: {r.state.meaning}"
                                        f" ({r.code or ''} {r.detail})".replace("( ", "(")))
    if retry_at is not None and error:
        out.append(("ReportDeferred", f"report {report_id}: {error}; tried again later"))
    return out
