"""The store interface: the one thing the controller knows about where state lives.

Two backends implement it (DESIGN §1): `local` (SQLite + local subprocesses) and
`kubernetes` (Batch custom resources + batch/v1 Jobs). The controller, the reporter and the
web site only ever call these methods, so neither knows which backend it runs on.

Every write is idempotent: applying the same spec twice bumps no generation, creating a
Job that exists creates nothing, saving a report whose id exists saves nothing. That is
what lets a reconciler killed at any point start again without duplicating anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from reconciler.domain.guidance import waits_on_its_jobs
from reconciler.domain.model import (
    DEFAULT_IMAGE,
    Batch,
    BatchStatus,
    Item,
    ItemStatus,
    Job,
    Report,
)
from reconciler.domain.states import JOB_TERMINAL


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
    image: str = DEFAULT_IMAGE
    resources: dict[str, Any] = field(default_factory=dict)
    backoff_limit: int = 0
    deadline_seconds: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    ttl_seconds_after_finished: int | None = None  # Kubernetes; the local store keeps rows
    # filesystem storage: the operator's storage root, which the job's BATCHQ_STORAGE lies
    # under (Kubernetes mounts the storage PersistentVolumeClaim there); "" for S3 storage
    storage_mount: str = ""


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


class Delivery(StrEnum):
    """Where one recipient of a report email stands, as Postfix keeps it per recipient."""

    QUEUED = "queued"  # not tried yet
    DEFERRED = "deferred"  # a 4xx reply or no answer: tried again after a back-off
    DELIVERED = "delivered"  # the server accepted it: never sent to this address again
    BOUNCED = "bounced"  # a 5xx reply: permanent, never retried
    EXPIRED = "expired"  # still deferred when the maximum age was reached: given up

    @property
    def meaning(self) -> str:
        """What the state means to someone reading `batchq status` or the page."""
        return {
            "queued": "waiting to be sent",
            "deferred": "deferred, will be tried again",
            "delivered": "delivered",
            "bounced": "undeliverable: refused by the server, not retried",
            "expired": "undeliverable: given up after the maximum age, not retried",
        }[self.value]


WAITING = frozenset({Delivery.QUEUED, Delivery.DEFERRED})


@dataclass(frozen=True)
class RecipientState:
    """One envelope recipient of a queued email and what the last attempt for it got."""

    address: str
    state: Delivery = Delivery.QUEUED
    code: int = 0  # the server's reply code; 0 when there was none (no connection, timeout)
    detail: str = ""  # the server's reply text, or why there was none
    attempts: int = 0
    at: float = 0.0  # when this state was recorded

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "state": str(self.state), "code": self.code,
                "detail": self.detail, "attempts": self.attempts, "at": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecipientState:
        return cls(str(d["address"]), Delivery(d.get("state", "queued")),
                   int(d.get("code", 0)), str(d.get("detail", "")),
                   int(d.get("attempts", 0)), float(d.get("at", 0.0)))


@dataclass(frozen=True)
class OutboxEntry:
    """A queued email: `recipients` is empty until the first attempt names them."""

    report_id: str
    batch: str
    message: bytes
    attempts: int
    last_error: str
    recipients: tuple[RecipientState, ...] = ()
    queued_at: float = 0.0  # when the report was saved: the start of its maximum age


@dataclass
class SyncState:
    """What the Git sync and the loop keep between passes beside the batches: where the
    sync stands, what went wrong with it, and the repo-wide files as last read well.

    Each field is stored under its own name (SQLite `meta` rows; the `batchq-meta`
    ConfigMap's keys), encoded and decoded in one place (`store/codec.py`), so state dirs
    and clusters written before this type keep working."""

    synced_commit: str | None = None  # the commit last applied; None before the first sync
    sync_error: str = ""  # why the last fetch failed; "" once one worked
    storage_error: str = ""  # the full state dir the loop last met; "" once a pass wrote
    message_id_domain: str = ""  # made up once per installation when none is configured
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> raw spec
    queue: dict[str, Any] = field(default_factory=dict)  # queue.yaml's raw spec
    profile_paths: dict[str, str] = field(default_factory=dict)  # file path -> profile name
    renamed_batches: dict[str, dict[str, str]] = field(
        default_factory=dict)  # retired name -> {"path": its file, "to": the name it holds now}
    file_errors: dict[str, str] = field(default_factory=dict)  # file path -> its error
    deletion_refused: str = ""  # why the last commit's deletions were refused (guard)
    deletions: dict[str, str] = field(default_factory=dict)  # batch -> deciding commit
    # the access policy (source/access.py): file path -> its refusals (Refusal.to_dict),
    # and file path -> the last authorized version where the branch holds a refused one
    access_refusals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    access_held: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """A page of a longer list, for the CLI and the web site."""

    total: int
    rows: list[Any]


def may_act(batch: Batch, states: Collection[str]) -> bool:
    """`Store.batches_that_may_act`'s test, for the stores that filter in Python."""
    return str(batch.status.state) in states and not waits_on_its_jobs(batch)


class ReadStore(Protocol):
    """What the read-only users need (the web site, `batchq status`): reads and `close`.

    The site is typed against this, so mypy refuses a write from a page."""

    # --- bookkeeping of the Git source and repo-wide settings
    def load_sync_state(self) -> SyncState: ...

    # --- batches
    def list_batches(self) -> list[Batch]: ...
    def page_batches(
        self, *, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page: ...
    def count_batches(self) -> dict[str, int]: ...
    def get_batch(self, name: str) -> Batch | None: ...

    # --- per-item observed state (the detail beside a small Batch status)
    def list_items(
        self, batch: str, *, state: str | None = None, offset: int = 0, limit: int | None = None,
        query: str | None = None,
    ) -> list[ItemStatus]: ...
    def total_items(self, batch: str, *, state: str | None = None,
                    query: str | None = None) -> int: ...
    def count_items(self, batch: str) -> dict[str, int]: ...

    # --- jobs
    def list_jobs(self, batch: str | None = None) -> list[Job]: ...
    def count_active_jobs(self) -> int: ...

    # --- reports, outbox, timeline
    def list_reports(self, batch: str) -> list[Report]: ...
    def recipient_states(self, report_id: str) -> list[RecipientState]: ...
    def outbox_stats(self) -> dict[str, int]: ...
    def list_events(self, batch: str) -> list[Event]: ...
    def job_output(self, job: str, limit: int = 16384) -> str | None:
        """The tail of a job's output (stderr, then stdout; at most `limit` bytes of each),
        for the page's job rows; None when the backend has none for that job (not run
        yet, cleaned up, or a name that is not one of its jobs)."""

    def delivered(self, report_id: str) -> bool:
        """Has the server accepted the report's email, for at least one recipient?"""

    def close(self) -> None: ...


class Store(ReadStore, Protocol):
    """Observed state of the queue, as the controller, the sync and the mailer write it;
    see the module docstring for the contract."""

    writes: int  # every write that reached the backend (benchmarks assert 0 on a no-op pass)

    # --- bookkeeping of the Git source and repo-wide settings
    def save_sync_state(self, state: SyncState) -> None:
        """Write each field whose stored form differs from `state`'s, one write per field,
        in the order of the fields; a field at its default where nothing is stored yet is
        not written. Callers load, change the fields they own, and save."""
        ...

    # --- batches
    def apply_spec(
        self,
        name: str,
        spec: dict[str, Any] | None,
        *,
        source_path: str,
        revision: str,
        committed_at: float,
        error: str,
    ) -> Batch: ...  # a new batch gets a new uid (new_uid)
    def batches_at(self, paths: Collection[str]) -> list[Batch]:
        """Every batch (Deleted ones too) whose `source_path` is one of `paths`, by name:
        what the files of a commit's diff held, without listing every batch."""
        ...
    def batches_that_may_act(self, states: Collection[str]) -> list[Batch]:
        """The batches in `states` (the active ones), but none Processing with its items
        loaded: only a change of its Jobs, or room for more, gives such a batch something
        to do, and the controller names those itself. A pass reads what can act, not
        every active batch."""
        ...
    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None: ...
    def remove_batch(self, name: str) -> None: ...  # undelivered email still goes out
    def repair_drift(self) -> list[str]:
        """Put back what was changed by hand beside the store's own records, as applied
        from Git (Kubernetes: a Batch deleted with kubectl while its file is in Git, its spec
        or its status edited); return the batches repaired. Called once a sync; a store
        that nothing else can edit (SQLite) has nothing to repair."""
        ...

    # --- per-item observed state
    def set_items(self, batch: str, items: list[Item]) -> None: ...
    def update_items(self, batch: str, items: list[ItemStatus]) -> None:
        """Write the items given; a row equal to what is stored is not written."""
        ...
    def items_of(self, batch: str, ids: Collection[str]) -> list[ItemStatus]:
        """The batch's items with these ids (unknown ids are left out), in seq order."""
        ...
    def items_needing_jobs(self, batch: str, limit: int | None) -> list[ItemStatus]:
        """At most `limit` (None: all) unfinished items whose current attempt has no Job
        (none made yet, or it vanished), in seq order, at a cost that grows with `limit`
        and the running Jobs, not with the batch's size."""
        ...
    def set_credentials(self, batch: str, credentials: dict[str, str]) -> None:
        """Keep each item's `user:password` (by item id) for its jobs only: the backend
        hands a job its item's credentials as a file (BATCHQ_CREDENTIALS_FILE), and nothing
        lists or shows them. Removed with the batch."""
        ...

    # --- jobs
    def create_job(self, spec: JobSpec) -> bool: ...
    def create_jobs(self, specs: Sequence[JobSpec]) -> JobsCreated:
        """Create several Jobs (a pass's new ones) as fast as the backend allows; one that
        exists already counts as made (adopted by its fixed name). The first failure stops
        the creates not yet started and is returned, with every Job that was made, so the
        caller records those before it raises."""
        ...
    def changed_jobs(self, batch: str) -> JobChanges:
        """The batch's Jobs changed since `observed` was last called for it (see
        JobChanges); a Job gone since is not listed (the item status is the record)."""
        ...
    def observed(self, batch: str, changes: JobChanges) -> None:
        """The jobs of `changes` are recorded in the items: do not return them again
        unless they change. Called after the items' write (Kubernetes: a kill between
        the two observes them again)."""
        ...
    def observed_made_jobs(self, batch: str) -> None:
        """The step made Jobs and recorded them in their items (same transaction): a store
        that can tell may count them observed, so that they bring the batch no step of its
        own (one only observing them would change nothing) and its next step does not read
        them again. Kubernetes does not (its next step observes them, as before)."""
        ...
    def delete_jobs(self, batch: str) -> None: ...
    def set_suspended(self, batch: str, suspended: bool) -> None: ...
    def take_changed_batches(self) -> set[str] | None:
        """The batches the backend saw change since the last call (a Job started, finished
        or vanished; on Kubernetes any watch event of the batch or its children), then
        forgotten: the controller steps these. None when it cannot tell (the first call,
        a watch that listed again): the controller steps every batch."""
        ...

    # --- reports, outbox, timeline
    def save_report(self, report: Report) -> bool: ...
    def pending_outbox(self, now: float) -> list[OutboxEntry]: ...
    def record_delivery(self, report_id: str, recipients: Sequence[RecipientState], *,
                        error: str, retry_at: float | None) -> None:
        """One write per attempt, made as soon as the server answered (before QUIT): each
        recipient's state; `retry_at` None closes the entry (no recipient is waiting)."""
    def add_event(self, event: Event) -> None: ...

    def transaction(self, durable: bool = True) -> AbstractContextManager[Any]:
        """Group writes; what that guarantees depends on the backend.

        - local (SQLite): all or nothing. Everything written inside commits together, with
          one fsync, when the outermost block ends; an exception or a kill inside rolls
          every write of it back. Nested blocks join the outermost one.
        - kubernetes: nothing. The API server has no multi-object transactions: each write
          stands alone and is durable as soon as it returns, and a failure part-way leaves
          the writes before it in place.

        So callers must not rely on atomicity: the controller and the sync order their
        writes so that any prefix of a step is a state the next pass completes: a Job
        (deterministic name) is created before the item that records it, which the next
        pass adopts by name; a report is saved before the status that moves the batch on;
        a batch's status is written last. On SQLite a block also costs one fsync instead
        of one per write.

        `durable=False` (SQLite): committed without that fsync, for writes that can be
        made again if a power loss undoes them. In WAL mode such a commit survives the
        process being killed; a power loss can undo only the last commits, in order,
        never one before a commit that was kept, so the state after it is one the store
        had."""
        ...


def create_one_by_one(create: Callable[[JobSpec], bool],
                      specs: Sequence[JobSpec]) -> JobsCreated:
    """`create_jobs` for a backend whose creates are cheap (SQLite, memory): in order,
    stopping at the first failure."""
    made: set[str] = set()
    for spec in specs:
        try:
            create(spec)
        except Exception as exc:
            return JobsCreated(frozenset(made), exc)
        made.add(spec.name)
    return JobsCreated(frozenset(made))


def new_uid() -> str:
    """A new batch incarnation's id (Batch.uid): 48 random bits, as 12 hex digits."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class JobsCreated:
    """What `create_jobs` made: the names of the Jobs that exist now (created, or there
    already), and the failure that stopped the others (None: all were made)."""

    made: frozenset[str]
    error: Exception | None = None


@dataclass(frozen=True)
class JobChanges:
    """A batch's Jobs that changed since the controller last observed it, and the mark
    `Store.observed` records once their items are written, after which only later changes
    are returned. A store that cannot tell (just started) returns every Job: the first
    step after a start observes everything."""

    jobs: list[Job]
    mark: Any = None  # the backend's own (SQLite: a change number; Kubernetes: versions)


def needing_jobs(items: Iterable[ItemStatus], job_exists: Callable[[str], bool],
                 limit: int | None) -> list[ItemStatus]:
    """`items_needing_jobs` for a backend that holds the items in memory: of `items`
    (in seq order, read lazily), the first `limit` unfinished ones whose current attempt
    has no Job."""
    out: list[ItemStatus] = []
    for s in items:
        if limit is not None and len(out) >= limit:
            break
        if s.state not in JOB_TERMINAL and not (s.job_name and job_exists(s.job_name)):
            out.append(s)
    return out


class ConflictError(RuntimeError):
    """Someone else wrote the object since we read it: re-read and try again."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or is not set up (the API server is down, the CRD is not
    installed); the message says what is wrong and what to do."""


class NotLeader(RuntimeError):
    """This process may not write now (it lost its Lease, or is shutting down): the write
    was not started, and the pass ends without one more."""
