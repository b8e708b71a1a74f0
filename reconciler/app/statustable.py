"""`batchq status` at a glance: one row a batch, as `flux get` and `kubectl get` show them.

NAME, STATE, JOBS, DONE, FAILED, REVISION, AGE, MESSAGE. A file that never parsed shows as
Invalid (it has no spec, so it is not waiting for anything); MESSAGE is the first thing to
read: the file's error, else what the batch waits for or what went wrong.
"""

from __future__ import annotations

from reconciler.domain.guidance import next_step, why_pending
from reconciler.domain.model import Batch
from reconciler.domain.states import BatchState, JobState
from reconciler.store.base import ReadStore
from reconciler.support.controlchars import escape_controls

HEADER = ("NAME", "STATE", "JOBS", "DONE", "FAILED", "REVISION", "AGE", "MESSAGE")


def age(seconds: float) -> str:
    """kubectl's short ages: 45s, 12m, 5h, 3d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def shown_state(batch: Batch) -> str:
    """The state column: Invalid for a file that never parsed, else the batch's state."""
    if batch.spec is None and batch.spec_error:
        return "Invalid"
    return str(batch.status.state)


def guidance(store: ReadStore, batch: Batch, batches: list[Batch]) -> tuple[str, str]:
    """(why it has not started, what to do next), each "" when it does not apply."""
    if batch.status.state in (BatchState.PENDING, BatchState.HELD):
        sync = store.load_sync_state()
        return why_pending(batch, batches, sync.queue, sync.profiles), ""
    if batch.status.state == BatchState.FAILED and batch.spec is not None:
        reports = store.list_reports(batch.name)
        return "", next_step(batch, store.list_items(batch.name),
                             reports[-1].job_states if reports else {})
    return "", ""


def message(batch: Batch, why: str = "", nxt: str = "") -> str:
    """One line: the file's error first (the last good spec may still run), else why it
    waits, else the next step, else what the batch last said."""
    text = batch.spec_error or why or nxt or batch.status.message
    return text.split("\n")[0]


def row(batch: Batch, now: float, why: str = "", nxt: str = "") -> tuple[str, ...]:
    counts = batch.status.counts
    jobs = batch.status.item_count or sum(counts.values())
    return (batch.name, shown_state(batch), str(jobs), str(counts.get(str(JobState.COMPLETED), 0)),
            str(counts.get(str(JobState.FAILED), 0)), batch.source_revision[:12],
            age(now - batch.submitted_at), message(batch, why, nxt))


def table(store: ReadStore, now: float) -> list[str]:
    """The rows under their header, columns padded to their widest cell."""
    batches = sorted(store.list_batches(), key=lambda b: b.name)
    rows = [HEADER] + [row(b, now, *guidance(store, b, batches)) for b in batches]
    rows = [tuple(escape_controls(cell) for cell in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return ["   ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]])
            .rstrip() for r in rows]
