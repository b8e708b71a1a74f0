"""The ConfigMaps beside a Batch (DESIGN §8), as pure functions: their names and the
JSON inside them, so that a Batch's status stays small and the detail lives here.

- `<batch>-items-NNNN`: `items.json`, the observed state of up to CHUNK items each, fewer
  when their records would take more than ITEMS_BYTES (a URL may be 8 KiB, an item's
  metadata more); the `batchq.dev/first-seq` annotation says where each begins.
- `<batch>-report-<round>-<incarnation>`: the report and its message, gzipped together
  (`report.gz`) and cut into parts of at most REPORT_PART bytes: the first here, the others
  in `<that name>-part-NNN`, made before it (its `batchq.dev/parts` annotation counts them),
  so a report of 10,000 items stays far below the 1 MiB object limit. The outbox is its
  `batchq.dev/outbox` label, and delivery is kept in its annotations. A report stored
  before parts has `report.json` and `message.eml` instead.
- `<batch>-timeline`: `events.json`, the last TIMELINE_MAX events, fewer if they would
  take more than TIMELINE_BYTES.
The store (store.py) reads them from the watch cache and writes them; nothing here talks
to the API server.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from reconciler.domain.model import Item, ItemStatus, Report
from reconciler.domain.states import JobState
from reconciler.store.base import RecipientState
from reconciler.store.kubernetes.names import A

CHUNK = 500
ITEMS_BYTES = 384 * 1024
RECORD_GROWTH = 1536  # what observing jobs adds to a record: message (<= 1 KiB), name, times
REPORT_PART = 256 * 1024  # bytes of gzipped report per ConfigMap
REPORT_KEY = "report.gz"
TIMELINE_MAX = 500
TIMELINE_BYTES = 256 * 1024


def chunk_name(batch: str, index: int) -> str:
    """The ConfigMap holding items `index*CHUNK` up to the next chunk."""
    return f"{batch}-items-{index:04d}"


def item_chunks(items: list[Item]) -> list[tuple[int, list[Item]]]:
    """The items cut into chunks: (seq of the first, its items), each of at most CHUNK
    items whose records, grown by everything observing their jobs can add, fit in
    ITEMS_BYTES. Deterministic: the same items are cut alike."""
    out: list[tuple[int, list[Item]]] = []
    chunk: list[Item] = []
    first, size = 0, 2
    for n, item in enumerate(items):
        grown = len(json.dumps(new_item_records([item], n)[0])) + RECORD_GROWTH
        if chunk and (len(chunk) >= CHUNK or size + grown > ITEMS_BYTES):
            out.append((first, chunk))
            chunk, first, size = [], n, 2
        chunk.append(item)
        size += grown
    if chunk:
        out.append((first, chunk))
    return out


def new_item_records(items: list[Item], start: int) -> list[dict[str, Any]]:
    """The records of items not yet tried, numbered from `start` (their `seq`)."""
    return [{"item": it.to_dict(), "seq": start + i, "state": str(JobState.PENDING), "attempts": 0,
             "message": "", "jobName": None, "startedAt": None, "finishedAt": None}
            for i, it in enumerate(items)]


def item_status(r: dict[str, Any]) -> ItemStatus:
    return ItemStatus(item=Item.from_dict(r["item"]), seq=r["seq"],
                      state=JobState(r["state"]), attempts=r["attempts"],
                      message=r["message"], job_name=r["jobName"],
                      started_at=r["startedAt"], finished_at=r["finishedAt"])


def report_cm_name(report_id: str) -> str:
    """`name:uid:round` -> `name-report-round-uid`; a report id of a Batch stored
    before incarnations, `name:round`, keeps the `name-report-round` it has."""
    batch, _, round_ = report_id.rpartition(":")
    name, _, incarnation = batch.partition(":")
    return f"{name}-report-{round_}-{incarnation}" if incarnation else f"{name}-report-{round_}"


def report_incarnation(report_id: str) -> str:
    parts = report_id.split(":")
    return parts[1] if len(parts) == 3 else ""


def report_json(report: Report) -> str:
    """`report.json`: the report without its message (kept as binary `message.eml`)."""
    data = {"id": report.id, "batch": report.batch, "kind": report.kind,
            "createdAt": report.created_at, "subject": report.subject,
            "recipients": list(report.recipients), "body": report.body,
            "changed": list(report.changed), "jobStates": report.job_states,
            "emailed": report.emailed}
    return json.dumps(data)


def report_from_json(text: str, message: bytes) -> Report:
    d = json.loads(text)
    return Report(
        id=d["id"], batch=d["batch"], kind=d["kind"], created_at=d["createdAt"],
        subject=d["subject"], recipients=tuple(d["recipients"]), body=d["body"],
        changed=tuple(d["changed"]), job_states=d["jobStates"], emailed=d["emailed"],
        message=message,
    )


def report_parts(report: Report) -> list[bytes]:
    """The report with its message, gzipped and cut into parts of at most REPORT_PART."""
    blob = gzip.compress(json.dumps({
        "report": json.loads(report_json(report)),
        "message": base64.b64encode(report.message).decode()}).encode(), mtime=0)
    return [blob[k:k + REPORT_PART] for k in range(0, len(blob), REPORT_PART)] or [b""]


def report_from_parts(parts: list[bytes]) -> Report:
    d = json.loads(gzip.decompress(b"".join(parts)))
    return report_from_json(json.dumps(d["report"]), base64.b64decode(d["message"]))


def report_part_name(report_cm: str, index: int) -> str:
    """The ConfigMap of part `index` (1, 2, ...) of a report; part 0 is in the report's own."""
    return f"{report_cm}-part-{index:03d}"


def delivery_accepted(meta: dict[str, Any]) -> bool:
    """Has the server accepted a report ConfigMap's email, for at least one recipient?"""
    return (f"{A}delivered-at" in (meta.get("annotations") or {})
            or (meta.get("labels") or {}).get(f"{A}outbox") == "delivered")


def recipients_from_cm(cm: dict[str, Any]) -> tuple[RecipientState, ...]:
    text = (cm["metadata"].get("annotations") or {}).get(f"{A}recipients") or "[]"
    return tuple(RecipientState.from_dict(d) for d in json.loads(text))


def bounded_timeline(events: list[list[Any]]) -> list[list[Any]]:
    """The newest events that fit: at most TIMELINE_MAX, in at most TIMELINE_BYTES."""
    out: list[list[Any]] = []
    size = 2
    for event in reversed(events[-TIMELINE_MAX:]):
        size += len(json.dumps(event, separators=(",", ":"))) + 1
        if size > TIMELINE_BYTES:
            break
        out.append(event)
    return out[::-1]


def timeline_name(batch: str) -> str:
    return f"{batch}-timeline"
