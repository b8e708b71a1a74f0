"""The embedded default store: one SQLite file under the state dir.

Each method is one transaction, so a reconciler killed at any point leaves either the
whole write or none of it. Writes that would not change a row are skipped, and every real
write is counted in `writes`, so a pass with nothing to do can be shown to write nothing.
The jobs table doubles as the local "cluster": `LocalRunner` starts and finishes the rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from reconciler.domain.model import Batch, BatchSpec, BatchStatus, Item, ItemStatus, Job, Report
from reconciler.domain.states import BatchState, JobState, job_transition
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
    new_uid,
)
from reconciler.store.codec import (
    canonical_json,
    status_from_dict,
    status_json,
    sync_state_from_meta,
    sync_state_writes,
)
from reconciler.support.jsontext import parse_json

# An item whose job has not finished: literal, so that the partial index below is used
UNFINISHED = "state IN ('Pending', 'Processing', 'Held')"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    name TEXT PRIMARY KEY, spec_json TEXT, generation INTEGER NOT NULL,
    source_path TEXT NOT NULL, source_revision TEXT NOT NULL, submitted_at REAL NOT NULL,
    status_json TEXT NOT NULL, state TEXT NOT NULL, spec_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL, uid TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS items (
    batch TEXT NOT NULL, item_id TEXT NOT NULL, seq INTEGER NOT NULL, item_json TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, message TEXT NOT NULL,
    job_name TEXT, started_at REAL, finished_at REAL, PRIMARY KEY (batch, item_id));
CREATE INDEX IF NOT EXISTS batches_by_source_path ON batches (source_path);
-- the pages and each pass list the batches of one state (the few active of thousands)
CREATE INDEX IF NOT EXISTS batches_by_state ON batches (state, updated_at);
CREATE INDEX IF NOT EXISTS items_by_seq ON items (batch, seq);
CREATE TABLE IF NOT EXISTS credentials (
    batch TEXT NOT NULL, item_id TEXT NOT NULL, userinfo TEXT NOT NULL,
    PRIMARY KEY (batch, item_id));
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, batch TEXT NOT NULL, item TEXT NOT NULL, attempt INTEGER NOT NULL,
    state TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', suspended INTEGER NOT NULL,
    spec_json TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    pid INTEGER, exit_code INTEGER);
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY, batch TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
    subject TEXT NOT NULL, recipients_json TEXT NOT NULL, body TEXT NOT NULL,
    changed_json TEXT NOT NULL, job_states_json TEXT NOT NULL, emailed INTEGER NOT NULL,
    message BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS reports_by_batch ON reports (batch, created_at);
CREATE TABLE IF NOT EXISTS outbox (
    report_id TEXT PRIMARY KEY, batch TEXT NOT NULL, message BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL DEFAULT 0, delivered_at REAL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, batch TEXT NOT NULL, at REAL NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, revision TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_batch ON events (batch, id);
"""
# What lets a step cost what changed, not the batch's size (issue 13): created after the
# columns they need (`_migrate`). Every change of a job the controller observes gets the
# next number of a sequence, by trigger, so no write path can forget it; a batch keeps the
# last number it observed (`batches.observed_job_change`, written in the step's
# transaction). Per-batch item counts are kept by triggers in the item writes' own
# transaction; the unfinished items and the failed ones are found through indexes.
INCREMENTAL = """
CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_change ON jobs (batch, changed);
CREATE INDEX IF NOT EXISTS items_by_state ON items (batch, state, seq);
CREATE INDEX IF NOT EXISTS items_unfinished ON items (batch, seq) WHERE {unfinished};
CREATE TRIGGER IF NOT EXISTS jobs_inserted AFTER INSERT ON jobs BEGIN
    {next}
    UPDATE jobs SET changed=(SELECT value FROM sequences WHERE name='job-change')
        WHERE rowid=NEW.rowid;
END;
CREATE TRIGGER IF NOT EXISTS jobs_updated
    AFTER UPDATE OF state, suspended, message, started_at, finished_at, attempt ON jobs
    WHEN OLD.state IS NOT NEW.state OR OLD.suspended IS NOT NEW.suspended
      OR OLD.message IS NOT NEW.message OR OLD.started_at IS NOT NEW.started_at
      OR OLD.finished_at IS NOT NEW.finished_at OR OLD.attempt IS NOT NEW.attempt BEGIN
    {next}
    UPDATE jobs SET changed=(SELECT value FROM sequences WHERE name='job-change')
        WHERE rowid=NEW.rowid;
END;
CREATE TABLE IF NOT EXISTS item_counts (
    batch TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (batch, state));
CREATE TRIGGER IF NOT EXISTS items_inserted AFTER INSERT ON items BEGIN
    INSERT INTO item_counts(batch, state, n) VALUES (NEW.batch, NEW.state, 1)
        ON CONFLICT(batch, state) DO UPDATE SET n=n+1;
END;
CREATE TRIGGER IF NOT EXISTS items_deleted AFTER DELETE ON items BEGIN
    UPDATE item_counts SET n=n-1 WHERE batch=OLD.batch AND state=OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS items_moved AFTER UPDATE OF state ON items
    WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE item_counts SET n=n-1 WHERE batch=OLD.batch AND state=OLD.state;
    INSERT INTO item_counts(batch, state, n) VALUES (NEW.batch, NEW.state, 1)
        ON CONFLICT(batch, state) DO UPDATE SET n=n+1;
END;
""".format(
    unfinished=UNFINISHED,
    next="INSERT INTO sequences(name, value) VALUES ('job-change', 1)"
            " ON CONFLICT(name) DO UPDATE SET value=value+1;",
)
# Columns added since the first release, with what fills them in an older file: per-recipient
# delivery (a JSON list of RecipientState) and when the entry was closed (an old row that was
# delivered was closed then).
OUTBOX_COLUMNS = {
    "recipients_json": ("TEXT NOT NULL DEFAULT '[]'", None),
    "finished_at": ("REAL", "UPDATE outbox SET finished_at=delivered_at"),
}


def _statements(script: str) -> Iterator[str]:
    """The statements of a script one by one (a trigger's body holds semicolons), to run
    inside a transaction of our own, which `executescript` would commit."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


# Parsed specs by their JSON, shared by every store of the process (the web site opens one
# per request): a spec is immutable, and a 10,000-item one takes ~200 ms to parse.
_SPECS: dict[str, BatchSpec] = {}
# ...and by (name, uid, generation), which names one spec for good (a new spec is a new
# generation, a batch made again a new uid), so a read of a batch does not fetch, hash and
# compare a megabyte of spec JSON: its columns without the spec are what is selected.
_SPEC_VERSIONS: dict[tuple[str, str, int], BatchSpec | None] = {}
_BATCH_COLUMNS = ("name, generation, source_path, source_revision, submitted_at, status_json,"
                  " spec_error, updated_at, uid")


@functools.lru_cache(maxsize=4096)
def _parsed_item(item_json: str) -> Item:
    """An item's stored JSON, parsed (an Item is frozen: one copy may be shared). A step
    reads the items of the jobs it observes, then of those it creates: at 1,000 batches
    of 10 each item was parsed about four times; the last 4,096 are kept."""
    return Item.from_dict(parse_json(item_json))


# how a status whose items are loaded says so (`batches_that_may_act`)
_ITEMS_LOADED = canonical_json({"items_loaded": True})[1:-1]


class SqliteStore:
    """The `local` backend's store (see module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._full = True  # the level the connection is at (`_sync_level`)
        self.db.executescript(SCHEMA)
        self._add_columns()
        self._migrate()
        self.writes = 0
        self.reads = 0  # item and job rows the controller's reads returned (tests, bench)
        self.batch_reads = 0  # batch rows read (tests: what a pass reads)
        self._depth = 0
        self.on_delete_jobs: Callable[[str], None] | None = None  # set by LocalRunner
        self._change_seen: int | None = None  # the job-change number the last pass saw
        self._deleted_from: set[str] = set()  # batches a Job of which delete_job deleted
        # batch -> the status object last read or written, and the text stored for it:
        # `update_status` compares with and guards on that text instead of encoding `old`
        # again (`_remember_status`)
        self._stored_status: dict[str, tuple[weakref.ref[BatchStatus], str]] = {}

    def close(self) -> None:
        self.db.close()

    def _add_columns(self) -> None:
        """Bring a state file written by an older release up to the current columns."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        missing = [name for name in OUTBOX_COLUMNS if name not in have]
        if not missing:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
            for name in missing:
                if name in have:  # another process added it while we waited
                    continue
                kind, fill = OUTBOX_COLUMNS[name]
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")
                if fill:
                    self.db.execute(fill)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        """Columns added since a state dir was created (rows made before keep '')."""
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(batches)")}
        if "uid" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # another process did it
                self.db.execute("ALTER TABLE batches ADD COLUMN uid TEXT NOT NULL DEFAULT ''")
        if "observed_job_change" not in columns:  # -1: the first step observes every job
            with contextlib.suppress(sqlite3.OperationalError):
                self.db.execute("ALTER TABLE batches ADD COLUMN observed_job_change INTEGER"
                                " NOT NULL DEFAULT -1")
        if "changed" not in {r["name"] for r in self.db.execute("PRAGMA table_info(jobs)")}:
            with contextlib.suppress(sqlite3.OperationalError):
                self.db.execute("ALTER TABLE jobs ADD COLUMN changed INTEGER NOT NULL DEFAULT 0")
        self._add_incremental()
        # the batches whose jobs changed since a pass (take_changed_batches)
        self.db.execute("CREATE INDEX IF NOT EXISTS jobs_by_any_change ON jobs (changed)")
        self._index_jobs_in_line()
        # the messages still waiting (pending_outbox, every pass): not a walk of every
        # message ever sent (finished_at is one of OUTBOX_COLUMNS, so made by now)
        self.db.execute("CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (next_attempt_at)"
                        " WHERE finished_at IS NULL")

    def _index_jobs_in_line(self) -> None:
        """The jobs of a state in the order they start (`jobs_to_start`, every round of
        the runner): read in index order up to the free slots, not sorted. It replaces
        the index on the state alone, and a batch's jobs are found through
        `jobs_by_change`, whose first column is the batch: each index a job's every
        write keeps up to date costs that write."""
        self.db.execute("CREATE INDEX IF NOT EXISTS jobs_in_line"
                        " ON jobs (state, suspended, created_at, name)")
        self.db.execute("DROP INDEX IF EXISTS jobs_by_state")
        self.db.execute("DROP INDEX IF EXISTS jobs_by_batch")

    def _add_incremental(self) -> None:
        """The indexes, triggers and counters of INCREMENTAL; the item counts of a file
        written before them are counted once, in the transaction that creates them."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name='items_moved'").fetchone():
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if not self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name='items_moved'").fetchone():
                for statement in _statements(INCREMENTAL):
                    self.db.execute(statement)
                self.db.execute("DELETE FROM item_counts")
                self.db.execute("INSERT INTO item_counts(batch, state, n)"
                                " SELECT batch, state, COUNT(*) FROM items GROUP BY batch, state")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _sync_level(self, full: bool) -> None:
        """Set the connection's synchronous level, outside any transaction, only when it
        changes: a run of rebuildable transactions (the runner's) switches it once, not
        twice each, and the next durable write switches it back first."""
        if self._full != full:
            self.db.execute("PRAGMA synchronous=FULL" if full else "PRAGMA synchronous=NORMAL")
            self._full = full

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction; outside any other, committed at synchronous=FULL when `durable`,
        else at NORMAL: in WAL mode such a commit survives the process being killed (the
        write is in the OS's hands); only a power loss before the next fsync'd commit can
        undo it. The level stays NORMAL after it until the next durable write
        (`_sync_level`). Inside another transaction it joins that one, at that one's
        safety (the level cannot change inside a transaction)."""
        if self._depth:  # inside an outer transaction: its commit covers this write
            yield self.db
            return
        self._sync_level(durable)
        self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1
        self.db.execute("COMMIT")

    def transaction(self, durable: bool = True) -> AbstractContextManager[Any]:
        """Everything written inside commits together (one fsync; none when not
        `durable`: see `Store.transaction`), or not at all."""
        return self._tx(durable)

    def rebuildable_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A transaction whose writes can be rebuilt from elsewhere if a power loss undoes
        them (the local runner's starts and exits: the job dirs and their `rc` files, read
        by its scan and by `_adopt`), committed without an fsync of its own."""
        return self.transaction(durable=False)

    def _execute_write(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A write statement; outside a transaction it commits on its own, at FULL (as
        every write not in a rebuildable transaction)."""
        if not self._depth:
            self._sync_level(True)
        return self.db.execute(sql, args)

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        cur = self._execute_write(sql, args)
        if cur.rowcount > 0:
            self.writes += 1
        return cur.rowcount

    # --- meta
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        if self.get_meta(key) != value:
            self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _meta_rows(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def load_sync_state(self) -> SyncState:
        return sync_state_from_meta(self._meta_rows())

    def save_sync_state(self, state: SyncState) -> None:
        for key, value in sync_state_writes(self._meta_rows(), state):
            self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- batches
    def _batch(self, row: sqlite3.Row) -> Batch:
        self.batch_reads += 1
        text = row["status_json"]
        status = status_from_dict(parse_json(text))
        self._remember_status(row["name"], status, text)
        return Batch(
            name=row["name"],
            spec=self._spec_of(row["name"], row["uid"], row["generation"]),
            generation=row["generation"],
            source_path=row["source_path"],
            source_revision=row["source_revision"],
            submitted_at=row["submitted_at"],
            status=status,
            spec_error=row["spec_error"],
            updated_at=row["updated_at"],
            uid=row["uid"],
        )

    def _spec_of(self, name: str, uid: str, generation: int) -> BatchSpec | None:
        """The spec of this generation of the batch, read and parsed once (a row written
        before batches had a uid is read by its JSON)."""
        key = (name, uid, generation)
        if uid and key in _SPEC_VERSIONS:
            return _SPEC_VERSIONS[key]
        row = self.db.execute("SELECT spec_json, uid, generation FROM batches WHERE name=?",
                              (name,)).fetchone()
        spec = self._spec(row["spec_json"] if row is not None else None)
        if uid and row is not None and (row["uid"], row["generation"]) == (uid, generation):
            if len(_SPEC_VERSIONS) > 10_000:
                _SPEC_VERSIONS.clear()
            _SPEC_VERSIONS[key] = spec
        return spec

    def _spec(self, spec_json: str | None) -> BatchSpec | None:
        """Parse a spec once: a 10,000-item spec is read on every pass otherwise."""
        if not spec_json:
            return None
        spec = _SPECS.get(spec_json)
        if spec is None:
            if len(_SPECS) > 10_000:
                _SPECS.clear()
            spec = _SPECS[spec_json] = BatchSpec.from_dict(parse_json(spec_json))
        return spec

    def list_batches(self) -> list[Batch]:
        rows = self.db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY name").fetchall()
        return [self._batch(r) for r in rows]

    def batches_at(self, paths: Collection[str]) -> list[Batch]:
        wanted, rows = sorted(set(paths)), []
        for start in range(0, len(wanted), 500):  # under SQLite's limit on parameters
            chunk = wanted[start:start + 500]
            rows += self.db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches"
                f" WHERE source_path IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
        return sorted((self._batch(r) for r in rows), key=lambda b: b.name)

    def page_batches(
        self, *, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page:
        """Newest activity first, for the page: one query for the rows, one for the total."""
        where, args = ("WHERE state=?", [state]) if state else ("", [])
        total = self.db.execute(f"SELECT COUNT(*) FROM batches {where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches {where}"
            " ORDER BY updated_at DESC, name LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return Page(total=int(total), rows=[self._batch(r) for r in rows])

    def batches_that_may_act(self, states: Collection[str]) -> list[Batch]:
        """By the `state` index; a Processing batch's loaded items are told by its status
        text, always written by `canonical_json` (a text written otherwise only makes the
        batch read, never left out: a quote inside a JSON string is escaped)."""
        wanted = sorted(set(states))
        rows = self.db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN ({','.join('?' * len(wanted))})"
            " AND NOT (state=? AND instr(status_json, ?) > 0)",
            [*wanted, BatchState.PROCESSING.value, _ITEMS_LOADED]).fetchall()
        return [self._batch(r) for r in rows]

    def count_batches(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def get_batch(self, name: str) -> Batch | None:
        row = self.db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE name=?",
                              (name,)).fetchone()
        return None if row is None else self._batch(row)

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
        with self._tx():
            row = self.db.execute("SELECT * FROM batches WHERE name=?", (name,)).fetchone()
            spec_json = canonical_json(spec) if spec is not None else None
            if row is None:
                self._write(
                    "INSERT INTO batches(name, spec_json, generation, source_path,"
                    " source_revision, submitted_at, status_json, state, spec_error,"
                    " updated_at, uid) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (name, spec_json, 1, source_path, revision, committed_at,
                     status_json(BatchStatus()),
                     BatchStatus().state.value, error, now, new_uid()),
                )
            else:
                new_spec = spec_json if spec_json is not None else row["spec_json"]
                changed = new_spec != row["spec_json"]
                generation = row["generation"] + (1 if changed else 0)
                new_rev = revision if (changed or spec_json is None) else row["source_revision"]
                if (
                    changed
                    or row["source_path"] != source_path
                    or row["spec_error"] != error
                    or row["source_revision"] != new_rev
                ):
                    self._write(
                        "UPDATE batches SET spec_json=?, generation=?, source_path=?,"
                        " source_revision=?, spec_error=?, updated_at=? WHERE name=?",
                        (new_spec, generation, source_path, new_rev, error, now, name),
                    )
        batch = self.get_batch(name)
        assert batch is not None
        return batch

    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None:
        """Write status only when it changed; `old` guards against a concurrent writer.
        When `old` is the very status this store last read or wrote for the batch, the
        text stored for it is `old`'s encoding, and is not made again."""
        new_json = status_json(new)
        stored = self._stored_status.get(name)
        old_json = (stored[1] if stored is not None and stored[0]() is old
                    else status_json(old))
        if new_json == old_json:
            return
        n = self._write(
            "UPDATE batches SET status_json=?, state=?, updated_at=? WHERE name=? AND"
            " status_json=?",
            (new_json, str(new.state), time.time(), name, old_json),
        )
        if n != 1:
            raise ConflictError(f"status of batch {name} changed under us")
        self._remember_status(name, new, new_json)

    def _remember_status(self, name: str, status: BatchStatus, text: str) -> None:
        """Keep `text` as the stored encoding of `status` while that object lives: a weak
        reference, whose end drops the entry (nothing is kept for a status its reader
        dropped, so thousands of settled batches cost nothing here)."""
        entries = self._stored_status

        def forget(ref: weakref.ref[BatchStatus]) -> None:
            if entries.get(name, (None, ""))[0] is ref:  # not one remembered since
                entries.pop(name, None)

        entries[name] = (weakref.ref(status, forget), text)

    def repair_drift(self) -> list[str]:
        """Nothing but this store writes its state: there is never drift to repair."""
        return []

    def remove_batch(self, name: str) -> None:
        """Forget a batch; its email not yet delivered stays in the outbox and goes out."""
        self._stored_status.pop(name, None)
        with self._tx():
            for table, col in (("items", "batch"), ("item_counts", "batch"),
                               ("credentials", "batch"), ("jobs", "batch"),
                               ("events", "batch"), ("reports", "batch"), ("batches", "name")):
                self._write(f"DELETE FROM {table} WHERE {col}=?", (name,))
            self._write("DELETE FROM outbox WHERE batch=? AND delivered_at IS NOT NULL",
                        (name,))

    # --- items
    def set_items(self, batch: str, items: list[Item]) -> None:
        with self._tx():
            for seq, item in enumerate(items):
                self._write(
                    "INSERT OR IGNORE INTO items(batch, item_id, seq, item_json, state,"
                    " attempts, message) VALUES (?,?,?,?,?,?,?)",
                    (batch, item.id, seq, canonical_json(item.to_dict()), JobState.PENDING.value, 0,
                     ""),
                )

    def _item(self, row: sqlite3.Row) -> ItemStatus:
        return ItemStatus(
            item=_parsed_item(row["item_json"]),
            seq=row["seq"],
            state=JobState(row["state"]),
            attempts=row["attempts"],
            message=row["message"],
            job_name=row["job_name"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    @staticmethod
    def _item_filter(batch: str, state: str | None, query: str | None) -> tuple[str, list[Any]]:
        sql = " WHERE batch=?"
        args: list[Any] = [batch]
        if state:
            sql += " AND state=?"
            args.append(state)
        if query:
            sql += " AND (item_id LIKE ? ESCAPE '\\' OR item_json LIKE ? ESCAPE '\\')"
            like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [like, like]
        return sql, args

    def list_items(
        self, batch: str, *, state: str | None = None, offset: int = 0, limit: int | None = None,
        query: str | None = None,
    ) -> list[ItemStatus]:
        where, args = self._item_filter(batch, state, query)
        sql = "SELECT * FROM items" + where + " ORDER BY seq LIMIT ? OFFSET ?"
        args += [-1 if limit is None else limit, offset]
        return self._read_items(sql, args)

    def total_items(self, batch: str, *, state: str | None = None,
                    query: str | None = None) -> int:
        where, args = self._item_filter(batch, state, query)
        return int(self.db.execute("SELECT COUNT(*) FROM items" + where, args).fetchone()[0])

    def count_items(self, batch: str) -> dict[str, int]:
        """From the counters the item triggers keep: a few rows, whatever the size."""
        rows = self.db.execute(
            "SELECT state, n FROM item_counts WHERE batch=? AND n>0 ORDER BY state", (batch,)
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _read_items(self, sql: str, args: Sequence[Any]) -> list[ItemStatus]:
        rows = self.db.execute(sql, args).fetchall()
        self.reads += len(rows)
        return [self._item(r) for r in rows]

    def items_of(self, batch: str, ids: Collection[str]) -> list[ItemStatus]:
        out: list[ItemStatus] = []
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), 500):  # within SQLite's limit of parameters
            part = wanted[start:start + 500]
            out += self._read_items(
                f"SELECT * FROM items WHERE batch=? AND item_id IN"
                f" ({', '.join('?' for _ in part)})", [batch, *part])
        return sorted(out, key=lambda s: s.seq)

    def items_needing_jobs(self, batch: str, limit: int | None) -> list[ItemStatus]:
        """Through the partial index of unfinished items, in seq order: those with a job
        (at most the running ones) are stepped over, the first `limit` without one read."""
        return self._read_items(
            f"SELECT * FROM items WHERE batch=? AND {UNFINISHED} AND (job_name IS NULL OR"
            " NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.name=items.job_name))"
            " ORDER BY seq LIMIT ?", (batch, -1 if limit is None else limit))

    def update_items(self, batch: str, items: list[ItemStatus]) -> None:
        """Only rows that differ are written (and counted)."""
        if not items:
            return
        with self._tx():
            for s in items:
                self._write(
                    "UPDATE items SET state=?, attempts=?, message=?, job_name=?, started_at=?,"
                    " finished_at=? WHERE batch=? AND item_id=? AND NOT (state IS ? AND"
                    " attempts IS ? AND message IS ? AND job_name IS ? AND started_at IS ? AND"
                    " finished_at IS ?)",
                    (str(s.state), s.attempts, s.message, s.job_name, s.started_at,
                     s.finished_at, batch, s.item.id, str(s.state), s.attempts, s.message,
                     s.job_name, s.started_at, s.finished_at),
                )

    def set_credentials(self, batch: str, credentials: dict[str, str]) -> None:
        """Item credentials in a table of their own, which nothing lists or shows; the
        runner copies one into its job's credentials file (mode 0600) when it starts."""
        with self._tx():
            for item_id, userinfo in credentials.items():
                self._write("INSERT OR REPLACE INTO credentials(batch, item_id, userinfo)"
                            " VALUES (?,?,?)", (batch, item_id, userinfo))

    # --- jobs
    def create_job(self, spec: JobSpec) -> bool:
        run: dict[str, Any] = {"command": list(spec.command), "env": spec.env}
        if spec.deadline_seconds:  # enforced by the runner from the job's first start
            run["activeDeadlineSeconds"] = spec.deadline_seconds
        # strings, and an integer if anything: no float for canonical_json to look for
        plain = isinstance(run.get("activeDeadlineSeconds", 0), int)
        spec_json = canonical_json(run, plain_floats=plain)
        state = (JobState.HELD if spec.suspended else JobState.PENDING).value
        n = self._write(
            "INSERT OR IGNORE INTO jobs(name, batch, item, attempt, state, suspended, spec_json,"
            " created_at) VALUES (?,?,?,?,?,?,?,?)",
            (spec.name, spec.batch, spec.item, spec.attempt, state, int(spec.suspended),
             spec_json, time.time()),
        )
        return n == 1

    def create_jobs(self, specs: Sequence[JobSpec]) -> JobsCreated:
        """Inserts are cheap here: one after another (inside the pass's transaction)."""
        return create_one_by_one(self.create_job, specs)

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            name=row["name"], batch=row["batch"], item=row["item"], attempt=row["attempt"],
            state=JobState(row["state"]), message=row["message"],
            suspended=bool(row["suspended"]), created_at=row["created_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
        )

    def list_jobs(self, batch: str | None = None) -> list[Job]:
        if batch is None:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY name").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE batch=? ORDER BY name", (batch,)
            ).fetchall()
        self.reads += len(rows)
        return [self._job(r) for r in rows]

    def changed_jobs(self, batch: str) -> JobChanges:
        """The batch's jobs whose change number is past the one it last observed, in one
        query (each step of a running batch asks). With none, the mark is -1, which
        `observed` records over nothing."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE batch=? AND changed>COALESCE((SELECT"
            " observed_job_change FROM batches WHERE name=?), -1) ORDER BY name",
            (batch, batch)).fetchall()
        self.reads += len(rows)
        return JobChanges([self._job(r) for r in rows],
                          max((int(r["changed"]) for r in rows), default=-1))

    def observed(self, batch: str, changes: JobChanges) -> None:
        """Written in the step's transaction, with the items it recorded: a kill before
        the commit leaves both unwritten, and the next step observes the jobs again."""
        self._write("UPDATE batches SET observed_job_change=? WHERE name=? AND"
                    " observed_job_change<?", (changes.mark, batch, changes.mark))

    def observed_made_jobs(self, batch: str) -> None:
        """When every change of the batch's jobs past its mark is one that the job's item
        already says (its name, attempt, state, message and times: the Jobs this step made
        and recorded), the mark moves past them; else it stays, and the next step observes
        them all. Then `take_changed_batches` leaves the batch out: at 1,000 batches of 10,
        a quarter of all steps only observed the Jobs the step before them had made."""
        self._write(
            "UPDATE batches SET observed_job_change=(SELECT MAX(changed) FROM jobs WHERE"
            " batch=?1) WHERE name=?1 AND (SELECT MAX(changed) FROM jobs WHERE batch=?1)"
            " > observed_job_change AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch=?1 AND"
            " changed>batches.observed_job_change AND NOT EXISTS (SELECT 1 FROM items WHERE"
            " items.batch=?1 AND items.item_id=jobs.item AND items.job_name=jobs.name AND"
            " items.attempts=jobs.attempt AND items.state=jobs.state AND"
            " items.message=jobs.message AND items.started_at IS jobs.started_at AND"
            " items.finished_at IS jobs.finished_at))", (batch,))

    def count_active_jobs(self) -> int:
        """Jobs made and not finished, not suspended: waiting to start (for a slot, if
        made ahead of one) or running; what the controller's budget counts."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?, ?) AND suspended=0",
            (JobState.PENDING.value, JobState.PROCESSING.value),
        ).fetchone()
        return int(row[0])

    def delete_jobs(self, batch: str) -> None:
        """Delete a batch's jobs; with a runner attached, running ones are stopped first."""
        if self.on_delete_jobs is not None:
            self.on_delete_jobs(batch)
        self._write("DELETE FROM jobs WHERE batch=?", (batch,))

    def delete_job(self, name: str) -> None:
        """What an operator's `kubectl delete job` is on the embedded backend; its batch
        is among the next `take_changed_batches` (a deleted row has no change number),
        so that the step that makes the Job again comes at once, as after a watch event."""
        deleted = self._execute_write("DELETE FROM jobs WHERE name=? RETURNING batch",
                                      (name,)).fetchall()
        if deleted:
            self.writes += 1
            self._deleted_from.add(str(deleted[0][0]))

    def set_suspended(self, batch: str, suspended: bool) -> None:
        """Suspend jobs that have not started (a running one goes on, as on Kubernetes)."""
        with self._tx():
            self._write(
                "UPDATE jobs SET suspended=? WHERE batch=? AND suspended<>? AND state IN"
                " (?, ?)",
                (int(suspended), batch, int(suspended), JobState.PENDING.value,
                 JobState.HELD.value),
            )
            old, new = ((JobState.PENDING, JobState.HELD) if suspended
                        else (JobState.HELD, JobState.PENDING))
            job_transition(old, new)  # the table says a job that has not started may wait
            self._write(
                "UPDATE jobs SET state=? WHERE batch=? AND state=?",
                (new.value, batch, old.value),
            )

    def take_changed_batches(self) -> set[str] | None:
        """The batches a job of which changed since the last call, read from the job-change
        numbers the triggers give every change (the runner's moves, a hold's suspension,
        a creation: no write path can forget one) and the batches `delete_job` deleted a
        Job of; None on the first call, which walks
        them all. The number seen is kept in memory: one reconciler owns the state dir.
        A change the batch has observed already is left out: the Jobs its step made and
        recorded (`observed_made_jobs`)."""
        row = self.db.execute("SELECT value FROM sequences WHERE name='job-change'").fetchone()
        now = int(row[0]) if row else 0
        seen, self._change_seen = self._change_seen, now
        deleted, self._deleted_from = self._deleted_from, set()
        if seen is None:
            return None
        return deleted | {r[0] for r in self.db.execute(
            "SELECT DISTINCT jobs.batch FROM jobs JOIN batches ON batches.name=jobs.batch"
            " WHERE changed>? AND changed<=? AND changed>batches.observed_job_change",
            (seen, now))}

    # --- local runner's view of the jobs table
    def jobs_in_state(self, state: JobState, limit: int = -1) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM jobs WHERE state=? AND suspended=0 ORDER BY created_at, name LIMIT ?",
            (state.value, limit),
        ).fetchall()

    def count_jobs_in_state(self, state: JobState) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM jobs WHERE state=? AND suspended=0",
                              (state.value,)).fetchone()
        return int(row[0])

    def jobs_to_start(self, slots: int) -> list[sqlite3.Row]:
        """The Pending jobs first in line for the slots of `slots` that the running jobs
        leave free, each with its item's credentials (`userinfo`, NULL for most), in one
        query: a start needs both, and the runner asks every round."""
        return self.db.execute(
            "SELECT jobs.*, credentials.userinfo FROM jobs LEFT JOIN credentials"
            " ON credentials.batch=jobs.batch AND credentials.item_id=jobs.item"
            " WHERE jobs.state=? AND jobs.suspended=0 ORDER BY jobs.created_at, jobs.name"
            " LIMIT max(0, ? - (SELECT COUNT(*) FROM jobs WHERE state=? AND suspended=0))",
            (JobState.PENDING.value, slots, JobState.PROCESSING.value)).fetchall()

    def _move_job(self, name: str, sources: tuple[JobState, ...], target: JobState,
                  columns: str = "", values: Sequence[object] = ()) -> None:
        """Move a job from one of `sources` to `target` (and set `columns`), each move
        checked against JOB_TRANSITIONS first: the runner writes no state the table
        forbids."""
        for source in sources:
            job_transition(source, target)
        marks = ", ".join("?" for _ in sources)
        moved = self._execute_write(
            f"UPDATE jobs SET state=?{columns} WHERE name=? AND state IN ({marks})"
            " RETURNING batch",
            (target.value, *values, name, *(s.value for s in sources)),
        ).fetchall()
        if moved:
            self.writes += 1

    def mark_job_started(self, name: str, pid: int | None) -> None:
        """Running as `pid`; the start time is the first start's, as a Job's startTime is,
        so a run of the same attempt after a crash keeps the deadline of the first."""
        self._move_job(name, (JobState.PENDING,), JobState.PROCESSING,
                       ", pid=?, started_at=COALESCE(started_at, ?)", (pid, time.time()))

    def mark_job_finished(self, name: str, exit_code: int, message: str) -> None:
        state = JobState.COMPLETED if exit_code == 0 else JobState.FAILED
        self._move_job(name, (JobState.PROCESSING,), state,
                       ", exit_code=?, message=?, finished_at=?",
                       (exit_code, message, time.time()))

    def mark_job_failed(self, name: str, message: str) -> None:
        """Failed without an exit code of its own (stopped at its deadline)."""
        self._move_job(name, (JobState.PENDING, JobState.PROCESSING), JobState.FAILED,
                       ", message=?, finished_at=?", (message, time.time()))

    def mark_job_lost(self, name: str) -> None:
        """Its processes died without a result (killed, a reboot): the same attempt waits
        to run again, as the Job controller starts a new pod of the same Job."""
        self._move_job(name, (JobState.PROCESSING,), JobState.PENDING, ", pid=NULL")

    # --- reports and outbox
    def save_report(self, report: Report) -> bool:
        """Save a report and, if it is to be emailed, queue it: both or neither."""
        with self._tx():
            n = self._write(
                "INSERT OR IGNORE INTO reports(id, batch, kind, created_at, subject,"
                " recipients_json, body, changed_json, job_states_json, emailed, message)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (report.id, report.batch, report.kind, report.created_at, report.subject,
                 json.dumps(list(report.recipients)), report.body,
                 json.dumps(list(report.changed)), canonical_json(report.job_states),
                 int(report.emailed), report.message),
            )
            if n == 1 and report.emailed:
                self._write(
                    "INSERT OR IGNORE INTO outbox(report_id, batch, message) VALUES (?,?,?)",
                    (report.id, report.batch, report.message),
                )
        return n == 1

    def list_reports(self, batch: str) -> list[Report]:
        rows = self.db.execute(
            "SELECT * FROM reports WHERE batch=? ORDER BY created_at, id", (batch,)
        ).fetchall()
        return [
            Report(
                id=r["id"], batch=r["batch"], kind=r["kind"], created_at=r["created_at"],
                subject=r["subject"], recipients=tuple(json.loads(r["recipients_json"])),
                body=r["body"], changed=tuple(json.loads(r["changed_json"])),
                job_states=json.loads(r["job_states_json"]), emailed=bool(r["emailed"]),
                message=bytes(r["message"]),
            )
            for r in rows
        ]

    def delivered(self, report_id: str) -> bool:
        row = self.db.execute(
            "SELECT delivered_at FROM outbox WHERE report_id=?", (report_id,)
        ).fetchone()
        return row is not None and row[0] is not None

    @staticmethod
    def _recipients(text: str) -> tuple[RecipientState, ...]:
        return tuple(RecipientState.from_dict(d) for d in json.loads(text or "[]"))

    def recipient_states(self, report_id: str) -> list[RecipientState]:
        row = self.db.execute(
            "SELECT recipients_json FROM outbox WHERE report_id=?", (report_id,)
        ).fetchone()
        return [] if row is None else list(self._recipients(row[0]))

    def pending_outbox(self, now: float) -> list[OutboxEntry]:
        rows = self.db.execute(
            "SELECT o.*, COALESCE(r.created_at, 0) AS queued_at FROM outbox o"
            " INDEXED BY outbox_waiting LEFT JOIN reports r ON r.id=o.report_id"
            " WHERE o.finished_at IS NULL AND o.next_attempt_at<=? ORDER BY o.rowid",
            (now,),
        ).fetchall()
        return [
            OutboxEntry(r["report_id"], r["batch"], bytes(r["message"]), r["attempts"],
                        r["last_error"], self._recipients(r["recipients_json"]),
                        float(r["queued_at"]))
            for r in rows
        ]

    def outbox_stats(self) -> dict[str, int]:
        """Emails delivered (to at least one recipient), failed delivery attempts, and
        messages still waiting for some recipient."""
        row = self.db.execute(
            "SELECT COUNT(delivered_at), COALESCE(SUM(attempts - (delivered_at IS NOT NULL)), 0),"
            " COUNT(*) - COUNT(finished_at) FROM outbox"
        ).fetchone()
        return {"delivered": int(row[0]), "failed": int(row[1]), "waiting": int(row[2])}

    def record_delivery(self, report_id: str, recipients: Sequence[RecipientState], *,
                        error: str, retry_at: float | None) -> None:
        """Record a delivery round's outcome at once.

        Between the server's "250" and this commit a killed reconciler would send the
        message again on restart, so the commit is made as short as it can be: without
        its own fsync. In WAL mode such a commit survives the process being killed (the
        write is in the OS's hands); only a power loss before the next fsync'd commit
        could undo it, and that would repeat the email, never lose it.
        """
        now = time.time()
        accepted = any(r.state == Delivery.DELIVERED for r in recipients)
        with self._tx(durable=False):
            self._write(
                "UPDATE outbox SET attempts=attempts+1, last_error=?, recipients_json=?,"
                " next_attempt_at=COALESCE(?, next_attempt_at),"
                " delivered_at=CASE WHEN ? AND delivered_at IS NULL THEN ? ELSE delivered_at"
                " END, finished_at=CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE report_id=?",
                (error, canonical_json([r.to_dict() for r in recipients]), retry_at,
                 int(accepted), now, retry_at, now, report_id),
            )

    # --- timeline
    def add_event(self, event: Event) -> None:
        self._write(
            "INSERT INTO events(batch, at, reason, message, revision) VALUES (?,?,?,?,?)",
            (event.batch, event.at, event.reason, event.message, event.revision),
        )

    def job_output(self, job: str, limit: int = 16384) -> str | None:
        """The job dir's `stderr` and `stdout` tails (the runner's jobs/NAME, beside this
        file); only for a name that is a job of this store."""
        if self.db.execute("SELECT 1 FROM jobs WHERE name=?", (job,)).fetchone() is None:
            return None
        jdir = self.path.parent / "jobs" / job
        parts = []
        for stream in ("stderr", "stdout"):
            try:
                with open(jdir / stream, "rb") as fh:
                    size = fh.seek(0, 2)
                    fh.seek(max(0, size - limit))
                    tail = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            cut = "…" if size > limit else ""
            parts.append(f"--- {stream}{' (last ' + str(limit) + ' bytes)' if cut else ''}\n"
                         f"{cut}{tail}")
        return "\n".join(parts) if parts else None

    def list_events(self, batch: str) -> list[Event]:
        rows = self.db.execute(
            "SELECT * FROM events WHERE batch=? ORDER BY id", (batch,)
        ).fetchall()
        return [Event(r["batch"], r["at"], r["reason"], r["message"], r["revision"])
                for r in rows]
