"""The ConfigMaps beside a Batch (DESIGN §8), as pure functions: their names and the
JSON inside them, so that a Batch's status stays small and the detail lives here.

- `<batch>-items-NNNN`: `items.json`, the observed state of up to CHUNK items each, and
  of at most about CHUNK_BYTES of JSON (an item is an object of up to 64 KiB of files, and
  a ConfigMap holds 1 MiB); the first item's seq is the `batchq.dev/first-seq` annotation
  (chunks written before it have CHUNK items each: NNNN * CHUNK).
- `<batch>-report-<round>-<incarnation>`: `report.json` and `message.eml`; the outbox is
  its `batchq.dev/outbox` label, and delivery is kept in its annotations.
- `<batch>-timeline`: `events.json`, the last TIMELINE_MAX events.
The store (store.py) reads them from the watch cache and writes them; nothing here talks
to the API server.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.domain.model import Item, ItemStatus, Report
from reconciler.domain.states import JobState
from reconciler.store.base import RecipientState
from reconciler.store.kubernetes.names import A

CHUNK = 500
CHUNK_BYTES = 900_000  # of a ConfigMap's 1 MiB (1,048,576 bytes), with room for metadata
RECORD_STATE_BYTES = 1_500  # what a record's state may add to its item (message <= 1 KiB)
FIRST_SEQ = f"{A}first-seq"
TIMELINE_MAX = 500


def chunk_name(batch: str, index: int) -> str:
    """The ConfigMap holding items `index*CHUNK` up to the next chunk."""
    return f"{batch}-items-{index:04d}"


def item_chunks(items: list[Item]) -> list[tuple[int, list[Item]]]:
    """The items split into ConfigMaps: (first seq, items), at most CHUNK items and about
    CHUNK_BYTES each. A pure function of the list, so that writing them again after a
    crash finds the same names."""
    out: list[tuple[int, list[Item]]] = []
    size = 0
    for seq, item in enumerate(items):
        need = len(json.dumps(item.to_dict())) + RECORD_STATE_BYTES
        if not out or len(out[-1][1]) >= CHUNK or size + need > CHUNK_BYTES:
            out.append((seq, []))
            size = 0
        out[-1][1].append(item)
        size += need
    return out


def chunk_start(name: str, annotations: dict[str, str]) -> int:
    """The seq of a chunk's first item: its annotation, else (older chunks) NNNN * CHUNK."""
    given = annotations.get(FIRST_SEQ)
    return int(given) if given is not None else int(name.rsplit("-", 1)[1]) * CHUNK


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


def delivery_accepted(meta: dict[str, Any]) -> bool:
    """Has the server accepted a report ConfigMap's email, for at least one recipient?"""
    return (f"{A}delivered-at" in (meta.get("annotations") or {})
            or (meta.get("labels") or {}).get(f"{A}outbox") == "delivered")


def recipients_from_cm(cm: dict[str, Any]) -> tuple[RecipientState, ...]:
    text = (cm["metadata"].get("annotations") or {}).get(f"{A}recipients") or "[]"
    return tuple(RecipientState.from_dict(d) for d in json.loads(text))


def timeline_name(batch: str) -> str:
    return f"{batch}-timeline"
