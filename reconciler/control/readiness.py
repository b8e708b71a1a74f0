"""What the `Ready` and `Reconciling` conditions say of a batch, as Flux's kstatus reads them.

`Ready` is True only when the batch Completed (so `kubectl wait --for=condition=Ready`
returns for a batch that succeeded, and times out for one that failed); otherwise False
with the state as its reason (`Failed`, `Processing`, `Held`, … or `Invalid` for a file
that never parsed) and a message a person can act on. `Reconciling` is True while the
batch is on its way (queued, processing, reporting) and False once it rests.
"""

from __future__ import annotations

from reconciler.domain.model import BatchStatus
from reconciler.domain.states import BatchState, JobState

B = BatchState
ON_ITS_WAY = frozenset({B.PENDING, B.PROCESSING, B.REPORTING, B.UPDATE_REPORTING})


def ready(status: BatchStatus, *, invalid_file: str = "") -> tuple[bool, str, str]:
    """(status, reason, message) of the Ready condition; `invalid_file` is the error of a
    file that never parsed (the batch then has no spec to run)."""
    if invalid_file:
        return False, "Invalid", invalid_file.splitlines()[0]
    state = status.state
    if state == B.COMPLETED:
        return True, "Succeeded", _counted(status) + (f"; {status.message}"
                                                      if status.message else "")
    if state == B.FAILED:
        first = status.failures[0] if status.failures else None
        why = f" (first: {first.get('item')}: {first.get('message')})" if first else ""
        head = status.message if status.manifest_error else _counted(status) + why
        return False, str(state), head
    return False, str(state), status.message


def reconciling(status: BatchStatus, *, invalid_file: str = "") -> tuple[bool, str, str]:
    """(status, reason, message) of the Reconciling condition."""
    if invalid_file or status.state not in ON_ITS_WAY:
        return False, str(status.state) if not invalid_file else "Invalid", ""
    return True, "Progressing", status.message


def _counted(status: BatchStatus) -> str:
    done = status.counts.get(str(JobState.COMPLETED), 0)
    failed = status.counts.get(str(JobState.FAILED), 0)
    return f"{done} of {status.item_count} jobs completed, {failed} failed"
