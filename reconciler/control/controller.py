"""The controller: Batch → Jobs, Jobs → Batch status, terminal batch → report (DESIGN §4).

Level-triggered: every pass reads the current state of each batch and its jobs and does the
next step that state calls for; it never remembers events. Of the jobs it reads those that
changed since the batch was last observed (the store keeps where each batch stands, and
a restart on Kubernetes starts again from every job), so a step costs what changed.
Each step writes something that makes it unnecessary next time (a Job with a
deterministic name, a status with a report round, a report with a deterministic id), so a
pass interrupted anywhere and run again does the remaining steps and nothing twice.
Requests made by commits (restart an item, UpdateReporting) are compared with what was
already done for them, never replayed.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconciler.control import fileerrors
from reconciler.control.backoff import Backoff
from reconciler.control.downloads import ManifestDownloads
from reconciler.control.jobs import build_job
from reconciler.control.outofsync import REASON, manifest_key, out_of_sync
from reconciler.control.readiness import ready, reconciling
from reconciler.control.reports import build_report, report_id
from reconciler.domain.guidance import ACTIVE as ACTIVE_BATCH
from reconciler.domain.guidance import QueueKey, waits_on_its_jobs
from reconciler.domain.guidance import queue_order as _queue_order
from reconciler.domain.model import (
    Batch,
    BatchSpec,
    BatchStatus,
    Condition,
    Item,
    ItemStatus,
    Job,
    Profile,
)
from reconciler.domain.states import (
    JOB_TERMINAL,
    BatchState,
    IllegalTransition,
    JobState,
    RequestedState,
    batch_transition,
    job_observed,
    job_transition,
)
from reconciler.manifests.repofiles import RepoSnapshot
from reconciler.manifests.resolve import ManifestError, resolve_items
from reconciler.source.sync import (
    RepoState,
    deletion_done,
    deletion_reason,
    pending_deletions,
)
from reconciler.spec.validation import storage_path_problem
from reconciler.store.base import ConflictError, Event, JobChanges, JobSpec, NotLeader, Store
from reconciler.support import failpoints
from reconciler.support.logfmt import transition
from reconciler.support.nospace import is_no_space
from reconciler.support.urls import split_userinfo

log = logging.getLogger(__name__)
B = BatchState
J = JobState
R = RequestedState
MAX_FAILURES_IN_STATUS = 20
# Jobs the embedded backend makes ahead of each slot: they wait Pending and the runner
# starts one the moment a job ends. The controller makes Jobs only in its passes, so they
# must last from one pass to the next: with one per slot short jobs used them up within a
# pass and slots stood empty; three halved the passes again (bench/README.md, fifth round)
JOBS_AHEAD_PER_SLOT = 3


@dataclass
class JobBudget:
    """How many more jobs may be made (active: Pending or Processing) across the whole
    queue: maxActiveJobs, and on the embedded backend `jobs_ahead_per_slot` times as many
    again made ahead (Settings.jobs_ahead, JOBS_AHEAD_PER_SLOT unless told)."""

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
    git_dir: str | None  # the mirror: relative file: URLs are read from it, at a commit
    progressed: bool = False
    dirty_items: dict[str, ItemStatus] = field(default_factory=dict)  # written once a batch
    storage_dirs: dict[str, Path] = field(default_factory=dict)  # profile -> its checked dir
    # wanted a Job the budget had no room for, or was just admitted: requeued (see
    # _starved), by name, with its place in the queue
    starved: dict[str, QueueKey] = field(default_factory=dict)

    def starve(self, batch: Batch) -> None:
        self.starved[batch.name] = _queue_order(batch)


@dataclass
class StepCount:
    """What the last pass stepped: every batch (full) or the work queue's, and how many."""

    full: bool
    steps: int = 0


@dataclass(frozen=True)
class PlannedJob:
    """A Job to create for an item's attempt, and the state the item moves to once made."""

    item: ItemStatus
    job: JobSpec
    attempt: int
    state: JobState


@dataclass(frozen=True)
class Move:
    """A batch state move a handler chose, and why (the message and the event say it)."""

    target: BatchState
    why: str
    report: bool = False  # a new report round begins with it


@dataclass(frozen=True)
class Decision:
    """What a state's handler wants: a move, or none; and what waits for a missing profile."""

    move: Move | None = None
    waiting: str = ""
    # the item counts the handler read after its last write of items, if it read them:
    # the step shows these instead of reading them again (a move writes no item)
    counts: dict[str, int] | None = None


# The moves each state's handler may choose; every one is a row of BATCH_TRANSITIONS
# (tests/test_states.py checks it). Deleted is reached only by `_delete`, from any state.
DECIDES: dict[BatchState, frozenset[BatchState]] = {
    B.PENDING: frozenset({B.HELD, B.PROCESSING}),
    B.HELD: frozenset({B.PENDING}),
    B.PROCESSING: frozenset({B.HELD, B.REPORTING}),
    B.REPORTING: frozenset({B.COMPLETED, B.FAILED}),
    B.UPDATE_REPORTING: frozenset({B.COMPLETED, B.FAILED}),
    B.COMPLETED: frozenset(),
    B.FAILED: frozenset({B.UPDATE_REPORTING}),
}


@dataclass
class Turn:
    """One batch's step in a pass: what its state's handler reads. Items are not in it:
    each question about them is asked of the store as narrowly as it can be (the jobs
    that changed, the items that need a job, the counts), so that a step costs what
    changed, not the batch's size; only a report reads every item."""

    batch: Batch
    spec: BatchSpec
    profile: Profile | None
    status: BatchStatus
    ctx: PassContext


class Controller:
    """Drives every batch one step further on each pass; see the module docstring."""

    def __init__(self, store: Store, *, storage_root: Path,
                 file_roots: tuple[str, ...] = (),
                 downloads: ManifestDownloads | None = None,
                 message_id_domain: str | None = None, site_url: str | None = None,
                 jobs_ahead_per_slot: int = 0,
                 between_steps: Callable[[], object] | None = None) -> None:
        self.store = store
        self.storage_root = storage_root
        self.file_roots = file_roots  # host dirs an operator allowed for file:///... URLs
        self.downloads = downloads if downloads is not None else ManifestDownloads()
        self.backoff = Backoff()
        # the Pending batches in queue order (their queue_order keys): those of the last
        # full walk, and each Held batch stepped since (a release makes it Pending)
        self._queue: list[QueueKey] = []
        self._next_expiry = 0.0  # when a Deleted batch's retention ends (0: walk to find out)
        # batches that wanted a Job the budget had no room for: a Job of another batch
        # ending changes nothing of theirs, so they are stepped again once it has room,
        # in queue order (each read only when its turn comes with room left)
        self._starved: dict[str, QueueKey] = {}
        self.steps = 0  # batch steps taken in all (the heartbeat shows it)
        self.last_pass = StepCount(full=True)
        self.message_id_domain = message_id_domain  # None: this installation's own
        self.site_url = site_url  # the web site's base URL: reports link the batch page
        # Jobs made beyond maxActiveJobs, per slot: on the embedded backend
        # Settings.jobs_ahead (JOBS_AHEAD_PER_SLOT unless told), which wait Pending for a
        # slot and are started the moment a job ends, not a pass later (the runner runs
        # maxActiveJobs at once); on Kubernetes none, as a Job made runs
        self.jobs_ahead_per_slot = jobs_ahead_per_slot
        # called after each batch's step, outside its transaction: the embedded runner
        # gives the slot of a job that ended meanwhile to a Job made ahead, at once, not at
        # the end of a pass of many steps
        self.between_steps = between_steps
        # the decision table: the handler of each state (Deleted is only expired, above it)
        self._decisions: dict[BatchState, Callable[[Turn], Decision]] = {
            B.PENDING: self._pending,
            B.HELD: self._held,
            B.PROCESSING: self._processing,
            B.REPORTING: self._reporting,
            B.UPDATE_REPORTING: self._reporting,
            B.COMPLETED: self._finished,
            B.FAILED: self._finished,
        }

    def _message_id_domain(self) -> str:
        """The configured domain, else one made up once per installation and kept in the
        store, so that two installations' Message-IDs never meet."""
        if self.message_id_domain is None:
            state = self.store.load_sync_state()
            domain = state.message_id_domain
            if not domain:
                domain = state.message_id_domain = f"{secrets.token_hex(8)}.batchq.invalid"
                self.store.save_sync_state(state)
            self.message_id_domain = domain
        return self.message_id_domain

    # --- one pass: the batches that can change, or every batch
    def reconcile_all(self, repo: RepoState, git_dir: str | None, *, full: bool = True,
                      touched: Collection[str] = ()) -> bool:
        """Step the batches that can change; True if anything changed (the caller loops
        until nothing does). `git_dir` is the Git mirror the batches were synced from.

        Like controller-runtime's work queue with a periodic resync: a `full` pass (the
        caller asks for one on its first pass, after a sync that changed something and
        every resync period) steps every batch; any other steps only the batches that can
        have changed: those the store saw a Job of change (`take_changed_batches`), pending
        deletions, finished manifest downloads, back-off retries that are due, those that
        wanted a Job the budget had no room for (requeued until it has), the batches
        Reporting, the Processing ones until their items are loaded (then only a change
        of their jobs, or a requeue, gives them something to do: `_waits_for_job`), the
        batches `touched` by a slice of a large commit (`CommitApply`; a new Pending one
        joins the queue), and Pending ones, in queue order, while the queue admits. A
        pass is also full when the store cannot tell what changed or a Deleted batch's
        retention ends.
        `reconcile`'s early return for settled batches stays as a second guard."""
        self.downloads.pass_started()
        changed = self.store.take_changed_batches()  # drained on every pass, full or not
        now = time.time()
        full = full or changed is None or now >= self._next_expiry
        deletions = pending_deletions(self.store)
        budget = JobBudget(repo.queue.max_active_jobs * (1 + self.jobs_ahead_per_slot)
                           - self.store.count_active_jobs())
        wanted: set[str] = set()
        if full:
            batches = self.store.list_batches()
            active = sum(1 for b in batches if b.status.state in ACTIVE_BATCH)
            self._remember_queue(batches, repo)
        else:
            wanted = (changed or set()) | set(deletions) | self.downloads.batches() | (
                self.backoff.due(now)) | set(touched)
            batches, active = self._work_queue(wanted)
            for batch in batches:  # made by a slice of a commit: the queue has it now
                if batch.name in touched and batch.status.state == B.PENDING:
                    self._enqueue(_queue_order(batch))
        ctx = PassContext(repo=repo, budget=budget, active_batches=active, git_dir=git_dir)
        self.last_pass = StepCount(full=full)
        stepped: set[str] = set()
        for batch in self._in_queue_order(batches, full, ctx):
            # a requeued batch is stepped while there is room, in queue order; the others
            # wait for the next Job to end
            if not full and _waits_for_job(
                    batch, wanted, self._starved if ctx.budget.free > 0 else set()):
                continue
            self._step_one(batch, deletions, ctx, now)
            stepped.add(batch.name)
        if not full:
            self._admit_from_queue(stepped, deletions, ctx, now)
        # requeued: those that still wait, and those that waited and were not stepped
        kept = {} if full else {n: k for n, k in self._starved.items() if n not in stepped}
        self._starved = kept | ctx.starved
        return ctx.progressed

    def _in_queue_order(self, batches: list[Batch], full: bool,
                        ctx: PassContext) -> Iterator[Batch]:
        """The pass's batches, and in a pass that is not full the requeued ones too, in
        queue order. A requeued batch not among them is read when its turn comes, and
        only while the pass has room left (else it waits, unread, for the next pass):
        with many batches waiting for room, a pass reads the few the room is for."""
        if full:
            yield from sorted(batches, key=_queue_order)
            return
        read = {b.name: b for b in batches}
        keys = [(_queue_order(b), b.name) for b in batches]
        keys += [(key, name) for name, key in self._starved.items() if name not in read]
        for _key, name in sorted(keys):
            batch = read.get(name)
            if batch is None:
                if ctx.budget.free <= 0:
                    continue
                batch = self.store.get_batch(name)
                if batch is None:
                    continue
            yield batch

    def _step_one(self, batch: Batch, deletions: dict[str, str], ctx: PassContext,
                  now: float) -> None:
        """One batch's step, in a transaction of its own; a failure is its own."""
        if self.backoff.waiting(batch, now):
            return
        if batch.status.state == B.HELD:
            self._enqueue(_queue_order(batch))  # a release makes it Pending
        self.last_pass.steps += 1
        self.steps += 1
        try:  # whole on SQLite; see Store.transaction
            with self.store.transaction(durable=_step_must_be_durable(batch, deletions)):
                failpoints.hit(f"step@{batch.name}")
                if batch.name in deletions:
                    self._delete(batch, deletions[batch.name], ctx)
                else:
                    self.reconcile(batch, ctx)
        except Exception as exc:  # one broken batch never stops the others
            if is_no_space(exc) or isinstance(exc, NotLeader):  # ...but a full disk, or
                raise  # losing the Lease, stops every batch: the pass ends
            self._failed(batch, exc, ctx)
        else:
            self.backoff.succeeded(batch.name)
            if batch.name in deletions:  # its retention ends then: that pass walks them all
                self._next_expiry = min(self._next_expiry,
                                        time.time() + ctx.repo.queue.deleted_retention_seconds)
        if self.between_steps is not None:
            self.between_steps()

    def _remember_queue(self, batches: list[Batch], repo: RepoState) -> None:
        """What a full walk tells the passes after it: the Pending batches in queue order
        (a new one comes only from a sync, which makes the next pass full, or from a Held
        batch released, which `_step_one` adds) and when the first Deleted batch's
        retention ends."""
        self._queue = sorted(_queue_order(b) for b in batches if b.status.state == B.PENDING)
        retention = repo.queue.deleted_retention_seconds
        self._next_expiry = min((float(b.status.deleted_at or 0.0) + retention
                                 for b in batches if b.status.state == B.DELETED),
                                default=float("inf"))

    def _enqueue(self, key: QueueKey) -> None:
        """Put a Pending batch's key in the queue, in order, unless it is there (a search,
        not a scan: a 10,000-file commit adds 10,000)."""
        at = bisect.bisect_left(self._queue, key)
        if at == len(self._queue) or self._queue[at] != key:
            self._queue.insert(at, key)

    def _work_queue(self, wanted: set[str]) -> tuple[list[Batch], int]:
        """The batches a pass that is not full looks at, but the requeued ones
        (`_in_queue_order` adds those): the active batches that may act and those
        `wanted` (see `reconcile_all`); and how many batches are active."""
        counts = self.store.count_batches()
        picked = {b.name: b for b in self.store.batches_that_may_act(
            [str(s) for s in ACTIVE_BATCH])}
        for name in wanted - picked.keys():
            batch = self.store.get_batch(name)
            if batch is not None:
                picked[name] = batch
        return list(picked.values()), sum(counts.get(str(s), 0) for s in ACTIVE_BATCH)

    def _admit_from_queue(self, stepped: set[str], deletions: dict[str, str],
                          ctx: PassContext, now: float) -> None:
        """Step the Pending batches at the head of the queue while it admits: a batch that
        stays Pending with room to spare (no profile yet) waits for a sync, which makes the
        next pass full."""
        for key in list(self._queue):
            if not self._admissible(ctx):
                return
            name = key[2]
            if name in stepped:
                continue
            batch = self.store.get_batch(name)
            if batch is None or batch.status.state != B.PENDING:
                self._queue.remove(key)
                continue
            before = ctx.active_batches
            self._step_one(batch, deletions, ctx, now)
            if ctx.active_batches == before and name not in self.backoff.failures:
                self._queue.remove(key)

    def _failed(self, batch: Batch, exc: Exception, ctx: PassContext) -> None:
        """Back the batch off, log the failure once for this try, and show it on the batch
        (ReconcileError) until a step of it succeeds."""
        error = f"{type(exc).__name__}: {exc}"[:1024]
        f = self.backoff.failed(batch, error)
        message = (f"{error} (try {f.tries} failed; next try at {_iso(f.retry_at)}, in"
                   f" {f.delay:g} s, or at once on a new commit)")
        if isinstance(exc, ConflictError):  # someone wrote first: routine, no traceback
            log.warning("batch %s: %s", batch.name, message)
        else:
            log.error("batch %s: step failed; the others go on: %s", batch.name, message,
                      exc_info=exc)
        try:
            with self.store.transaction():
                current = self.store.get_batch(batch.name)
                if current is None:
                    return
                status = _copy_status(current.status)
                self._set_condition(status, "ReconcileError", True, type(exc).__name__, message)
                self._write_status(current, status, ctx)
        except Exception as again:  # the store itself may be what fails: the log has it
            log.warning("batch %s: could not record the failure: %s", batch.name, again)

    def reconcile(self, batch: Batch, ctx: PassContext) -> None:
        if batch.status.state == B.DELETED:
            self._expire(batch, ctx)
            return
        if batch.status.observed_generation == batch.generation and self._error_shown(batch) and (
            batch.status.settled or self._waiting_in_queue(batch, ctx)
        ) and not _shows(batch.status, "ReconcileError") and _ready_shown(batch.status):
            return  # nothing can change without a new commit: read nothing, write nothing
        status = _copy_status(batch.status)
        self._flag(status, "ReconcileError", False, "", "")  # this step got this far
        if batch.spec is None:
            self._set_condition(status, "Invalid", True, "FileInvalid", batch.spec_error)
            status.observed_generation = batch.generation
            self._show_readiness(status, invalid_file=batch.spec_error or "invalid file")
            if not fileerrors.told_already(self.store, batch):
                self._report_file_error(batch, status, ctx)
            self._write_status(batch, status, ctx)
            return
        loaded = status.items_loaded  # before this step
        changes = (self.store.changed_jobs(batch.name)
                   if status.items_loaded or status.state != B.PENDING else JobChanges([]))
        self._observe(batch, changes, ctx)
        ctx.dirty_items = {}
        spec = batch.spec
        profile = ctx.repo.profiles.get(spec.profile)
        waiting = self._step(Turn(batch, spec, profile, status, ctx),
                             counted=status.items_loaded or bool(changes.jobs))
        status.settled = self._settled(batch, spec, status)
        status.observed_generation = batch.generation
        self._set_condition(status, "Invalid", bool(batch.spec_error), "FileInvalid"
                            if batch.spec_error else "FileValid", batch.spec_error)
        self._flag(status, "Stalled", bool(waiting), "ProfileNotFound",
                   f'profile "{spec.profile}" not found (expected profiles/{spec.profile}.yaml):'
                   f" {waiting}; add the profile back or change spec.profile" if waiting else "")
        if batch.status.observed_generation != batch.generation:  # the spec is new: compare
            items = self.store.list_items(batch.name) if loaded or changes.jobs else []
            drift = out_of_sync(batch.name, batch.source_path, spec, status.admitted_manifest,
                                items, status.manifest_error)
            self._flag(status, "OutOfSync", bool(drift), REASON if drift else "", drift)
        self._show_readiness(status)
        self._write_status(batch, status, ctx)

    def _show_readiness(self, status: BatchStatus, invalid_file: str = "") -> None:
        """Ready (True only when Completed) and Reconciling (shown once it was True)."""
        self._set_condition(status, "Ready", *ready(status, invalid_file=invalid_file))
        on_its_way, reason, message = reconciling(status, invalid_file=invalid_file)
        if on_its_way or any(c.type == "Reconciling" for c in status.conditions):
            self._set_condition(status, "Reconciling", on_its_way, reason, message)

    # --- observing jobs into item status
    def _observe(self, batch: Batch, changes: JobChanges, ctx: PassContext) -> None:
        """Record in their items the jobs changed since the batch's last observation; the
        store then marks them observed (SQLite: in this step's transaction)."""
        if not changes.jobs:
            return
        latest: dict[str, Job] = {}
        for j in changes.jobs:
            if j.item not in latest or j.attempt > latest[j.item].attempt:
                latest[j.item] = j
        changed: list[ItemStatus] = []
        failed: list[ItemStatus] = []  # seen failing in this pass
        for s in self.store.items_of(batch.name, latest):
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
            if s.state != before[0]:
                transition(log, "job", {"batch": batch.name, "item": s.item.id,
                                        "attempt": s.attempts, "from": str(before[0]),
                                        "to": str(s.state), "job": job.name,
                                        "reason": job.message[:300],
                                        "commit": batch.source_revision})
            s.message, s.job_name = job.message, job.name
            s.started_at, s.finished_at = job.started_at, job.finished_at
            if before != (s.state, s.attempts, s.message, s.job_name, s.started_at,
                          s.finished_at):
                changed.append(s)
                if s.state == J.FAILED and before[0] != J.FAILED:
                    failed.append(s)
        if changed:
            self.store.update_items(batch.name, changed)
            ctx.progressed = True
            self._announce_failures(batch, failed)
        self.store.observed(batch.name, changes)

    def _announce_failures(self, batch: Batch, failed: list[ItemStatus]) -> None:
        """One timeline entry (and Event) for the jobs seen failing in this pass: an
        admin sees what failed without a write per item of a large batch."""
        if not failed:
            return
        shown = "; ".join(f"{s.item.id} (attempt {s.attempts}): {s.message}"
                          for s in failed[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        head = f"{len(failed)} jobs failed: " if len(failed) > 1 else "job failed: "
        self.store.add_event(Event(batch.name, time.time(), "JobFailed", head + shown + more,
                                   batch.source_revision))

    # --- the state machine: one handler per batch state, each returning the move it wants
    def _step(self, turn: Turn, counted: bool) -> str:
        """Take the batch one step; return what waits for its missing profile, if anything
        does (the batch then waits, visibly, where it is: jobs already running go on).
        The counts and failures shown (of `counted` batches, or of items loaded now) come
        from the store's counters and its index of failed items, not from every item."""
        status = turn.status
        state = status.state
        decision = self._decisions[state](turn)
        if decision.move is not None:
            self._decide(turn, state, decision.move)
        counts = decision.counts if decision.counts is not None else (
            self.store.count_items(turn.batch.name) if counted or status.items_loaded else {})
        if counts:
            status.counts = counts
            status.failures = [
                {"item": s.item.id, "message": s.message}
                for s in self.store.list_items(turn.batch.name, state=str(J.FAILED),
                                               limit=MAX_FAILURES_IN_STATUS)
            ] if counts.get(J.FAILED) else []
        return decision.waiting

    def _decide(self, turn: Turn, state: BatchState, move: Move) -> None:
        """Make a handler's move: one the handler may choose (DECIDES) and the table allows."""
        if move.target not in DECIDES[state]:
            raise IllegalTransition(f"the {state} handler chose a move to {move.target},"
                                    f" which DECIDES[{state}] does not list (a controller bug)")
        if move.report:
            turn.status.report_round += 1
        self._move(turn.batch, turn.status, move.target, move.why)

    def _pending(self, t: Turn) -> Decision:
        if t.spec.state == R.HELD:
            self.store.set_suspended(t.batch.name, True)
            return Decision(Move(B.HELD, "held by admin"))
        if t.profile is None:
            return Decision(waiting="the batch is not started")
        if not self._admissible(t.ctx):
            return Decision()
        t.ctx.active_batches += 1
        t.status.started_at = t.status.started_at or time.time()
        self.store.set_suspended(t.batch.name, False)
        t.ctx.starve(t.batch)  # its next step makes its Jobs, room allowing
        return Decision(Move(B.PROCESSING, "admitted by the queue"))

    def _held(self, t: Turn) -> Decision:
        if t.spec.state != R.HELD:
            return Decision(Move(B.PENDING, "released by admin"))
        return Decision()

    def _processing(self, t: Turn) -> Decision:
        if t.spec.state == R.HELD:
            self.store.set_suspended(t.batch.name, True)
            t.ctx.active_batches -= 1
            return Decision(Move(B.HELD, "held by admin"))
        waiting = ""
        if t.profile is None:
            waiting = "no new job starts"
        else:
            if not t.status.items_loaded:
                unreadable = self._load_items(t.batch, t.spec, t.profile, t.status, t.ctx)
                if unreadable is not None:
                    return Decision(unreadable)
            if t.status.items_loaded:
                self._restart_failed(t.batch, t.spec, t.profile, t.ctx)
                self._ensure_jobs(t.batch, t.spec, t.profile, t.ctx)
        if not t.status.items_loaded:
            return Decision(waiting=waiting)
        counts = self.store.count_items(t.batch.name)  # after the step's last item write
        if not _unfinished_in(counts):
            return Decision(Move(B.REPORTING, "every job is terminal", report=True), waiting,
                            counts)
        return Decision(waiting=waiting, counts=counts)

    def _reporting(self, t: Turn) -> Decision:
        if t.profile is None:  # it says who hears of the batch, from whom, who must not
            return Decision(waiting="the report waits")
        items = self.store.list_items(t.batch.name)  # once a report round: it lists all
        return Decision(self._report(t.batch, t.spec, t.profile, t.status, items, t.ctx))

    def _finished(self, t: Turn) -> Decision:
        """Completed or Failed: restarts asked for run, and an UpdateReporting is begun."""
        batch, spec, status, state = t.batch, t.spec, t.status, t.status.state
        waiting = ""
        if t.profile is None:
            waiting = "the restarts asked for wait" if self._restarts_due(batch, spec) else ""
        else:
            self._restart_failed(batch, spec, t.profile, t.ctx)
        wants_update = (spec.state == R.UPDATE_REPORTING
                        and status.update_generation < batch.generation)
        if wants_update and state == B.FAILED and not status.manifest_error:
            if not self._unfinished(batch):
                status.update_generation = batch.generation
                return Decision(Move(B.UPDATE_REPORTING, "admin requested UpdateReporting",
                                     report=True), waiting)
        elif wants_update:
            status.update_generation = batch.generation
            status.message = (f"UpdateReporting ignored: it applies to Failed batches"
                              f" (this one is {state})")
        return Decision(waiting=waiting)

    def _waiting_in_queue(self, batch: Batch, ctx: PassContext) -> bool:
        """A Pending batch the queue cannot admit yet, whose file state is already shown."""
        if batch.status.state != B.PENDING or batch.spec is None:
            return False
        return not (batch.spec.state == R.HELD or self._admissible(ctx))

    @staticmethod
    def _error_shown(batch: Batch) -> bool:
        """Does the Invalid condition already say what the newest file version says?"""
        shown = next((c for c in batch.status.conditions if c.type == "Invalid"), None)
        return shown is not None and shown.status == bool(batch.spec_error) and (
            shown.message == batch.spec_error)

    def _restartable(self, batch: Batch, spec: BatchSpec) -> list[ItemStatus]:
        """The failed items whose `restarts` total is not used up: only the items named in
        `restarts` are read."""
        named = [item for item, wanted in spec.restarts.items() if wanted > 0]
        return [s for s in (self.store.items_of(batch.name, named) if named else [])
                if s.state == J.FAILED and spec.restarts.get(s.item.id, 0) > s.attempts - 1]

    def _restarts_due(self, batch: Batch, spec: BatchSpec) -> bool:
        return bool(self._restartable(batch, spec))

    def _unfinished(self, batch: Batch) -> int:
        """Items whose job is not terminal, from the store's counters."""
        return _unfinished_in(self.store.count_items(batch.name))

    def _settled(self, batch: Batch, spec: BatchSpec, status: BatchStatus) -> bool:
        """Terminal, every job terminal, every requested restart and update done."""
        if status.state not in (B.COMPLETED, B.FAILED):
            return False
        if self._unfinished(batch):
            return False
        if self._restarts_due(batch, spec):
            return False
        return not (spec.state == R.UPDATE_REPORTING
                    and status.update_generation < batch.generation)

    def _admissible(self, ctx: PassContext) -> bool:
        return (not ctx.repo.queue.paused
                and ctx.active_batches < ctx.repo.queue.max_active_batches)

    def _load_items(self, batch: Batch, spec: BatchSpec, profile: Profile, status: BatchStatus,
                    ctx: PassContext) -> Move | None:
        """Store the batch's items, read once; return the move to report a manifest that
        cannot be read."""
        if not self.store.count_items(batch.name):
            try:
                found = self._read_manifest(batch, spec, profile, ctx)
            except ManifestError as exc:
                status.admitted_manifest = manifest_key(spec)
                status.manifest_error = str(exc)
                status.message = f"manifest error: {exc}"
                return Move(B.REPORTING, status.message, report=True)
            if found is None:  # being downloaded outside the pass: picked up later
                status.message = f"downloading the manifest {spec.manifest_url}"
                return None
            if spec.manifest_url:
                status.message = f"{len(found)} items read from the manifest"
            shown, credentials = _withhold_credentials(found)
            if credentials:  # first: the items' presence means "loaded" on the next pass
                self.store.set_credentials(batch.name, credentials)
            self.store.set_items(batch.name, shown)
            failpoints.hit("after-items")
        status.admitted_manifest = status.admitted_manifest or manifest_key(spec)
        status.items_loaded = True
        status.item_count = sum(self.store.count_items(batch.name).values())
        ctx.progressed = True
        return None

    def _read_manifest(self, batch: Batch, spec: BatchSpec, profile: Profile,
                       ctx: PassContext) -> list[Item] | None:
        """Inline items at once; a manifest URL by a background download (None until it
        has finished), so a slow server holds only this batch."""
        repo = RepoSnapshot(Path(ctx.git_dir), batch.source_revision) if ctx.git_dir else None

        def read() -> list[Item]:
            return resolve_items(spec, profile, repo=repo, file_roots=self.file_roots,
                                 max_bytes=profile.manifest_max_bytes,
                                 timeout=profile.manifest_timeout)

        if spec.items is not None:
            return read()
        key = (spec.manifest_url, profile, ctx.git_dir, batch.source_revision)
        return self.downloads.poll(batch.name, key, read, deadline=profile.manifest_timeout)

    def _ensure_jobs(self, batch: Batch, spec: BatchSpec, profile: Profile,
                     ctx: PassContext) -> None:
        """Create the Job of every item's current attempt that has none (budget allowing):
        the store hands over at most as many such items as the budget has room for."""
        limit = None if spec.state == R.HELD else ctx.budget.free  # held: made suspended
        if limit is not None and limit <= 0:
            ctx.starve(batch)
            return
        existing: set[str] = set()
        planned = [self._plan_job(batch, spec, profile, s, max(s.attempts, 1), existing, ctx)
                   for s in self.store.items_needing_jobs(batch.name, limit)]
        self._create_jobs(batch, [p for p in planned if p is not None], ctx)

    def _restart_failed(self, batch: Batch, spec: BatchSpec, profile: Profile,
                        ctx: PassContext) -> None:
        """Run one more attempt of each failed item whose `restarts` total is not used up
        (a Job of that attempt made before a crash is adopted by its fixed name)."""
        existing: set[str] = set()
        planned = [self._plan_job(batch, spec, profile, s, s.attempts + 1, existing, ctx)
                   for s in self._restartable(batch, spec)]
        self._create_jobs(batch, [p for p in planned if p is not None], ctx)

    def _plan_job(self, batch: Batch, spec: BatchSpec, profile: Profile, s: ItemStatus,
                  attempt: int, existing: set[str], ctx: PassContext) -> PlannedJob | None:
        """The Job of this attempt, if it has none yet and the budget allows one."""
        # an attempt already created keeps the name it was created with (names made by an
        # older naming scheme included), so a new scheme never runs an attempt twice
        created = s.job_name if attempt == s.attempts and s.job_name else None
        job = build_job(batch.name, s.item, attempt, profile, name=created,
                        suspended=spec.state == R.HELD, git_dir=ctx.git_dir,
                        commit=batch.source_revision, file_roots=self.file_roots,
                        storage_root=(str(self._storage_dir(profile, ctx))
                                      if profile.storage_s3 is None else ""),
                        storage_mount=str(self.storage_root))
        if job.name in existing:
            return None
        if not job.suspended and not ctx.budget.take():
            ctx.starve(batch)
            return None
        first = J.HELD if job.suspended else J.PENDING
        # a new attempt's Job starts afresh; the same attempt's Job made again (it vanished
        # before it finished) is a move of that attempt, checked before the Job is made
        state = first if attempt > s.attempts else job_transition(s.state, first)
        existing.add(job.name)
        return PlannedJob(s, job, attempt, state)

    def _create_jobs(self, batch: Batch, planned: list[PlannedJob], ctx: PassContext) -> None:
        """The step's new Jobs in one call (the store makes them as fast as it may). When
        one failed, the items of those made are written before the error goes up, to the
        pass's back-off (NotLeader: no write may be made; the next leader adopts them by
        their fixed names)."""
        if not planned:
            return
        result = self.store.create_jobs([p.job for p in planned])
        for p in planned:
            if p.job.name in result.made:
                self._created(batch, p, ctx)
        if ctx.dirty_items and not isinstance(result.error, NotLeader):
            # one write for the Jobs made, before the counts are read (crash: adopted)
            self.store.update_items(batch.name, list(ctx.dirty_items.values()))
            ctx.dirty_items = {}
            self.store.observed_made_jobs(batch.name)  # recorded: nothing to observe
        if result.error is not None:
            raise result.error

    def _created(self, batch: Batch, p: PlannedJob, ctx: PassContext) -> None:
        """Record in the item that its attempt's Job was made (written once a step)."""
        s, job, attempt, state = p.item, p.job, p.attempt, p.state
        failpoints.hit("after-job-created")
        restarted = attempt > s.attempts and s.attempts > 0
        transition(log, "job", {"batch": batch.name, "item": s.item.id, "attempt": attempt,
                                "from": str(s.state) if attempt == s.attempts else "",
                                "to": str(state), "job": job.name,
                                "reason": "restart" if restarted else "created",
                                "commit": batch.source_revision})
        s.attempts, s.job_name, s.state = attempt, job.name, state
        if restarted:
            s.message, s.started_at, s.finished_at = "", None, None
            self.store.add_event(Event(batch.name, time.time(), "Restarted",
                                       f"{s.item.id}: attempt {attempt}",
                                       batch.source_revision))
        ctx.dirty_items[s.item.id] = s
        ctx.progressed = True

    def _storage_dir(self, profile: Profile, ctx: PassContext) -> Path:
        """The profile's storage dir, checked once a pass to lie inside the storage root
        (validation refuses a bad storage.path in Git; this also covers links and profiles
        stored before that check existed)."""
        if profile.storage not in ctx.storage_dirs:
            path = self.storage_root / profile.storage
            problem = storage_path_problem(profile.storage)
            root, resolved = self.storage_root.resolve(), path.resolve()
            if problem is None and root != resolved and root not in resolved.parents:
                problem = "leads outside the storage root through a symbolic link"
            if problem is not None:
                raise StorageOutsideRoot(f'profile "{profile.name}": storage.path'
                                         f" {profile.storage!r} {problem}")
            ctx.storage_dirs[profile.storage] = path
        return ctx.storage_dirs[profile.storage]

    # --- reporting
    def _report_file_error(self, batch: Batch, status: BatchStatus, ctx: PassContext) -> None:
        """One email per commit to the depositor of a file that never parsed, when their
        address can be read (control.fileerrors)."""
        spec, profile = fileerrors.depositor_of(ctx.git_dir, batch, ctx.repo.profiles)
        if spec is None:
            fileerrors.mark_told(self.store, batch, time.time(), "the file never parsed and"
                                 " no depositor address can be read in it: nobody was emailed")
            return
        status.report_round += 1
        view = copy.copy(batch)
        view.status = status
        report = build_report(view, spec, [], profile, kind="file-error",
                              round_=status.report_round, previous={},
                              message_id_domain=self._message_id_domain(),
                              site_url=self.site_url)
        self.store.save_report(report)
        fileerrors.mark_told(self.store, batch, time.time(), f"report queued for email"
                             f" ({report.subject})" if report.emailed else "report kept")
        ctx.progressed = True

    def _report(self, batch: Batch, spec: BatchSpec, profile: Profile, status: BatchStatus,
                items: list[ItemStatus], ctx: PassContext) -> Move:
        """Save the report of this round (emailed unless suppressed or unchanged); the
        batch then moves to Completed or Failed."""
        kind = ("manifest-error" if status.manifest_error
                else "update" if status.state == B.UPDATE_REPORTING else "initial")
        view = copy.copy(batch)
        view.status = status
        earlier = [r for r in self.store.list_reports(batch.name)
                   if r.id != report_id(batch, status.report_round)]
        previous = earlier[-1].job_states if earlier else {}
        report = build_report(view, spec, items, profile, kind=kind,
                              round_=status.report_round, previous=previous,
                              message_id_domain=self._message_id_domain(),
                              site_url=self.site_url)
        if self.store.save_report(report):
            ctx.progressed = True
            failpoints.hit("after-report-saved")
        ok = kind != "manifest-error" and all(s.state == J.COMPLETED for s in items)
        status.finished_at = time.time()
        why = (f"report queued for email ({report.subject})" if report.emailed
               else "no change since the last report: no email" if kind == "update"
               else "report kept (email suppressed)")
        status.message = (status.manifest_error and f"manifest error: {status.manifest_error}") \
            or why
        return Move(B.COMPLETED if ok else B.FAILED, why)

    # --- deletion
    def _delete(self, batch: Batch, revision: str, ctx: PassContext) -> None:
        self.store.delete_jobs(batch.name)  # running ones are stopped, as on Kubernetes
        self.downloads.discard(batch.name)
        if batch.spec is None:
            self.store.remove_batch(batch.name)
        elif batch.status.state != B.DELETED:
            status = _copy_status(batch.status)
            status.deleted_at = time.time()
            self._move(batch, status, B.DELETED, deletion_reason(self.store, batch.name),
                       revision)
            for type_ in ("ReconcileError", "Stalled"):  # nothing waits on a deleted batch
                self._flag(status, type_, False, "", "")
            self._show_readiness(status)
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
            transition(log, "batch", {"batch": batch.name, "from": str(old), "to": str(target),
                                      "reason": why, "commit": revision or batch.source_revision})

    def _flag(self, status: BatchStatus, type_: str, value: bool, reason: str,
              message: str) -> None:
        """A condition that is shown once it is true: never added only to say False."""
        if value or any(c.type == type_ for c in status.conditions):
            self._set_condition(status, type_, value, reason if value else "Resolved", message)

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


def _unfinished_in(counts: dict[str, int]) -> int:
    """Of item counts by state, the items whose job is not terminal."""
    return sum(n for state, n in counts.items() if state not in JOB_TERMINAL)


def _copy_status(status: BatchStatus) -> BatchStatus:
    """A copy the step may change, sharing nothing mutable with `status`: what
    copy.deepcopy gave, without its memo walk (a sixth of a pass's CPU at 1,000 batches)."""
    out = copy.copy(status)
    out.conditions = [copy.copy(c) for c in status.conditions]
    out.counts = dict(status.counts)
    out.failures = [dict(f) for f in status.failures]
    return out


def _ready_shown(status: BatchStatus) -> bool:
    """Does the Ready condition agree with the state (True only when Completed)? A status
    written before that rule (Ready True on a Failed batch) is rewritten once."""
    shown = next((c for c in status.conditions if c.type == "Ready"), None)
    return shown is not None and shown.status == (status.state == B.COMPLETED)


def _shows(status: BatchStatus, type_: str) -> bool:
    return any(c.type == type_ and c.status for c in status.conditions)


def _step_must_be_durable(batch: Batch, deletions: dict[str, str]) -> bool:
    """Does this step's commit need its own fsync? Every step does but the most common
    ones: a Processing batch, neither held nor being deleted, observing its Jobs and making
    the next ones, and a Pending one that waits in the queue or is admitted. Such a step
    saves no report (a report is saved by a step that starts in Reporting or
    UpdateReporting, or for a file that never parsed), stops no Job and suspends none; if
    a power loss undoes it, the next step makes the same writes again and adopts by their
    fixed names the Jobs it had made, whose results the runner reads from their job dirs.
    Its fsync was 0.3 ms (3 ms at p99) of the loop's wall time a step at 1,000 batches of
    10, a sixth of the run; the admissions' were 0.9 s of a 30 s run, during which no
    freed slot got its next job."""
    return not (batch.status.state in (B.PENDING, B.PROCESSING) and batch.spec is not None
                and batch.spec.state != R.HELD and batch.name not in deletions)


def _waits_for_job(batch: Batch, wanted: set[str], requeued: Collection[str]) -> bool:
    """A Processing batch whose items are loaded and none of whose jobs changed has
    nothing to do: each item without a job either got one in an earlier step or made the
    batch wait for room (`requeued`, stepped only while the pass has room left, as is a
    batch just admitted, whose admission made none), and an item that needs a new job
    gets one only through a change of its job (it failed, it vanished: in `wanted`) or of
    the spec (a sync: the next pass is full). One just admitted loads its items (or
    starts its manifest's download) at once, so that its jobs can start as soon as there
    is room."""
    return (waits_on_its_jobs(batch)
            and batch.name not in wanted and batch.name not in requeued)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StorageOutsideRoot(RuntimeError):
    """A profile's storage.path would leave the storage root: no job is created for it."""


def _withhold_credentials(items: list[Item]) -> tuple[list[Item], dict[str, str]]:
    """The items as they may be stored and shown (userinfo as ***), and the userinfo by
    item id, which only the backend's job credentials ever hold. The URLs of one object
    share one userinfo (`resolve_items` refuses an object whose URLs differ in it)."""
    shown: list[Item] = []
    credentials: dict[str, str] = {}

    def hide(url: str, item_id: str) -> str:
        shown_url, userinfo = split_userinfo(url)
        if userinfo is not None:
            credentials[item_id] = userinfo
        return shown_url

    for item in items:
        if not any("@" in url for url in (item.url, *item.file_urls())):
            shown.append(item)  # no userinfo: nothing to hide (most items)
            continue
        item = dataclasses.replace(
            item, url=hide(item.url, item.id),
            files=tuple(dataclasses.replace(f, url=hide(f.url, item.id)) for f in item.files),
            container=item.container and dataclasses.replace(
                item.container, url=hide(item.container.url, item.id)))
        shown.append(item)
    return shown, credentials
