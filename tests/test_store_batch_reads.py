"""Listing the batches of one state reads those batches, not every batch in the store.

Each pass lists the active batches (`page_batches(state=...)`, with its count): at 1,000
batches of which 10 are active it read all 1,000 rows twice (1 ms per call) before the
`batches_by_state` index. Measured in SQLite's own virtual-machine steps (deterministic,
unlike time): the cost with 2,000 batches is that with 20, give or take a little.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from reconciler.domain.model import BatchStatus
from reconciler.domain.states import BatchState
from reconciler.store.local.sqlite import SqliteStore
from tests.test_store_contract import apply, spec


def vm_steps(db: sqlite3.Connection, read: Callable[[], object]) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        read()
    finally:
        db.set_progress_handler(None, 1)
    return steps


def store_with(tmp_path: Path, batches: int, active: int) -> SqliteStore:
    store = SqliteStore(tmp_path / f"{batches}.db")
    with store.transaction():
        for n in range(batches):
            b = apply(store, f"b{n:05d}", spec("i"))
            state = BatchState.PROCESSING if n < active else BatchState.COMPLETED
            store.update_status(b.name, b.status, BatchStatus(state=state))
    return store


def test_listing_the_active_batches_costs_what_they_are_not_the_store(tmp_path: Path) -> None:
    small, big = store_with(tmp_path, 20, 3), store_with(tmp_path, 2_000, 3)
    try:
        costs = []
        for store in (small, big):
            page = store.page_batches(state="Processing", limit=10)
            assert page.total == 3 and len(page.rows) == 3
            costs.append(vm_steps(store.db, lambda: store.page_batches(  # noqa: B023
                state="Processing", limit=10)))
        assert costs[1] < 1.5 * costs[0], costs  # before: 48 times as many
    finally:
        small.close()
        big.close()
