"""The controller's decisions as a table: a start state, an event, one pass, the outcome.

Each row puts batch `b` (items `x` and `y`) into a state the way it really gets there
(commits through `apply_sync`, controller passes, jobs moved by the in-memory cluster),
applies one event, runs ONE `reconcile_all` pass and checks the batch's state, the jobs
that pass created, the reports it saved and the emails it queued. A test runs every row
again and checks that together they exercise every row of both transition tables in
`reconciler/domain/states.py`, so a new transition cannot be added without a case.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from reconciler.domain.states import BATCH_TRANSITIONS, JOB_TRANSITIONS, BatchState, JobState
from tests.unit.world import Step, UnitWorld, batch_doc, profile_doc, queue_doc

B, J = BatchState, JobState
BATCH = "batches/b.yaml"
PROFILE = "profiles/test.yaml"
OK = "Ingest: OK -- Submission Processed: b"
FAIL = "Ingest: FAIL -- Submission Failed: b"
UPDATED_OK = "Ingest: OK -- Submission Updated: b"
UPDATED_FAIL = "Ingest: FAIL -- Submission Updated: b"
MANIFEST = "Ingest: FAIL -- Manifest Invalid: b"
BROKEN = "kind: Batch\nspec: [\n"


# --- how a batch gets into each start state (every one through real passes)


def empty(w: UnitWorld) -> None:
    """A repository with a profile and no batch yet."""
    w.put({PROFILE: profile_doc()})


def new(w: UnitWorld) -> None:
    """Batch b just committed, never reconciled."""
    w.put({PROFILE: profile_doc(), BATCH: batch_doc("x", "y")})


def queued(w: UnitWorld) -> None:
    """Pending, seen by the controller, waiting for a paused queue."""
    w.put({PROFILE: profile_doc(), "queue.yaml": queue_doc(paused=True),
           BATCH: batch_doc("x", "y")})
    w.step()


def held(w: UnitWorld) -> None:
    """Committed as Held: held before any job existed."""
    w.put({PROFILE: profile_doc(), BATCH: batch_doc("x", "y", state="Held")})
    w.step()


def admitted(w: UnitWorld) -> None:
    """Processing; the manifest is not read yet."""
    new(w)
    w.step()


def admitted_bad_manifest(w: UnitWorld) -> None:
    """Processing, with an item URL the profile does not allow."""
    doc = batch_doc("x")
    doc["spec"]["manifest"]["items"][0]["url"] = "https://elsewhere.example.org/x"
    w.put({PROFILE: profile_doc(), BATCH: doc})
    w.step()


def processing(w: UnitWorld) -> None:
    """Processing, a Pending job per item."""
    admitted(w)
    w.step()


def running(w: UnitWorld) -> None:
    """Processing, both jobs running (observed)."""
    processing(w)
    w.run_all(J.PROCESSING)
    w.step()


def x_running_y_failed(w: UnitWorld) -> None:
    processing(w)
    w.run("x", J.PROCESSING)
    w.run("y", J.FAILED, "digest mismatch")
    w.step()


def held_with_jobs(w: UnitWorld) -> None:
    """Held while x runs: y's job is suspended, x's goes on."""
    processing(w)
    w.run("x", J.PROCESSING)
    w.edit("b", state="Held")
    w.step()


def released(w: UnitWorld) -> None:
    """Held with jobs, then released and admitted again: y's job is resumed."""
    held_with_jobs(w)
    w.step()  # y's item observed Held
    w.edit("b", state="Active")
    w.step()  # Pending
    w.step()  # Processing, jobs resumed


def x_done_and_deleted(w: UnitWorld) -> None:
    """x completed, was observed, and an operator then deleted its Job."""
    running(w)
    w.run("x", J.COMPLETED)
    w.step()
    w.store.delete_job("b-x-1")


def reporting_ok(w: UnitWorld) -> None:
    processing(w)
    w.run_all(J.COMPLETED)
    w.step()


def reporting_failed(w: UnitWorld) -> None:
    processing(w)
    w.run("x", J.COMPLETED)
    w.run("y", J.FAILED, "digest mismatch")
    w.step()


def reporting_manifest(w: UnitWorld) -> None:
    admitted_bad_manifest(w)
    w.step()


def completed(w: UnitWorld) -> None:
    reporting_ok(w)
    w.step()


def failed(w: UnitWorld) -> None:
    """Failed: x completed, y failed, the report sent."""
    reporting_failed(w)
    w.step()


def restart_running(w: UnitWorld) -> None:
    """Failed, and y's restart (attempt 2) is waiting to run."""
    failed(w)
    w.edit("b", restarts={"y": 1})
    w.step()


def restarted_ok(w: UnitWorld) -> None:
    """Failed, and y's restart completed (the batch stays Failed)."""
    restart_running(w)
    w.run("y", J.COMPLETED)
    w.step()


def update_reporting(w: UnitWorld) -> None:
    """UpdateReporting with nothing changed since the first report."""
    failed(w)
    w.edit("b", state="UpdateReporting")
    w.step()


def update_reporting_changed(w: UnitWorld) -> None:
    """UpdateReporting after y's restart completed."""
    restarted_ok(w)
    w.edit("b", state="UpdateReporting")
    w.step()


def deleted(w: UnitWorld) -> None:
    processing(w)
    w.put({BATCH: None})
    w.step()


def deleted_no_retention(w: UnitWorld) -> None:
    processing(w)
    w.put({BATCH: None, "queue.yaml": queue_doc(deletedRetentionSeconds=0)})
    w.step()


def broken_new(w: UnitWorld) -> None:
    """A new file that never parsed: a placeholder batch without a spec."""
    w.put({PROFILE: profile_doc(), BATCH: BROKEN})
    w.step()


STARTS: dict[str, Callable[[UnitWorld], None]] = {f.__name__: f for f in (
    empty, new, queued, held, admitted, admitted_bad_manifest, processing, running,
    x_running_y_failed, held_with_jobs, released, x_done_and_deleted, reporting_ok,
    reporting_failed, reporting_manifest, completed, failed, restart_running, restarted_ok,
    update_reporting, update_reporting_changed, deleted, deleted_no_retention, broken_new)}


# --- events: what happens between two passes


def edit(**spec: object) -> Callable[[UnitWorld], None]:
    return lambda w: w.edit("b", **spec)


def commit(changes: dict[str, object]) -> Callable[[UnitWorld], None]:
    return lambda w: w.put(dict(changes))  # type: ignore[arg-type]


def run(*moves: tuple[str, JobState]) -> Callable[[UnitWorld], None]:
    def apply(w: UnitWorld) -> None:
        for item, state in moves:
            w.run(item, state, "digest mismatch" if state == J.FAILED else "")
    return apply


def nothing(w: UnitWorld) -> None:
    pass


EVENTS: dict[str, Callable[[UnitWorld], None]] = {
    "nothing": nothing,
    "jobs start": run(("x", J.PROCESSING), ("y", J.PROCESSING)),
    "all complete": run(("x", J.COMPLETED), ("y", J.COMPLETED)),
    "x completes, y fails": run(("x", J.COMPLETED), ("y", J.FAILED)),
    "x completes, y still running": run(("x", J.COMPLETED)),
    "x fails before it starts": run(("x", J.FAILED)),
    "x's processes die without a result": run(("x", J.PENDING)),
    "x's unfinished job deleted by an operator": lambda w: w.store.delete_job("b-x-1"),
    "y completes": run(("y", J.COMPLETED)),
    "Held": edit(state="Held"),
    "Active": edit(state="Active"),
    "restart y": edit(restarts={"y": 1}),
    "restart x": edit(restarts={"x": 1}),
    "UpdateReporting": edit(state="UpdateReporting"),
    "a new priority": edit(priority=3),
    "file deleted": commit({BATCH: None}),
    "file broken": commit({BATCH: BROKEN}),
    "file fixed": commit({BATCH: batch_doc("x", "y")}),
    "file added again": commit({BATCH: batch_doc("x", "y")}),
    "new file": commit({BATCH: batch_doc("x", "y")}),
    "new broken file": commit({BATCH: BROKEN}),
    "new file, profile missing": commit({BATCH: batch_doc("x", "y", profile="nope")}),
    "profile missing": edit(profile="nope"),
    "profile file deleted": commit({PROFILE: None}),
    "queue resumed": commit({"queue.yaml": queue_doc(paused=False)}),
    "email suppressed": commit({PROFILE: profile_doc(notification={"suppress": True})}),
    "one job at a time": commit({"queue.yaml": queue_doc(maxActiveJobs=1)}),
}


@dataclass(frozen=True)
class Case:
    start: str
    event: str
    state: BatchState | None  # after the pass; None: the batch is gone
    jobs: tuple[str, ...] = ()  # created by the pass
    reports: tuple[str, ...] = ()  # subjects of the reports the pass saved
    emailed: tuple[str, ...] = ()  # report ids the pass queued for email
    items: dict[str, str] = field(default_factory=dict)  # item states after the pass
    message: str = ""  # in the batch's status message
    invalid: bool | None = None  # the Invalid condition after the pass
    stalled: str = ""  # in the message of a Stalled condition that is True after the pass
    bug: str = ""  # a known controller bug: the row is expected to fail until it is fixed

    @property
    def id(self) -> str:
        return f"{self.start}: {self.event}"


CASES = [
    # Pending
    Case("new", "nothing", B.PROCESSING, message="admitted by the queue"),
    Case("new", "Held", B.HELD, message="held by admin"),
    Case("new", "file deleted", B.DELETED, message="batch file deleted"),
    Case("new", "file broken", B.PROCESSING, invalid=True),  # the last good spec runs
    Case("new", "profile missing", B.PROCESSING, invalid=True),
    Case("queued", "nothing", B.PENDING),
    Case("queued", "queue resumed", B.PROCESSING),
    Case("queued", "file deleted", B.DELETED),
    Case("empty", "new file", B.PROCESSING, invalid=False),  # admitted on first sight
    Case("empty", "new broken file", B.PENDING, invalid=True),
    Case("empty", "new file, profile missing", B.PENDING, invalid=True),
    Case("broken_new", "file fixed", B.PROCESSING, invalid=False),
    Case("broken_new", "file deleted", None),  # never valid: removed, not kept as Deleted
    # Held
    Case("held", "nothing", B.HELD),
    Case("held", "Active", B.PENDING, message="released by admin"),
    Case("held", "file deleted", B.DELETED),
    Case("held_with_jobs", "nothing", B.HELD, items={"x": "Processing", "y": "Held"}),
    Case("held_with_jobs", "x completes, y still running", B.HELD,
         items={"x": "Completed", "y": "Held"}),
    Case("released", "nothing", B.PROCESSING, items={"x": "Processing", "y": "Pending"}),
    # Processing
    Case("admitted", "nothing", B.PROCESSING, jobs=("b-x-1", "b-y-1"),
         items={"x": "Pending", "y": "Pending"}),
    Case("admitted", "one job at a time", B.PROCESSING, jobs=("b-x-1",)),
    Case("admitted", "Held", B.HELD),
    Case("admitted_bad_manifest", "nothing", B.REPORTING, message="manifest error: item 'x'"),
    Case("admitted", "profile file deleted", B.PROCESSING,
         stalled='profile "test" not found (expected profiles/test.yaml): no new job starts'),
    Case("processing", "jobs start", B.PROCESSING,
         items={"x": "Processing", "y": "Processing"}),
    Case("processing", "all complete", B.REPORTING, message="every job is terminal",
         items={"x": "Completed", "y": "Completed"}),
    Case("processing", "x fails before it starts", B.PROCESSING,
         items={"x": "Failed", "y": "Pending"}),
    Case("processing", "Held", B.HELD, items={"x": "Pending", "y": "Pending"}),
    Case("processing", "file deleted", B.DELETED),
    Case("processing", "file broken", B.PROCESSING, invalid=True),
    Case("processing", "profile missing", B.PROCESSING, invalid=True),
    Case("processing", "profile file deleted", B.PROCESSING,
         items={"x": "Pending", "y": "Pending"},
         stalled='profile "test" not found (expected profiles/test.yaml): no new job starts'),
    Case("running", "all complete", B.REPORTING, items={"x": "Completed", "y": "Completed"}),
    Case("running", "x completes, y fails", B.REPORTING,
         items={"x": "Completed", "y": "Failed"}),
    Case("running", "x completes, y still running", B.PROCESSING,
         items={"x": "Completed", "y": "Processing"}),
    Case("running", "Held", B.HELD),
    Case("running", "x's processes die without a result", B.PROCESSING,
         items={"x": "Pending", "y": "Processing"}),  # the same attempt waits to run again
    Case("running", "x's unfinished job deleted by an operator", B.PROCESSING, jobs=("b-x-1",),
         items={"x": "Pending", "y": "Processing"}),  # made again: the same attempt
    Case("x_running_y_failed", "restart y", B.PROCESSING, jobs=("b-y-2",),
         items={"x": "Processing", "y": "Pending"}),
    Case("x_done_and_deleted", "y completes", B.REPORTING,
         items={"x": "Completed", "y": "Completed"}),  # a vanished finished Job: not re-run
    # Reporting
    Case("reporting_ok", "nothing", B.COMPLETED, reports=(OK,), emailed=("b:1",),
         message=f"report queued for email ({OK})"),
    Case("reporting_failed", "nothing", B.FAILED, reports=(FAIL,), emailed=("b:1",)),
    Case("reporting_manifest", "nothing", B.FAILED, reports=(MANIFEST,), emailed=("b:1",),
         message="manifest error"),
    Case("reporting_ok", "email suppressed", B.COMPLETED, reports=(OK,),
         message="report kept (email suppressed)"),
    Case("reporting_ok", "file deleted", B.DELETED),
    # Completed
    Case("completed", "nothing", B.COMPLETED),
    Case("completed", "UpdateReporting", B.COMPLETED,
         message="UpdateReporting ignored: it applies to Failed batches"),
    Case("completed", "restart x", B.COMPLETED),  # nothing failed: nothing to restart
    Case("completed", "Held", B.COMPLETED),
    Case("completed", "file deleted", B.DELETED),
    # Failed
    Case("failed", "nothing", B.FAILED),
    Case("failed", "restart y", B.FAILED, jobs=("b-y-2",), items={"y": "Pending"}),
    Case("failed", "restart x", B.FAILED),  # x completed: no restart
    Case("restart_running", "nothing", B.FAILED),  # acted on once per generation
    Case("restart_running", "y completes", B.FAILED, items={"y": "Completed"}),
    Case("restart_running", "UpdateReporting", B.FAILED),  # waits for the running restart
    Case("restarted_ok", "a new priority", B.FAILED),  # the restart total is used up
    Case("failed", "UpdateReporting", B.UPDATE_REPORTING),
    Case("restarted_ok", "UpdateReporting", B.UPDATE_REPORTING),
    Case("failed", "file deleted", B.DELETED),
    # UpdateReporting
    Case("update_reporting", "nothing", B.FAILED, reports=(UPDATED_FAIL,),
         message="no change since the last report: no email"),
    Case("update_reporting_changed", "nothing", B.COMPLETED, reports=(UPDATED_OK,),
         emailed=("b:2",)),
    Case("update_reporting", "file deleted", B.DELETED),
    # Deleted
    Case("deleted", "nothing", B.DELETED),
    Case("deleted_no_retention", "nothing", None),
    Case("deleted", "file added again", B.PROCESSING),  # a new batch of the same name
]


def play(case: Case) -> tuple[UnitWorld, Step]:
    w = UnitWorld()
    STARTS[case.start](w)
    EVENTS[case.event](w)
    return w, w.step()


def check(case: Case, w: UnitWorld, step: Step) -> None:
    batch = w.store.get_batch("b")
    assert (batch.status.state if batch else None) == case.state
    assert step.jobs_created == list(case.jobs)
    assert [r.subject for r in step.reports] == list(case.reports)
    assert [e.report_id for e in step.outbox] == list(case.emailed)
    if batch is None:
        return
    assert case.message in batch.status.message
    assert {i: s for i, s in w.item_states().items() if i in case.items} == case.items
    if case.invalid is not None:
        invalid = next(c for c in batch.status.conditions if c.type == "Invalid")
        assert invalid.status is case.invalid
        assert (invalid.message == batch.spec_error) and bool(batch.spec_error) is case.invalid
    if case.stalled:
        stalled = next(c for c in batch.status.conditions if c.type == "Stalled")
        assert stalled.status is True and case.stalled in stalled.message
    for old, new in step.batch_moves:  # every move the pass made is a row of the table
        assert (old, new) in BATCH_TRANSITIONS


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.bug, strict=True)]
                 if c.bug else []) for c in CASES])
def test_one_pass(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    w, step = play(case)
    check(case, w, step)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "a pass must not fail on any batch"


@pytest.mark.parametrize("case", [c for c in CASES if not c.bug], ids=lambda c: c.id)
def test_reading_the_same_commit_again_changes_nothing(case: Case) -> None:
    """Level-triggered and idempotent (DESIGN §4): whatever state a batch is in, reading
    its commit again, whole, creates no job, repeats no restart and sends no email."""
    once, _ = play(case)
    twice = copy.deepcopy(once)
    twice.resync()
    once.settle()
    twice.settle()
    assert outcome(twice) == outcome(once)


def outcome(w: UnitWorld) -> tuple[object, ...]:
    batches = w.store.list_batches()
    return (
        [(b.name, b.generation, b.status.state, b.status.report_round) for b in batches],
        [j.name for j in w.store.list_jobs()],
        {b.name: [(s.item.id, s.state, s.attempts) for s in w.store.list_items(b.name)]
         for b in batches},
        [r.id for b in batches for r in w.store.list_reports(b.name)],
        [e.report_id for e in w.store.pending_outbox(float("inf"))],
    )


def test_every_transition_of_both_tables_has_a_case() -> None:
    batch_moves: set[tuple[BatchState, BatchState]] = set()
    item_moves: set[tuple[JobState, JobState]] = set()
    for case in CASES:
        if case.bug:
            continue
        _, step = play(case)  # only the pass the case checks counts, not its preparation
        batch_moves |= step.batch_moves
        item_moves |= step.item_moves
    assert set(BATCH_TRANSITIONS) - batch_moves == set()
    assert set(JOB_TRANSITIONS) - item_moves == set()
    assert batch_moves <= set(BATCH_TRANSITIONS)


def test_every_start_and_event_is_used() -> None:
    assert {c.start for c in CASES} == set(STARTS)
    assert {c.event for c in CASES} == set(EVENTS)
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("last", [J.PROCESSING, J.COMPLETED], ids=["goes-on", "reports"])
def test_a_processing_step_reads_the_item_counts_once_and_shows_them(last: JobState) -> None:
    """The handler reads the counts after its last item write, to know whether every job
    is terminal; the step shows those, not a second read (a count a step, not two)."""
    w = UnitWorld()
    running(w)
    w.run("x", J.COMPLETED)
    w.run("y", last)
    reads: list[str] = []
    count_items = w.store.count_items

    def counted(batch: str) -> dict[str, int]:
        reads.append(batch)
        return count_items(batch)

    w.store.count_items = counted  # type: ignore[method-assign]
    w.step()
    assert reads == ["b"]
    status = w.batch().status
    if last == J.PROCESSING:
        assert (status.state, status.counts) == (B.PROCESSING, {"Completed": 1,
                                                                "Processing": 1})
    else:
        assert (status.state, status.counts) == (B.REPORTING, {"Completed": 2})
