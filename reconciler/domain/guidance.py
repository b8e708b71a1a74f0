"""Why a batch waits, and what an admin does next: the words every surface shows.

Computed when shown, from what is stored (the batches, the queue settings, the last report),
so `batchq status`, the page and the API answer "why" and "what next" the same way and are
never stale, and the controller does not need to write anything for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.domain.model import Batch, ItemStatus, QueueSettings
from reconciler.domain.states import BatchState, JobState, RequestedState

ACTIVE = frozenset({BatchState.PROCESSING, BatchState.REPORTING, BatchState.UPDATE_REPORTING})
TERMINAL_JOBS = frozenset({JobState.COMPLETED, JobState.FAILED})


QueueKey = tuple[int, float, str]  # priority, commit time, name


def waits_on_its_jobs(b: Batch) -> bool:
    """Processing with its items loaded: only a change of its Jobs, or room for more,
    gives it something to do (what a pass that is not full leaves unread and unstepped)."""
    return b.status.state == BatchState.PROCESSING and b.status.items_loaded


def queue_order(b: Batch) -> QueueKey:
    """The order the queue admits batches in: priority, then commit time, then name."""
    return (b.spec.priority if b.spec else 99, b.submitted_at, b.name)


def why_pending(batch: Batch, batches: Iterable[Batch], queue: Mapping[str, Any],
                profiles: Iterable[str]) -> str:
    """Why a Pending (or Held) batch has not started, in one sentence ("" otherwise)."""
    state, spec = batch.status.state, batch.spec
    if state not in (BatchState.PENDING, BatchState.HELD):
        return ""
    if spec is None:
        return (f"Invalid: {batch.source_path} never parsed, so nothing runs; fix the file"
                " (see the error) and commit it")
    if spec.state == RequestedState.HELD or state == BatchState.HELD:
        return ("Held by an admin (spec.state: Held): no job starts until spec.state: Active"
                " is committed")
    if spec.profile not in set(profiles):
        return (f'waiting for profile "{spec.profile}": profiles/{spec.profile}.yaml is'
                " missing or invalid; add or fix it, or change spec.profile")
    settings = QueueSettings.from_dict(dict(queue))
    if settings.paused:
        return "the queue is paused (queue.yaml: paused: true); nothing is admitted until it is not"
    others = list(batches)
    active = sum(1 for b in others if b.status.state in ACTIVE)
    ahead = sum(1 for b in others if b.name != batch.name and b.spec is not None
                and b.status.state == BatchState.PENDING
                and b.spec.state != RequestedState.HELD
                and queue_order(b) < queue_order(batch))
    line = f"{ahead} batch{'es' if ahead != 1 else ''} ahead in the queue"
    if active >= settings.max_active_batches:
        return (f"waiting for a free slot: {active} batches are active"
                f" (maxActiveBatches={settings.max_active_batches}); {line}")
    return f"admitted at the next pass; {line}"


def next_step(batch: Batch, items: list[ItemStatus], last_report: Mapping[str, str]) -> str:
    """What an admin does next with a Failed batch whose jobs changed since its last report
    (e.g. restarts that completed): commit UpdateReporting, with the snippet to paste."""
    spec = batch.spec
    if batch.status.state != BatchState.FAILED or spec is None or not items:
        return ""
    if any(s.state not in TERMINAL_JOBS for s in items):
        return ""
    if spec.state == RequestedState.UPDATE_REPORTING and (
            batch.status.update_generation < batch.generation):
        return ""  # requested, and about to be acted on
    changed = [s for s in items if last_report.get(s.item.id) != str(s.state)]
    if not changed:
        return ""
    failed = sum(1 for s in items if s.state == JobState.FAILED)
    done = len(items) - failed
    names = ", ".join(s.item.id for s in changed[:5]) + (
        f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    again = (" (it says UpdateReporting already, which was acted on: commit state: Active,"
             " then UpdateReporting again)" if spec.state == RequestedState.UPDATE_REPORTING
             else "")
    return (f"{len(changed)} job(s) changed since the last report ({names}); {done} done,"
            f" {failed} failed. Next: send the update report by committing, in"
            f" {batch.source_path}{again}:\n  spec:\n    state: UpdateReporting")
