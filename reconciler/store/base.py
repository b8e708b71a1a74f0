"""The store interface: the one thing the controller knows about where state lives.

Two backends implement it (DESIGN §1): `local` (SQLite + local subprocesses) and
`kubernetes` (Batch custom resources + batch/v1 Jobs). The controller, the reporter and the
web site only ever call these methods, so neither knows which backend it runs on.

Every write is idempotent: applying the same spec twice bumps no generation, creating a
Job that exists creates nothing, saving a report whose id exists saves nothing. That is
what lets a reconciler killed at any point start again without duplicating anything.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.domain.model import Batch, BatchStatus, Item, ItemStatus, Job, Report


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one attempt of one item, on either backend."""

    name: str
    batch: str
    item: str
    attempt: int
    command: tuple[str, ...]
    env: dict[str, str]
    suspended: bool = False
    image: str = "batchq:latest"
    resources: dict[str, Any] = field(default_factory=dict)
    backoff_limit: int = 0
    deadline_seconds: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)


DEADLINE_EXCEEDED = "DeadlineExceeded"  # the Job controller's reason, on both backends


def deadline_message(seconds: int) -> str:
    """A Job's message when it ran past `activeDeadlineSeconds` and was stopped."""
    return f"{DEADLINE_EXCEEDED}: job ran longer than {seconds} s"


@dataclass(frozen=True)
class Event:
    """One line of a batch's timeline: what changed and which commit caused it."""

    batch: str
    at: float
    reason: str
    message: str
    revision: str = ""


@dataclass(frozen=True)
class OutboxEntry:
    report_id: str
    batch: str
    message: bytes
    attempts: int
    last_error: str


@dataclass(frozen=True)
class Page:
    """A page of a longer list, for the CLI and the web site."""

    total: int
    rows: list[Any]


class Store(Protocol):
    """Observed state of the queue; see the module docstring for the contract."""

    writes: int  # every write that reached the backend (benchmarks assert 0 on a no-op pass)

    # --- bookkeeping of the Git source and repo-wide settings
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    # --- batches
    def list_batches(self) -> list[Batch]: ...
    def page_batches(
        self, *, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page: ...
    def count_batches(self) -> dict[str, int]: ...
    def get_batch(self, name: str) -> Batch | None: ...
    def apply_spec(
        self,
        name: str,
        spec: dict[str, Any] | None,
        *,
        source_path: str,
        revision: str,
        committed_at: float,
        error: str,
    ) -> Batch: ...
    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None: ...
    def remove_batch(self, name: str) -> None: ...

    # --- per-item observed state (the detail beside a small Batch status)
    def set_items(self, batch: str, items: list[Item]) -> None: ...
    def list_items(
        self, batch: str, *, state: str | None = None, offset: int = 0, limit: int | None = None,
        query: str | None = None,
    ) -> list[ItemStatus]: ...
    def total_items(self, batch: str, *, state: str | None = None,
                    query: str | None = None) -> int: ...
    def count_items(self, batch: str) -> dict[str, int]: ...
    def update_items(self, batch: str, items: list[ItemStatus]) -> None: ...

    # --- jobs
    def create_job(self, spec: JobSpec) -> bool: ...
    def list_jobs(self, batch: str | None = None) -> list[Job]: ...
    def count_active_jobs(self) -> int: ...
    def delete_jobs(self, batch: str) -> None: ...
    def set_suspended(self, batch: str, suspended: bool) -> None: ...

    # --- reports, outbox, timeline
    def save_report(self, report: Report) -> bool: ...
    def list_reports(self, batch: str) -> list[Report]: ...
    def pending_outbox(self, now: float) -> list[OutboxEntry]: ...
    def mark_delivered(self, report_id: str) -> None: ...
    def outbox_stats(self) -> dict[str, int]: ...
    def mark_delivery_failed(self, report_id: str, error: str, retry_at: float) -> None: ...
    def add_event(self, event: Event) -> None: ...
    def list_events(self, batch: str) -> list[Event]: ...
    def delivered(self, report_id: str) -> bool: ...

    def transaction(self) -> AbstractContextManager[Any]: ...
    def close(self) -> None: ...


class ConflictError(RuntimeError):
    """Someone else wrote the object since we read it: re-read and try again."""
