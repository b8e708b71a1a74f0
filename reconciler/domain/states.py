"""Every state transition of a Batch and a Job, as tables (DESIGN §4).

This module is the only place that decides whether a state change is legal: the controller
asks `batch_transition` / `job_transition` and the store never writes a state that did not
come through them. An illegal transition raises, because it means the controller's view of
the world is wrong and writing it would corrupt the record.
"""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    PENDING = "Pending"
    HELD = "Held"
    PROCESSING = "Processing"
    REPORTING = "Reporting"
    COMPLETED = "Completed"
    FAILED = "Failed"
    UPDATE_REPORTING = "UpdateReporting"
    DELETED = "Deleted"


class JobState(StrEnum):
    PENDING = "Pending"
    HELD = "Held"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    FAILED = "Failed"


class RequestedState(StrEnum):
    """What an admin asks of a batch in its file's `spec.state` (DESIGN §3)."""

    ACTIVE = "Active"
    HELD = "Held"
    UPDATE_REPORTING = "UpdateReporting"


class IllegalTransition(RuntimeError):
    """A state change that the tables do not allow."""


B = BatchState
J = JobState

# (from, to) -> the event that causes it. Deleted is reachable from every state (file deleted).
BATCH_TRANSITIONS: dict[tuple[BatchState, BatchState], str] = {
    (B.PENDING, B.PROCESSING): "the queue admits the batch",
    (B.PENDING, B.HELD): "admin commits state: Held",
    (B.HELD, B.PENDING): "admin commits state: Active",
    (B.PROCESSING, B.HELD): "admin commits state: Held while jobs wait",
    (B.PROCESSING, B.REPORTING): "every job is terminal, or the manifest cannot be read",
    (B.REPORTING, B.COMPLETED): "report sent, every job completed",
    (B.REPORTING, B.FAILED): "report sent, some job failed",
    (B.FAILED, B.UPDATE_REPORTING): "admin commits state: UpdateReporting",
    (B.UPDATE_REPORTING, B.COMPLETED): "update report done, every job completed",
    (B.UPDATE_REPORTING, B.FAILED): "update report done, some job failed",
}
BATCH_TRANSITIONS.update(
    {(s, B.DELETED): "admin deletes the batch file" for s in BatchState if s is not B.DELETED}
)

JOB_TRANSITIONS: dict[tuple[JobState, JobState], str] = {
    (J.PENDING, J.PROCESSING): "the job starts",
    (J.PENDING, J.HELD): "its batch is held before it started",
    (J.HELD, J.PENDING): "its batch is released",
    (J.PROCESSING, J.COMPLETED): "the worker exits 0",
    (J.PROCESSING, J.FAILED): "the worker exits non-zero or the job is lost",
    (J.PROCESSING, J.PENDING): "its processes died without a result (killed, a reboot): the"
    " same attempt runs again, as the Job controller starts a new pod of the same Job",
    (J.PENDING, J.FAILED): "the job cannot be started (e.g. deadline, invalid pod)",
    (J.PENDING, J.COMPLETED): "the job ran to completion between two observations",
}

BATCH_TERMINAL = frozenset({B.COMPLETED, B.FAILED, B.DELETED})
JOB_TERMINAL = frozenset({J.COMPLETED, J.FAILED})


def batch_transition(current: BatchState, target: BatchState) -> BatchState:
    """Return `target` if a batch may move there from `current`; raise otherwise."""
    if current == target:
        return target
    if (current, target) not in BATCH_TRANSITIONS:
        raise IllegalTransition(f"batch cannot go from {current} to {target}")
    return target


def job_transition(current: JobState, target: JobState) -> JobState:
    """Return `target` if a job may move there from `current`; raise otherwise."""
    if current == target:
        return target
    if (current, target) not in JOB_TRANSITIONS:
        raise IllegalTransition(f"job cannot go from {current} to {target}")
    return target


def job_observed(current: JobState, target: JobState) -> JobState:
    """Like `job_transition`, but for a watcher that may miss steps between two looks.

    A Job can go Held → Pending → Processing between two observations; what must never
    be accepted is a move the table cannot reach at all (Completed → Processing).
    """
    if current == target:
        return target
    seen = {current}
    frontier = [current]
    while frontier:
        state = frontier.pop()
        for (a, b) in JOB_TRANSITIONS:
            if a == state and b not in seen:
                if b == target:
                    return target
                seen.add(b)
                frontier.append(b)
    raise IllegalTransition(f"job cannot go from {current} to {target}")
