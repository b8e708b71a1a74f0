"""The controller: Batch → Jobs, Jobs → Batch status, terminal batch → report (DESIGN §4).

Level-triggered: every pass reads the current state of each batch and its jobs and does the
next step that state calls for; it never remembers events. Each step writes something that
makes it unnecessary next time (a Job with a deterministic name, a status with a report
round, a report with a deterministic id), so a pass interrupted anywhere and run again
does the remaining steps and nothing twice. Requests made by commits (restart an item,
UpdateReporting) are compared with what was already done for them, never replayed.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.control.jobs import build_job
from reconciler.control.reports import build_report
from reconciler.domain.model import Batch, BatchStatus, Condition, ItemStatus, Job, Profile
from reconciler.domain.states import (
    BATCH_TERMINAL,
    JOB_TERMINAL,
    BatchState,
    IllegalTransition,
    JobState,
    batch_transition,
    job_observed,
)
from reconciler.manifests.resolve import ManifestError, resolve_items
from reconciler.source.sync import RepoState, deletion_done, pending_deletions
from reconciler.store.base import Event, Store
from reconciler.support import failpoints
from reconciler.support.nospace import is_no_space

log = logging.getLogger(__name__)
B = BatchState
J = JobState
ACTIVE_BATCH = frozenset({B.PROCESSING, B.REPORTING, B.UPDATE_REPORTING})
MAX_FAILURES_IN_STATUS = 20


@dataclass
class JobBudget:
    """How many more jobs may be active (Pending or Processing) across the whole queue."""

    free: int

    def take(self) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        return True


@dataclass
class PassContext:
    repo: RepoState
    budget: JobBudget
    active_batches: int
    base_dir: str | None
    progressed: bool = False
    dirty_items: dict[str, ItemStatus] = field(default_factory=dict)  # written once a batch


class Controller:
    """Drives every batch one step further on each pass; see the module docstring."""

    def __init__(self, store: Store, *, storage_root: Path) -> None:
        self.store = store
        self.storage_root = storage_root

    # --- one pass over every batch
    def reconcile_all(self, repo: RepoState, base_dir: str | None) -> bool:
        """Return True if anything changed (the caller loops until nothing does)."""
        batches = self.store.list_batches()
        deletions = pending_deletions(self.store)
        ctx = PassContext(
            repo=repo,
            budget=JobBudget(repo.queue.max_active_jobs - self.store.count_active_jobs()),
            active_batches=sum(1 for b in batches if b.status.state in ACTIVE_BATCH),
            base_dir=base_dir,
        )
        for batch in sorted(batches, key=_queue_order):
            if batch.name in deletions:
                self._delete(batch, deletions[batch.name], ctx)
                continue
            try:
                with self.store.transaction():  # one batch's step lands whole, or not at all
                    self.reconcile(batch, ctx)
            except Exception as exc:  # one broken batch never stops the others
                if is_no_space(exc):  # ...but a full disk stops every batch: the pass ends
                    raise
                log.exception("reconciling batch %s failed; the others go on", batch.name)
        return ctx.progressed

    def reconcile(self, batch: Batch, ctx: PassContext) -> None:
        if batch.status.state == B.DELETED:
            self._expire(batch, ctx)
            return
        if batch.status.observed_generation == batch.generation and self._error_shown(batch) and (
            batch.status.settled or self._waiting_in_queue(batch, ctx)
        ):
            return  # nothing can change without a new commit: read nothing, write nothing
        status = copy.deepcopy(batch.status)
        if batch.spec is None:
            self._set_condition(status, "Invalid", True, "FileInvalid", batch.spec_error)
            self._write_status(batch, status, ctx)
            return
        jobs = (self.store.list_jobs(batch.name)
                if status.items_loaded or status.state != B.PENDING else [])
        items = self._observe(batch, jobs, ctx) if status.items_loaded or jobs else []
        ctx.dirty_items = {}
        self._step(batch, status, items, jobs, ctx)
        if ctx.dirty_items:  # one write for every job created this pass (crash: adopted)
            self.store.update_items(batch.name, list(ctx.dirty_items.values()))
        status.settled = self._settled(batch, status, items)
        status.observed_generation = batch.generation
        self._set_condition(status, "Invalid", bool(batch.spec_error), "FileInvalid"
                            if batch.spec_error else "FileValid", batch.spec_error)
        self._set_condition(status, "Ready", status.state in BATCH_TERMINAL,
                            str(status.state), status.message)
        self._write_status(batch, status, ctx)

    # --- observing jobs into item status
    def _observe(self, batch: Batch, jobs: list[Job], ctx: PassContext) -> list[ItemStatus]:
        items = self.store.list_items(batch.name)
        latest: dict[str, Job] = {}
        for j in jobs:
            if j.item not in latest or j.attempt > latest[j.item].attempt:
                latest[j.item] = j
        changed: list[ItemStatus] = []
        for s in items:
            job = latest.get(s.item.id)
            if job is None or job.attempt < s.attempts:
                continue  # a finished Job may vanish: the status is the record
            before = (s.state, s.attempts, s.message, s.job_name, s.started_at, s.finished_at)
            if job.attempt > s.attempts:  # created before a crash could record it
                s.attempts, s.state = job.attempt, J.PENDING
            target = J.HELD if job.suspended and job.state == J.PENDING else job.state
            if s.state in JOB_TERMINAL and target not in JOB_TERMINAL:
                continue
            try:
                s.state = job_observed(s.state, target)
            except IllegalTransition:
                log.warning("batch %s item %s: ignoring an observation of job %s going from"
                            " %s to %s", batch.name, s.item.id, job.name, s.state, target)
                continue
            s.message, s.job_name = job.message, job.name
            s.started_at, s.finished_at = job.started_at, job.finished_at
            if before != (s.state, s.attempts, s.message, s.job_name, s.started_at,
                          s.finished_at):
                changed.append(s)
        if changed:
            self.store.update_items(batch.name, changed)
            ctx.progressed = True
        return items

    # --- the state machine
    def _step(self, batch: Batch, status: BatchStatus, items: list[ItemStatus], jobs: list[Job],
              ctx: PassContext) -> None:
        assert batch.spec is not None
        spec = batch.spec
        state = status.state
        profile = ctx.repo.profiles.get(spec.profile)
        if state == B.PENDING:
            if spec.state == "Held":
                self._move(batch, status, B.HELD, "held by admin")
                self.store.set_suspended(batch.name, True)
            elif self._admissible(ctx):
                ctx.active_batches += 1
                status.started_at = status.started_at or time.time()
                self._move(batch, status, B.PROCESSING, "admitted by the queue")
                self.store.set_suspended(batch.name, False)
        elif state == B.HELD:
            if spec.state != "Held":
                self._move(batch, status, B.PENDING, "released by admin")
        elif state == B.PROCESSING:
            if spec.state == "Held":
                self.store.set_suspended(batch.name, True)
                ctx.active_batches -= 1
                self._move(batch, status, B.HELD, "held by admin")
                return
            if not status.items_loaded:
                items = self._load_items(batch, status, profile, ctx)
                if not status.items_loaded:
                    return
            self._restart_failed(batch, items, jobs, profile, ctx)
            self._ensure_jobs(batch, items, jobs, profile, ctx)
            if all(s.state in JOB_TERMINAL for s in items):
                self._begin_report(batch, status, B.REPORTING, "every job is terminal")
        elif state in (B.REPORTING, B.UPDATE_REPORTING):
            self._report(batch, status, items, profile, ctx)
        elif state in (B.COMPLETED, B.FAILED):
            self._restart_failed(batch, items, jobs, profile, ctx)
            wants_update = (spec.state == "UpdateReporting"
                            and status.update_generation < batch.generation)
            if wants_update and state == B.FAILED and not status.manifest_error:
                running = any(s.state not in JOB_TERMINAL for s in items)
                if not running:
                    status.update_generation = batch.generation
                    self._begin_report(batch, status, B.UPDATE_REPORTING,
                                       "admin requested UpdateReporting")
            elif wants_update:
                status.update_generation = batch.generation
                status.message = (f"UpdateReporting ignored: it applies to Failed batches"
                                  f" (this one is {state})")
        status.counts = _counts(items) if items else status.counts
        status.failures = [
            {"item": s.item.id, "message": s.message} for s in items if s.state == J.FAILED
        ][:MAX_FAILURES_IN_STATUS] if items else status.failures

    def _waiting_in_queue(self, batch: Batch, ctx: PassContext) -> bool:
        """A Pending batch the queue cannot admit yet, whose file state is already shown."""
        if batch.status.state != B.PENDING or batch.spec is None:
            return False
        return not (batch.spec.state == "Held" or self._admissible(ctx))

    @staticmethod
    def _error_shown(batch: Batch) -> bool:
        """Does the Invalid condition already say what the newest file version says?"""
        shown = next((c for c in batch.status.conditions if c.type == "Invalid"), None)
        return shown is not None and shown.status == bool(batch.spec_error) and (
            shown.message == batch.spec_error)

    @staticmethod
    def _settled(batch: Batch, status: BatchStatus, items: list[ItemStatus]) -> bool:
        """Terminal, every job terminal, every requested restart and update done."""
        assert batch.spec is not None
        if status.state not in (B.COMPLETED, B.FAILED):
            return False
        if any(s.state not in JOB_TERMINAL for s in items):
            return False
        if any(s.state == J.FAILED and batch.spec.restarts.get(s.item.id, 0) > s.attempts - 1
               for s in items):
            return False
        return not (batch.spec.state == "UpdateReporting"
                    and status.update_generation < batch.generation)

    def _admissible(self, ctx: PassContext) -> bool:
        return (not ctx.repo.queue.paused
                and ctx.active_batches < ctx.repo.queue.max_active_batches)

    def _load_items(self, batch: Batch, status: BatchStatus, profile: Profile | None,
                    ctx: PassContext) -> list[ItemStatus]:
        assert batch.spec is not None and profile is not None
        if not self.store.count_items(batch.name):
            try:
                base = Path(ctx.base_dir) if ctx.base_dir else None
                found = resolve_items(batch.spec, profile, base_dir=base,
                                      max_bytes=profile.manifest_max_bytes,
                                      timeout=profile.manifest_timeout)
            except ManifestError as exc:
                status.manifest_error = str(exc)
                status.message = f"manifest error: {exc}"
                self._begin_report(batch, status, B.REPORTING, status.message)
                return []
            self.store.set_items(batch.name, found)
            failpoints.hit("after-items")
        items = self.store.list_items(batch.name)
        status.items_loaded = True
        status.item_count = len(items)
        ctx.progressed = True
        return items

    def _ensure_jobs(self, batch: Batch, items: list[ItemStatus], jobs: list[Job],
                     profile: Profile | None, ctx: PassContext) -> None:
        """Create the Job of every item's current attempt that has none (budget allowing)."""
        existing = {j.name for j in jobs}
        for s in items:
            if s.state in JOB_TERMINAL:
                continue
            attempt = max(s.attempts, 1)
            self._create_job(batch, s, attempt, existing, profile, ctx)

    def _restart_failed(self, batch: Batch, items: list[ItemStatus], jobs: list[Job],
                        profile: Profile | None, ctx: PassContext) -> None:
        """Run one more attempt of each failed item whose `restarts` total is not used up."""
        assert batch.spec is not None
        existing = {j.name for j in jobs}
        for s in items:
            wanted = batch.spec.restarts.get(s.item.id, 0)
            if s.state != J.FAILED or wanted <= s.attempts - 1:
                continue
            self._create_job(batch, s, s.attempts + 1, existing, profile, ctx)

    def _create_job(self, batch: Batch, s: ItemStatus, attempt: int, existing: set[str],
                    profile: Profile | None, ctx: PassContext) -> None:
        assert batch.spec is not None and profile is not None
        spec = build_job(batch.name, s.item, attempt, profile,
                         suspended=batch.spec.state == "Held", base_dir=ctx.base_dir,
                         storage_root=str(_storage_path(self.storage_root, profile)))
        if spec.name in existing:
            return
        if not spec.suspended and not ctx.budget.take():
            return
        self.store.create_job(spec)
        failpoints.hit("after-job-created")
        restarted = attempt > s.attempts and s.attempts > 0
        s.attempts, s.job_name = attempt, spec.name
        s.state = J.HELD if spec.suspended else J.PENDING
        if restarted:
            s.message, s.started_at, s.finished_at = "", None, None
            self.store.add_event(Event(batch.name, time.time(), "Restarted",
                                       f"{s.item.id}: attempt {attempt}",
                                       batch.source_revision))
        ctx.dirty_items[s.item.id] = s
        existing.add(spec.name)
        ctx.progressed = True

    # --- reporting
    def _begin_report(self, batch: Batch, status: BatchStatus, target: BatchState,
                      why: str) -> None:
        status.report_round += 1
        self._move(batch, status, target, why)

    def _report(self, batch: Batch, status: BatchStatus, items: list[ItemStatus],
                profile: Profile | None, ctx: PassContext) -> None:
        kind = ("manifest-error" if status.manifest_error
                else "update" if status.state == B.UPDATE_REPORTING else "initial")
        view = copy.copy(batch)
        view.status = status
        earlier = [r for r in self.store.list_reports(batch.name)
                   if r.id != f"{batch.name}:{status.report_round}"]
        previous = earlier[-1].job_states if earlier else {}
        report = build_report(view, items, profile, kind=kind, round_=status.report_round,
                              previous=previous)
        if self.store.save_report(report):
            ctx.progressed = True
            failpoints.hit("after-report-saved")
        ok = kind != "manifest-error" and all(s.state == J.COMPLETED for s in items)
        status.finished_at = time.time()
        why = (f"report sent ({report.subject})" if report.emailed
               else "no change since the last report: no email" if kind == "update"
               else "report kept (email suppressed)")
        status.message = (status.manifest_error and f"manifest error: {status.manifest_error}") \
            or why
        self._move(batch, status, B.COMPLETED if ok else B.FAILED, why)

    # --- deletion
    def _delete(self, batch: Batch, revision: str, ctx: PassContext) -> None:
        self.store.delete_jobs(batch.name)  # running ones are stopped, as on Kubernetes
        if batch.spec is None:
            self.store.remove_batch(batch.name)
        elif batch.status.state != B.DELETED:
            status = copy.deepcopy(batch.status)
            status.deleted_at = time.time()
            self._move(batch, status, B.DELETED, "batch file deleted", revision)
            self._write_status(batch, status, ctx)
        deletion_done(self.store, batch.name)
        ctx.progressed = True

    def _expire(self, batch: Batch, ctx: PassContext) -> None:
        deleted_at = batch.status.deleted_at or 0.0
        if time.time() - deleted_at > ctx.repo.queue.deleted_retention_seconds:
            self.store.remove_batch(batch.name)
            ctx.progressed = True

    # --- helpers
    def _move(self, batch: Batch, status: BatchStatus, target: BatchState, why: str,
              revision: str | None = None) -> None:
        old = status.state
        status.state = batch_transition(old, target)
        if old != target:
            status.message = why if not status.manifest_error else status.message
            self.store.add_event(Event(batch.name, time.time(), str(target), why,
                                       revision or batch.source_revision))

    def _set_condition(self, status: BatchStatus, type_: str, value: bool, reason: str,
                       message: str) -> None:
        for c in status.conditions:
            if c.type == type_:
                if (c.status, c.reason, c.message) != (value, reason, message):
                    if c.status != value:
                        c.last_transition = time.time()
                    c.status, c.reason, c.message = value, reason, message
                return
        status.conditions.append(Condition(type_, value, reason, message, time.time()))

    def _write_status(self, batch: Batch, status: BatchStatus, ctx: PassContext) -> None:
        if status != batch.status:
            self.store.update_status(batch.name, batch.status, status)
            failpoints.hit("after-status")
            ctx.progressed = True


def _queue_order(b: Batch) -> tuple[int, float, str]:
    priority = b.spec.priority if b.spec is not None else 99
    return (priority, b.submitted_at, b.name)


def _counts(items: list[ItemStatus]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in items:
        out[str(s.state)] = out.get(str(s.state), 0) + 1
    return out


def _storage_path(root: Path, profile: Profile) -> Path:
    p = Path(profile.storage)
    return p if p.is_absolute() else root / p
