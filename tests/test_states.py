"""Every row of the state tables, and what is not in them."""

from __future__ import annotations

import ast
import copy
import itertools
from pathlib import Path

import pytest

from reconciler.control.controller import (
    DECIDES,
    Controller,
    JobBudget,
    Move,
    PassContext,
    Turn,
)
from reconciler.domain.states import (
    BATCH_TRANSITIONS,
    JOB_TRANSITIONS,
    BatchState,
    IllegalTransition,
    JobState,
    RequestedState,
    batch_transition,
    job_observed,
    job_transition,
)
from reconciler.source.sync import RepoState
from tests.unit.memory_store import MemoryStore
from tests.unit.world import UnitWorld, batch_doc, profile_doc

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network


@pytest.mark.parametrize(("src", "dst"), sorted(BATCH_TRANSITIONS))
def test_every_batch_row_is_allowed(src: BatchState, dst: BatchState) -> None:
    assert batch_transition(src, dst) == dst


@pytest.mark.parametrize(("src", "dst"), sorted(JOB_TRANSITIONS))
def test_every_job_row_is_allowed(src: JobState, dst: JobState) -> None:
    assert job_transition(src, dst) == dst


ILLEGAL_BATCH = [
    (s, d) for s, d in itertools.product(BatchState, BatchState)
    if s != d and (s, d) not in BATCH_TRANSITIONS
]
ILLEGAL_JOB = [
    (s, d) for s, d in itertools.product(JobState, JobState)
    if s != d and (s, d) not in JOB_TRANSITIONS
]


@pytest.mark.parametrize(("src", "dst"), ILLEGAL_BATCH)
def test_batch_moves_outside_the_table_raise(src: BatchState, dst: BatchState) -> None:
    with pytest.raises(IllegalTransition, match=f"from {src} to {dst}"):
        batch_transition(src, dst)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL_JOB)
def test_job_moves_outside_the_table_raise(src: JobState, dst: JobState) -> None:
    with pytest.raises(IllegalTransition):
        job_transition(src, dst)


def test_the_seed_paths_are_in_the_table() -> None:
    """The diagrams' paths, from shared/seed, walk the table."""
    b = BatchState
    paths = [
        [b.PENDING, b.PROCESSING, b.REPORTING, b.COMPLETED],
        [b.PENDING, b.PROCESSING, b.REPORTING, b.FAILED, b.DELETED],
        [b.PENDING, b.PROCESSING, b.REPORTING, b.FAILED, b.UPDATE_REPORTING, b.COMPLETED],
        [b.PENDING, b.PROCESSING, b.REPORTING, b.FAILED, b.UPDATE_REPORTING, b.FAILED,
         b.DELETED],
    ]
    for path in paths:
        for src, dst in itertools.pairwise(path):
            batch_transition(src, dst)


def test_terminal_states_never_go_back() -> None:
    for dst in (BatchState.PENDING, BatchState.PROCESSING, BatchState.REPORTING):
        with pytest.raises(IllegalTransition):
            batch_transition(BatchState.COMPLETED, dst)
    with pytest.raises(IllegalTransition):
        batch_transition(BatchState.DELETED, BatchState.PENDING)


def test_observer_may_miss_steps_but_not_reverse() -> None:
    assert job_observed(JobState.HELD, JobState.PROCESSING) == JobState.PROCESSING
    assert job_observed(JobState.HELD, JobState.COMPLETED) == JobState.COMPLETED
    for src, dst in [(JobState.COMPLETED, JobState.PROCESSING),
                     (JobState.FAILED, JobState.COMPLETED),
                     (JobState.COMPLETED, JobState.PENDING)]:
        with pytest.raises(IllegalTransition):
            job_observed(src, dst)


def test_an_attempt_whose_processes_died_waits_to_run_again() -> None:
    """The local runner's re-run of an attempt left without a result, as the Job
    controller's new pod of the same Job: a row of the table, seen by the observer too."""
    assert job_transition(JobState.PROCESSING, JobState.PENDING) == JobState.PENDING
    assert job_observed(JobState.PROCESSING, JobState.PENDING) == JobState.PENDING


def test_every_move_a_state_handler_may_choose_is_a_row_of_the_table() -> None:
    """The controller's decision table, as data: each state's handler chooses only among
    DECIDES[state], and each of those is a legal move."""
    for state, targets in DECIDES.items():
        for target in targets:
            assert (state, target) in BATCH_TRANSITIONS, f"{state} -> {target}"


def test_every_batch_state_but_deleted_has_a_handler_and_every_row_a_decider() -> None:
    """No state is left to an if/elif's fall-through, and no row of the table (but the
    deletion of a file, which `_delete` makes from any state) is a move nobody makes."""
    controller = Controller(MemoryStore(), storage_root=Path("/unit/storage"))
    handled = set(controller._decisions)
    assert handled == set(DECIDES) == set(BatchState) - {BatchState.DELETED}
    decided = {(s, t) for s, targets in DECIDES.items() for t in targets}
    deletions = {(s, t) for s, t in BATCH_TRANSITIONS if t is BatchState.DELETED}
    assert set(BATCH_TRANSITIONS) - deletions == decided


def test_a_move_its_handler_may_not_choose_raises_a_clear_error_and_writes_nothing() -> None:
    """A handler that chose a move outside DECIDES is a controller bug: an error that the
    per-batch back-off shows on the batch (never an assert, which `python -O` drops)."""
    w = UnitWorld()
    w.put({"profiles/test.yaml": profile_doc(), "batches/b.yaml": batch_doc("x")})
    batch = w.store.get_batch("b")
    assert batch is not None and batch.spec is not None
    status, events = copy.deepcopy(batch.status), w.store.list_events("b")
    turn = Turn(batch, batch.spec, None, status,
                PassContext(RepoState(), JobBudget(0), 0, None))
    with pytest.raises(IllegalTransition, match=r"the Pending handler chose a move to"
                       r" Completed, which DECIDES\[Pending\] does not list"):
        w.controller._decide(turn, BatchState.PENDING, Move(BatchState.COMPLETED, "bug"))
    assert status == batch.status and w.store.list_events("b") == events

# A state name spelled as a string literal outside states.py, allowed here only with why.
NAMES_ALLOWED = {
    # the batch/v1 Job condition type, not ours (JOB_FAILED)
    ("reconciler/store/kubernetes/jobs.py", "Failed"): 1,
}


def test_state_names_are_spelled_only_in_states_py() -> None:
    """Outside the tables a state is an enum member: a misspelt one is then an error at
    import time, not a comparison that is silently never true."""
    names = {str(s) for enum in (BatchState, JobState, RequestedState) for s in enum}
    root = Path(__file__).resolve().parents[1]
    found: dict[tuple[str, str], int] = {}
    for path in sorted([*root.joinpath("reconciler").rglob("*.py"),
                        *root.joinpath("web").rglob("*.py")]):
        rel = path.relative_to(root).as_posix()
        if rel == "reconciler/domain/states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Constant) and node.value in names:
                found[(rel, node.value)] = found.get((rel, node.value), 0) + 1
    assert found == NAMES_ALLOWED
