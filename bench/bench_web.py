"""Benchmark: server time of the status site's two heavy pages on the embedded default.

Fills a SqliteStore directly (no reconciler): 1,000 batches of 10 items in every state,
with events and a report each, plus one finished batch of 10,000 inline items with two
reports (the initial one and an update after a restart). Then times, with Flask's test
client (no network, so the figure is the server's work: store reads, view code,
templates), the list page `/`, the 10,000-item batch's page `/batches/big`, and a few
neighbours (a later page of jobs, a filtered page, the JSON API, /metrics).

Each request opens a new store, as the site does in production (one SQLite connection
per request, parsed batch specs shared through `reconciler.store.backends.store_factory`); the
same two pages are then timed with a plain `SqliteStore` per request, for comparison.
Prints JSON: median and p95 in milliseconds per route; exits 1 if the list or the
10,000-item page takes 200 ms or more (median).
Run: `python bench/bench_web.py [--batches 1000] [--items 10000] [--requests 30]`;
figures in bench/README.md.

`--http`: the same filled store served over real HTTP on 127.0.0.1 by `batchq web` as
deployed (gunicorn, `--workers`) and by the werkzeug server (`--server werkzeug`), both
up in the same run; for each of `/`, `/api/batches` and `/batches/big` and each number of
concurrent clients (1, 8, 32: threads, each with its own keep-alive `http.client`
connection), each server is driven for `--seconds` after a one-second warm-up, in two
halves ordered gunicorn, werkzeug, werkzeug, gunicorn (a drift in load falls on both).
Prints JSON: requests/s, p50 and p99 in milliseconds, errors (a status other than 200 or
a failed connection), the servers' CPU time per request (from /proc, master and workers),
the load average around each measurement, and gunicorn's requests/s over werkzeug's.
Run: `python bench/bench_web.py --http [--seconds 8] [--clients 1,8,32] [--workers N]`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from reconciler.domain.model import BatchStatus, Item, Report
from reconciler.domain.states import BatchState, JobState
from reconciler.store.backends import BackendSettings, local_db_path, store_factory
from reconciler.store.base import Event, SyncState
from reconciler.store.local.sqlite import SqliteStore
from web.app import create_app
from web.server import default_workers

STATES = [BatchState.COMPLETED, BatchState.FAILED, BatchState.PROCESSING,
          BatchState.PENDING, BatchState.HELD, BatchState.DELETED]


def rev(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def item_doc(batch: str, i: int) -> dict[str, Any]:
    return {"id": f"item-{i:05d}", "url": f"https://repo.example.org/{batch}/item-{i:05d}.tif",
            "title": f"Map of somewhere, sheet {i}", "size": 48213 + i,
            "digest": {"algorithm": "sha256", "value": hashlib.sha256(str(i).encode()).hexdigest()}}


def spec_doc(batch: str, items: int) -> dict[str, Any]:
    return {"profile": "demo", "depositor": {"name": "Jane Depositor", "email": "jane@example.org"},
            "manifest": {"items": [item_doc(batch, i) for i in range(items)]}}


def add_batch(store: SqliteStore, name: str, n_items: int, state: BatchState, seed: int,
              now: float) -> None:
    revision = rev(seed)
    store.apply_spec(name, spec_doc(name, n_items), source_path=f"batches/{name}.yaml",
                     revision=revision, committed_at=now - 86400, error="")
    items = [Item.from_dict(item_doc(name, i)) for i in range(n_items)]
    store.set_items(name, items)
    statuses = store.list_items(name)
    failed_every = 997 if n_items > 100 else 7
    for k, s in enumerate(statuses):
        s.attempts = 1
        s.job_name = f"{name}-{s.item.id}-1"
        s.started_at = now - 3600 + k * 0.01
        if state in (BatchState.PENDING, BatchState.HELD):
            s.attempts, s.job_name, s.started_at = 0, None, None
        elif state == BatchState.PROCESSING and k % 3 == 0:
            s.state = JobState.PROCESSING
        elif state in (BatchState.FAILED, BatchState.DELETED) and k % failed_every == 3:
            s.state, s.message = JobState.FAILED, "digest mismatch: expected sha256 9f86d0…"
            s.finished_at = now - 1800
        else:
            s.state, s.finished_at = JobState.COMPLETED, now - 1800
    store.update_items(name, statuses)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[str(s.state)] = counts.get(str(s.state), 0) + 1
    old = store.get_batch(name)
    assert old is not None
    status = BatchStatus(state=state, observed_generation=1, message=f"{state} for the bench",
                         started_at=now - 3600, items_loaded=True, item_count=n_items,
                         counts=counts, report_round=1 if state in (
                             BatchState.COMPLETED, BatchState.FAILED) else 0)
    store.update_status(name, old.status, status)
    for reason in ("SpecApplied", "Processing", "Reporting", str(state)):
        store.add_event(Event(name, now - 3000, reason, f"{reason} of {name}", revision))
    if status.report_round:
        job_states = {s.item.id: str(s.state) for s in statuses}
        body = "\n".join(f"{s.item.id}  {s.state}  1  {s.item.title}" for s in statuses[:500])
        store.save_report(Report(f"{name}:1", name, "initial", now - 1700,
                                 f"Ingest: OK -- Submission Processed: {name}",
                                 ("jane@example.org",), body, (), job_states, True,
                                 b"Subject: x\r\n\r\nx"))
        if n_items > 100:  # an update after a restart of the failed items
            later = dict(job_states)
            changed = [k for k, v in later.items() if v == "Failed"]
            later.update(dict.fromkeys(changed, "Completed"))
            store.save_report(Report(f"{name}:2", name, "update", now - 600,
                                     f"Ingest: OK -- Submission Updated: {name}",
                                     ("jane@example.org",), body, tuple(changed), later, True,
                                     b"Subject: y\r\n\r\ny"))


def fill(path: Path, batches: int, big_items: int) -> None:
    store = SqliteStore(path)
    now = time.time()
    store.db.execute("PRAGMA synchronous=OFF")  # filling only; the site reads
    for b in range(batches):
        add_batch(store, f"bench-{b:04d}", 10, STATES[b % len(STATES)], b, now - b)
    add_batch(store, "big", big_items, BatchState.FAILED, 10**6, now)
    store.save_sync_state(SyncState(synced_commit=rev(0)))
    store.close()


def timed(client: Any, url: str, n: int) -> dict[str, Any]:
    client.get(url)  # warm: first template compile
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (url, resp.status_code)
        size = len(resp.data)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1),
            "bytes": size}


HTTP_ROUTES = ("/", "/api/batches", "/batches/big")


def start_site(state: Path, server: str, workers: int,
               log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`batchq web` in a process of its own on a free loopback port, once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "reconciler", "web", "--state", str(state),
           "--listen", f"127.0.0.1:{port}", "--server", server]
    if server == "gunicorn":
        cmd += ["--workers", str(workers)]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/livez")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{server} did not start:\n{log.read_text()}")
        time.sleep(0.1)


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a server and its worker processes, from
    /proc: a figure the machine's other load does not change, unlike requests/s."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def drive(port: int, path: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads, each a keep-alive connection sending GET `path` back to back for
    `seconds`; http.client reconnects when the server closes a connection. Returns the
    latencies (seconds), the errors and the time it took."""
    times: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    ready = threading.Barrier(clients + 1)
    bounds: dict[str, float] = {}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        ready.wait()
        deadline = bounds["deadline"]
        while (t0 := time.perf_counter()) < deadline:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
            if ok:
                times[k].append(time.perf_counter() - t0)
            else:
                errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    bounds["deadline"] = start + seconds
    ready.wait()
    for t in threads:
        t.join()
    return {"latencies": [x for per in times for x in per], "errors": sum(errors),
            "elapsed": time.perf_counter() - start,
            "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def summary(clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests/s over the runs' total time; p50 and p99 of all their latencies."""
    done = sorted(x * 1000 for run in runs for x in run["latencies"])
    elapsed = sum(run["elapsed"] for run in runs)

    def pct(q: float) -> float:
        return round(done[min(len(done) - 1, int(q * len(done)))], 1) if done else float("nan")

    return {"clients": clients, "requests": len(done),
            "errors": sum(run["errors"] for run in runs),
            "rps": round(len(done) / elapsed, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "cpu_ms_per_request": round(1000 * sum(run["cpu"] for run in runs) / len(done), 1)
            if done else None,
            "loadavg_1min": [x for run in runs for x in run["loadavg_1min"]]}


def http_main(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    """Both servers up on the same store; each (route, clients) measured in two halves,
    gunicorn, werkzeug, werkzeug, gunicorn, so that a change in the machine's load during
    the measurement falls on both alike."""
    levels = [int(x) for x in args.clients.split(",")]
    servers = {name: start_site(state, name, args.workers, state / f"{name}.log")
               for name in ("gunicorn", "werkzeug")}
    results: dict[str, Any] = {}
    try:
        for path in HTTP_ROUTES:
            for _, port in servers.values():  # warm: templates, each worker's parsed specs
                drive(port, path, max(levels), 1.0)
            for clients in levels:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
                for name in ("gunicorn", "werkzeug", "werkzeug", "gunicorn"):
                    proc, port = servers[name]
                    before = server_cpu(proc.pid)
                    run = drive(port, path, clients, args.seconds / 2)
                    run["cpu"] = server_cpu(proc.pid) - before
                    runs[name].append(run)
                row: dict[str, Any] = {name: summary(clients, got) for name, got in runs.items()}
                row["ratio_rps"] = round(row["gunicorn"]["rps"] / row["werkzeug"]["rps"], 2) \
                    if row["werkzeug"]["rps"] else None
                results[f"{path} x{clients}"] = row
                print(json.dumps({f"{path} x{clients}": row}), file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--http", action="store_true",
                    help="over real HTTP: gunicorn against werkzeug (see the docstring)")
    ap.add_argument("--seconds", type=float, default=8.0, help="--http: per measurement")
    ap.add_argument("--clients", default="1,8,32", help="--http: concurrent clients")
    ap.add_argument("--workers", type=int, default=default_workers(),
                    help="--http: gunicorn's worker processes (default: batchq web's)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        db = local_db_path(state)
        t0 = time.monotonic()
        fill(db, args.batches, args.items)
        filled = time.monotonic() - t0
        (state / "heartbeat.json").write_text(json.dumps(
            {"lastSync": time.time(), "lastPass": time.time(), "passSeconds": 0.1,
             "interval": 10, "head": rev(0)}))
        load = os.getloadavg()
        if args.http:
            results = http_main(args, state)
            print(json.dumps({
                "batches": args.batches + 1, "big_items": args.items,
                "seconds_per_measurement": args.seconds, "gunicorn_workers": args.workers,
                "gunicorn_threads": 4, "fill_seconds": round(filled, 1),
                "python": platform.python_version(), "cpus": os.cpu_count(),
                "loadavg_at_start": [round(x, 2) for x in load], "results": results},
                indent=2))
            return
        app = create_app({"STORE_FACTORY": store_factory(BackendSettings(state_dir=state))[0],
                          "STATE_DIR": state})
        client = app.test_client()
        routes = {
            "list /": "/",
            "list, page 20": "/?page=20",
            "list, state=Failed": "/?state=Failed",
            "detail /batches/big": "/batches/big",
            "detail, last page of jobs": "/batches/big?page=10000",
            "detail, state=Failed": "/batches/big?state=Failed",
            "detail, search": "/batches/big?q=sheet+9999",
            "api /api/batches": "/api/batches",
            "api /api/batches/big": "/api/batches/big",
            "/metrics": "/metrics",
        }
        results = {label: timed(client, url, args.requests) for label, url in routes.items()}
        # the same two pages with a plain SqliteStore per request, whose parsed-spec cache
        # dies with it: every request parses the 10,000-item spec again
        plain = create_app({"STORE_FACTORY": lambda: SqliteStore(db), "STATE_DIR": state})
        without_cache = {label: timed(plain.test_client(), url, args.requests)
                         for label, url in (("list /", "/"),
                                            ("detail /batches/big", "/batches/big"))}
    print(json.dumps({
        "batches": args.batches + 1, "big_items": args.items, "requests": args.requests,
        "fill_seconds": round(filled, 1), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load], "results": results,
        "plain_store_per_request": without_cache}, indent=2))
    slow = [k for k in ("list /", "detail /batches/big") if results[k]["median_ms"] >= 200]
    if slow:
        print(f"over the 200 ms goal: {slow}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
