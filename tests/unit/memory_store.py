"""An in-memory `Store` for the unit layer: dicts instead of SQLite or an API server.

It keeps the contract of `reconciler/store/base.py` the way the two real backends do, so
a controller test on it means what it would mean on them: every write is idempotent and
counted in `writes`, a status write carries the status it was based on and raises
`ConflictError` when someone else wrote since (each batch also has a `version` that every
write bumps, like a resourceVersion), reads hand out copies (a caller changing what it
read changes nothing stored), and `transaction()` lands whole or not at all.

The jobs dict is the unit layer's "cluster": tests move jobs along with `set_job_state`
and remove finished ones with `delete_job`, as the local runner or the Job controller and
an operator would. `tests/test_store_contract.py` runs the same checks on this store and
on the SQLite one, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.domain.model import Batch, BatchSpec, BatchStatus, Item, ItemStatus, Job, Report
from reconciler.domain.states import JobState
from reconciler.store.base import (
    ConflictError,
    Delivery,
    Event,
    JobChanges,
    JobsCreated,
    JobSpec,
    OutboxEntry,
    Page,
    RecipientState,
    SyncState,
    create_one_by_one,
    may_act,
    needing_jobs,
)
from reconciler.store.codec import (
    canonical_json,
    status_from_dict,
    status_to_dict,
    sync_state_from_meta,
    sync_state_writes,
)

RUNNING = (JobState.PENDING, JobState.PROCESSING)
UNSTARTED = (JobState.PENDING, JobState.HELD)


@dataclass
class _BatchRecord:
    name: str
    spec_json: str | None
    generation: int
    source_path: str
    source_revision: str
    submitted_at: float
    status_json: str
    spec_error: str
    updated_at: float
    version: int = 1


@dataclass
class _JobRecord:
    job: Job
    spec: JobSpec


@dataclass
class _OutboxRecord:
    report_id: str
    batch: str
    message: bytes
    attempts: int = 0
    last_error: str = ""
    next_attempt_at: float = 0.0
    delivered_at: float | None = None  # some recipient accepted it
    finished_at: float | None = None  # no recipient is waiting any more
    queued_at: float = 0.0
    recipients: list[RecipientState] = field(default_factory=list)


@dataclass
class _State:
    meta: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    batches: dict[str, _BatchRecord] = field(default_factory=dict)
    items: dict[str, dict[str, ItemStatus]] = field(default_factory=dict)  # batch -> id -> s
    jobs: dict[str, _JobRecord] = field(default_factory=dict)
    observed: dict[str, dict[str, Job]] = field(default_factory=dict)  # batch -> name -> job
    reports: dict[str, Report] = field(default_factory=dict)
    outbox: dict[str, _OutboxRecord] = field(default_factory=dict)  # insertion order kept
    events: list[Event] = field(default_factory=list)


def _status_json(status: BatchStatus) -> str:
    return canonical_json(status_to_dict(status))


class MemoryStore:
    """The `Store` protocol on dicts (see the module docstring)."""

    def __init__(self) -> None:
        self._s = _State()
        self.writes = 0
        self._depth = 0
        self.closed = False

    # --- bookkeeping
    def _wrote(self) -> None:
        self.writes += 1

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._depth:  # inside an outer transaction: it decides for both
            yield
            return
        saved, writes = copy.deepcopy(self._s), self.writes
        self._depth += 1
        try:
            yield
        except BaseException:
            self._s, self.writes = saved, writes
            raise
        finally:
            self._depth -= 1

    def transaction(self, durable: bool = True) -> AbstractContextManager[Any]:
        """Everything written inside lands together, or (on an exception) none of it."""
        return self._tx()

    def close(self) -> None:
        self.closed = True

    # --- meta
    def get_meta(self, key: str) -> str | None:
        return self._s.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        if self._s.meta.get(key) != value:
            self._s.meta[key] = value
            self._wrote()

    def load_sync_state(self) -> SyncState:
        return sync_state_from_meta(self._s.meta)

    def save_sync_state(self, state: SyncState) -> None:
        for key, value in sync_state_writes(self._s.meta, state):
            self.set_meta(key, value)

    # --- batches
    def _batch(self, r: _BatchRecord) -> Batch:
        return Batch(
            name=r.name,
            spec=BatchSpec.from_dict(json.loads(r.spec_json)) if r.spec_json else None,
            generation=r.generation,
            source_path=r.source_path,
            source_revision=r.source_revision,
            submitted_at=r.submitted_at,
            status=status_from_dict(json.loads(r.status_json)),
            spec_error=r.spec_error,
            updated_at=r.updated_at,
        )

    def version(self, name: str) -> int:
        """How many writes the batch has seen (what a resourceVersion tells apart)."""
        return self._s.batches[name].version

    def list_batches(self) -> list[Batch]:
        return [self._batch(r) for _, r in sorted(self._s.batches.items())]

    def batches_at(self, paths: Collection[str]) -> list[Batch]:
        wanted = set(paths)
        return [b for b in self.list_batches() if b.source_path in wanted]

    def page_batches(
        self, *, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page:
        rows = [b for b in self.list_batches() if not state or str(b.status.state) == state]
        rows.sort(key=lambda b: (-b.updated_at, b.name))
        return Page(total=len(rows), rows=rows[offset:offset + limit])

    def batches_that_may_act(self, states: Collection[str]) -> list[Batch]:
        return [b for b in self.list_batches() if may_act(b, states)]

    def count_batches(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.list_batches():
            out[str(b.status.state)] = out.get(str(b.status.state), 0) + 1
        return out

    def get_batch(self, name: str) -> Batch | None:
        r = self._s.batches.get(name)
        return None if r is None else self._batch(r)

    def apply_spec(
        self,
        name: str,
        spec: dict[str, Any] | None,
        *,
        source_path: str,
        revision: str,
        committed_at: float,
        error: str,
    ) -> Batch:
        """Record a file version. A broken version (`spec` None) keeps the last good spec."""
        now = time.time()
        spec_json = canonical_json(spec) if spec is not None else None
        r = self._s.batches.get(name)
        if r is None:
            self._s.batches[name] = _BatchRecord(
                name, spec_json, 1, source_path, revision, committed_at,
                _status_json(BatchStatus()), error, now)
            self._wrote()
        else:
            new_spec = spec_json if spec_json is not None else r.spec_json
            changed = new_spec != r.spec_json
            new_rev = revision if (changed or spec_json is None) else r.source_revision
            if (changed or r.source_path != source_path or r.spec_error != error
                    or r.source_revision != new_rev):
                r.spec_json, r.source_path, r.source_revision = new_spec, source_path, new_rev
                r.generation += 1 if changed else 0
                r.spec_error, r.updated_at = error, now
                r.version += 1
                self._wrote()
        batch = self.get_batch(name)
        assert batch is not None
        return batch

    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None:
        """Write status only when it changed; `old` must be what is stored (else conflict)."""
        new_json, old_json = _status_json(new), _status_json(old)
        if new_json == old_json:
            return
        r = self._s.batches.get(name)
        if r is None or r.status_json != old_json:
            raise ConflictError(f"status of batch {name} changed under us")
        r.status_json, r.updated_at = new_json, time.time()
        r.version += 1
        self._wrote()

    def repair_drift(self) -> list[str]:
        """Nothing but this store writes its state: there is never drift to repair."""
        return []

    def remove_batch(self, name: str) -> None:
        with self._tx():
            s = self._s
            if s.items.pop(name, None):
                self._wrote()
            self._delete_jobs_of(name)
            s.observed.pop(name, None)
            kept = [e for e in s.events if e.batch != name]
            if len(kept) != len(s.events):
                s.events = kept
                self._wrote()
            if s.credentials.pop(name, None):
                self._wrote()
            # its email waiting in the outbox still goes out, as on the other stores
            mine = [k for k, v in s.reports.items() if v.batch == name]
            for k in mine:
                del s.reports[k]
            if mine:
                self._wrote()
            if s.batches.pop(name, None) is not None:
                self._wrote()

    def set_credentials(self, batch: str, credentials: dict[str, str]) -> None:
        self._s.credentials.setdefault(batch, {}).update(credentials)
        self._wrote()

    # --- items
    def set_items(self, batch: str, items: list[Item]) -> None:
        mine = self._s.items.setdefault(batch, {})
        for seq, item in enumerate(items):
            if item.id not in mine:
                mine[item.id] = ItemStatus(item=item, seq=seq)
                self._wrote()

    def _filtered(self, batch: str, state: str | None, query: str | None) -> list[ItemStatus]:
        rows = sorted(self._s.items.get(batch, {}).values(), key=lambda s: s.seq)
        if state:
            rows = [s for s in rows if str(s.state) == state]
        if query:  # like SQLite's LIKE: the id or anything in the item, any case
            q = query.lower()
            rows = [s for s in rows if q in s.item.id.lower()
                    or q in canonical_json(s.item.to_dict()).lower()]
        return rows

    def list_items(
        self, batch: str, *, state: str | None = None, offset: int = 0, limit: int | None = None,
        query: str | None = None,
    ) -> list[ItemStatus]:
        rows = self._filtered(batch, state, query)
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        return [replace(s) for s in rows]

    def total_items(self, batch: str, *, state: str | None = None,
                    query: str | None = None) -> int:
        return len(self._filtered(batch, state, query))

    def count_items(self, batch: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._s.items.get(batch, {}).values():
            out[str(s.state)] = out.get(str(s.state), 0) + 1
        return out

    def update_items(self, batch: str, items: list[ItemStatus]) -> None:
        mine = self._s.items.get(batch, {})
        for s in items:
            stored = mine.get(s.item.id)
            if stored is None:
                continue
            new = replace(stored, state=s.state, attempts=s.attempts, message=s.message,
                          job_name=s.job_name, started_at=s.started_at,
                          finished_at=s.finished_at)
            if new != stored:
                mine[s.item.id] = new
                self._wrote()

    def items_of(self, batch: str, ids: Collection[str]) -> list[ItemStatus]:
        mine = self._s.items.get(batch, {})
        return sorted((replace(mine[i]) for i in set(ids) if i in mine), key=lambda s: s.seq)

    def items_needing_jobs(self, batch: str, limit: int | None) -> list[ItemStatus]:
        mine = sorted(self._s.items.get(batch, {}).values(), key=lambda s: s.seq)
        return [replace(s) for s in needing_jobs(mine, lambda name: name in self._s.jobs,
                                                 limit)]

    # --- jobs
    def changed_jobs(self, batch: str) -> JobChanges:
        """Jobs that differ from the copy `observed` kept (kept in `_s`: a transaction
        rolled back forgets the observation with the items)."""
        seen = self._s.observed.get(batch, {})
        jobs = [j for j in self.list_jobs(batch) if seen.get(j.name) != j]
        return JobChanges(jobs, {j.name: replace(j) for j in jobs})

    def observed(self, batch: str, changes: JobChanges) -> None:
        self._s.observed.setdefault(batch, {}).update(changes.mark)

    def observed_made_jobs(self, batch: str) -> None:
        """Nothing: every pass of the unit world steps every batch (`take_changed_batches`),
        and its next step observes them."""

    def create_job(self, spec: JobSpec) -> bool:
        if spec.name in self._s.jobs:
            return False
        job = Job(name=spec.name, batch=spec.batch, item=spec.item, attempt=spec.attempt,
                  state=JobState.HELD if spec.suspended else JobState.PENDING,
                  suspended=spec.suspended, created_at=time.time())
        self._s.jobs[spec.name] = _JobRecord(job, spec)
        self._wrote()
        return True

    def create_jobs(self, specs: Sequence[JobSpec]) -> JobsCreated:
        return create_one_by_one(self.create_job, specs)

    def list_jobs(self, batch: str | None = None) -> list[Job]:
        return [replace(r.job) for _, r in sorted(self._s.jobs.items())
                if batch is None or r.job.batch == batch]

    def take_changed_batches(self) -> set[str] | None:
        """Never tells: every pass of the unit world steps every batch."""
        return None

    def count_active_jobs(self) -> int:
        return sum(1 for r in self._s.jobs.values()
                   if r.job.state in RUNNING and not r.job.suspended)

    def _delete_jobs_of(self, batch: str) -> None:
        mine = [n for n, r in self._s.jobs.items() if r.job.batch == batch]
        for n in mine:
            del self._s.jobs[n]
        if mine:
            self._wrote()

    def delete_jobs(self, batch: str) -> None:
        """Delete a batch's jobs, running ones too (the cluster stops them)."""
        self._delete_jobs_of(batch)

    def set_suspended(self, batch: str, suspended: bool) -> None:
        """Suspend jobs that have not started (a running one goes on, as on Kubernetes)."""
        old, new = (JobState.PENDING, JobState.HELD) if suspended else (
            JobState.HELD, JobState.PENDING)
        for r in self._s.jobs.values():
            job = r.job
            if job.batch != batch or job.state not in UNSTARTED:
                continue
            if job.suspended != suspended or job.state == old:
                job.suspended, job.state = suspended, new
                self._wrote()

    # --- the cluster: what runs jobs moves them along (tests call these)
    def job_spec(self, name: str) -> JobSpec:
        return self._s.jobs[name].spec

    def set_job_state(self, name: str, state: JobState, message: str = "") -> None:
        """The job started, or finished (`message` is the worker's reason)."""
        job = self._s.jobs[name].job
        now = time.time()
        if state == JobState.PROCESSING:
            job.started_at = job.started_at or now
        if state in (JobState.COMPLETED, JobState.FAILED):
            job.started_at = job.started_at or now
            job.finished_at = now
        job.state, job.message = state, message
        self._wrote()

    def delete_job(self, name: str) -> None:
        """What an operator's `kubectl delete job` (or a TTL) does."""
        if self._s.jobs.pop(name, None) is not None:
            self._wrote()

    # --- reports and outbox
    def save_report(self, report: Report) -> bool:
        """Save a report and, if it is to be emailed, queue it: both or neither."""
        if report.id in self._s.reports:
            return False
        self._s.reports[report.id] = copy.deepcopy(report)
        self._wrote()
        if report.emailed:
            self._s.outbox[report.id] = _OutboxRecord(report.id, report.batch, report.message,
                                                      queued_at=report.created_at)
            self._wrote()
        return True

    def list_reports(self, batch: str) -> list[Report]:
        mine = [r for r in self._s.reports.values() if r.batch == batch]
        return [copy.deepcopy(r) for r in sorted(mine, key=lambda r: (r.created_at, r.id))]

    def delivered(self, report_id: str) -> bool:
        box = self._s.outbox.get(report_id)
        return box is not None and box.delivered_at is not None

    def pending_outbox(self, now: float) -> list[OutboxEntry]:
        return [OutboxEntry(b.report_id, b.batch, b.message, b.attempts, b.last_error,
                            tuple(b.recipients), b.queued_at)
                for b in self._s.outbox.values()
                if b.finished_at is None and b.next_attempt_at <= now]

    def outbox_stats(self) -> dict[str, int]:
        boxes = list(self._s.outbox.values())
        delivered = sum(1 for b in boxes if b.delivered_at is not None)
        failed = sum(b.attempts - (b.delivered_at is not None) for b in boxes)
        waiting = sum(1 for b in boxes if b.finished_at is None)
        return {"delivered": delivered, "failed": failed, "waiting": waiting}

    def record_delivery(self, report_id: str, recipients: Sequence[RecipientState], *,
                        error: str, retry_at: float | None) -> None:
        box = self._s.outbox.get(report_id)
        if box is None:
            return
        now = time.time()
        box.attempts, box.last_error = box.attempts + 1, error
        box.recipients = list(recipients)
        if retry_at is not None:
            box.next_attempt_at = retry_at
        if box.delivered_at is None and any(r.state == Delivery.DELIVERED for r in recipients):
            box.delivered_at = now
        box.finished_at = now if retry_at is None else None
        self._wrote()

    def recipient_states(self, report_id: str) -> list[RecipientState]:
        box = self._s.outbox.get(report_id)
        return [] if box is None else list(box.recipients)

    # --- timeline
    def add_event(self, event: Event) -> None:
        self._s.events.append(event)
        self._wrote()

    def job_output(self, job: str, limit: int = 16384) -> str | None:
        return None  # no process runs here

    def list_events(self, batch: str) -> list[Event]:
        return [e for e in self._s.events if e.batch == batch]
