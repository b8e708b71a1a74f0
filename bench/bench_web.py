"""Benchmark: server time of the list page (1,000 batches) and of a 10,000-item batch's page.

Fills a SqliteStore directly (no reconciler needed), then times requests through Flask's
test client, which includes routing, store reads and template rendering but no network.
Run: `python bench/bench_web.py`; figures in bench/README.md.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from reconciler.model import BatchStatus, Item, ItemStatus
from reconciler.states import BatchState, JobState
from reconciler.store.local import SqliteStore
from web.app import create_app


def fill(store: SqliteStore) -> None:
    spec = {"profile": "p", "depositor": {"name": "D", "email": "d@example.org"},
            "manifest": {"url": "http://h/m.checkm"}}
    for n in range(1000):
        name = f"batch-{n:04d}"
        b = store.apply_spec(name, spec, source_path=f"batches/{name}.yaml", revision="r" * 40,
                             committed_at=float(n), error="")
        status = BatchStatus(state=BatchState.COMPLETED if n % 3 else BatchState.PROCESSING,
                             item_count=10, counts={"Completed": 8, "Failed": 2})
        store.update_status(name, b.status, status)
    big = store.apply_spec("big", spec, source_path="batches/big.yaml", revision="r" * 40,
                           committed_at=2000.0, error="")
    items = [Item(id=f"item-{i:05d}", url=f"http://h/{i}", title=f"Title {i}")
             for i in range(10_000)]
    store.set_items("big", items)
    store.update_items("big", [ItemStatus(item=it, seq=i, state=JobState.COMPLETED,
                                          attempts=1) for i, it in enumerate(items)])
    store.update_status("big", big.status, BatchStatus(state=BatchState.PROCESSING,
                                                      item_count=10_000,
                                                      counts={"Completed": 10_000}))


def timed(client: object, path: str, n: int = 30) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        resp = client.get(path)  # type: ignore[attr-defined]
        samples.append((time.perf_counter() - t) * 1000)
        assert resp.status_code == 200, path
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[int(0.95 * (n - 1))], 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "batchq.sqlite3"
        store = SqliteStore(db)
        fill(store)
        store.close()
        app = create_app({"STORE_FACTORY": lambda: SqliteStore(db), "STATE_DIR": Path(tmp)})
        client = app.test_client()
        result = {
            "list_1000_batches": timed(client, "/"),
            "list_page_20": timed(client, "/?page=20"),
            "detail_10000_items": timed(client, "/batches/big"),
            "detail_10000_items_page_50": timed(client, "/batches/big?page=50"),
            "detail_10000_items_search": timed(client, "/batches/big?q=item-0999"),
            "api_jobs_10000_items": timed(client, "/api/batches/big/jobs?page=3"),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
