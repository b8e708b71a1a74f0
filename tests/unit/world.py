"""The queue without Git, SQLite or processes: the controller on a `MemoryStore`.

`MemoryRepo` stands in for the Git source: it keeps the branch's files and turns each
commit into the `SyncResult` that `GitSource.sync` would give, so specs reach the store
through the real `apply_sync` (validation, file errors, the deletion guard). The store's
jobs dict is the cluster: tests move jobs with `run`. `UnitWorld.step()` is one controller
pass, and it records every state change it saw, of the batch and of each item.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.control.controller import Controller
from reconciler.domain.model import Batch, ItemStatus, Report
from reconciler.domain.states import BatchState, JobState
from reconciler.source.gitrepo import FileVersion, SyncResult
from reconciler.source.sync import RepoState, apply_sync
from reconciler.store.base import OutboxEntry
from tests.unit.memory_store import MemoryStore

Doc = dict[str, Any] | str | None  # a YAML document, raw text, or None: remove the file
PREFIX = "https://payloads.example.org/"


def profile_doc(name: str = "test", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"allowedUrlPrefixes": [PREFIX],
                            "notification": {"from": "batchq@example.org"}}
    body.update(spec)
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": name},
            "spec": body}


def batch_doc(*ids: str, profile: str = "test", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profile": profile, "depositor": {"name": "Jane Depositor", "email": "jane@example.org"},
        "manifest": {"items": [{"id": i, "url": f"{PREFIX}{i}", "title": f"Title of {i}"}
                               for i in ids]}}
    body.update(spec)
    return {"apiVersion": "batchq.dev/v1", "kind": "Batch", "spec": body}


def queue_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": spec}


class MemoryRepo:
    """A branch as a dict of files; `commit` gives what a sync of the new head reads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.revisions: dict[str, tuple[str, float]] = {}  # path -> last commit touching it
        self.head = ""
        self.commits = 0
        self.clock = 1_700_000_000.0

    def commit(self, changes: dict[str, Doc], by: str = "") -> SyncResult:
        """`by`: "Name <email>: subject", as the Git source describes a commit."""
        self.commits += 1
        self.clock += 60
        head = self.head = hashlib.sha1(f"commit {self.commits}".encode()).hexdigest()
        changed: list[FileVersion] = []
        for path, doc in sorted(changes.items()):
            if doc is None:
                self.files.pop(path, None)
                self.revisions.pop(path, None)
                changed.append(FileVersion(path, None, head, self.clock))
                continue
            text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
            self.files[path] = text.encode()
            self.revisions[path] = (head, self.clock)
            changed.append(FileVersion(path, self.files[path], head, self.clock))
        return SyncResult(head=head, full=False, changed=changed, listed=True,
                          batch_paths=self._batch_paths(), authors={head: by} if by else {})

    def read_all(self) -> SyncResult:
        """The whole tree at the head again, as a restarted reconciler reads it."""
        changed = [FileVersion(p, data, *self.revisions[p])
                   for p, data in sorted(self.files.items())]
        return SyncResult(head=self.head, full=True, changed=changed, listed=True,
                          batch_paths=self._batch_paths())

    def _batch_paths(self) -> set[str]:
        return {p for p in self.files if p.startswith("batches/")}


@dataclass
class Step:
    """What one controller pass did."""

    progressed: bool
    batch_moves: set[tuple[BatchState, BatchState]] = field(default_factory=set)
    item_moves: set[tuple[JobState, JobState]] = field(default_factory=set)
    jobs_created: list[str] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)


class UnitWorld:
    """A store, a repo and a controller; see the module docstring."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.repo = MemoryRepo()
        self.controller = Controller(self.store, storage_root=Path("/unit/storage"))
        self.state = RepoState()
        self.batch_moves: set[tuple[BatchState, BatchState]] = set()
        self.item_moves: set[tuple[JobState, JobState]] = set()

    def __deepcopy__(self, memo: dict[int, Any]) -> UnitWorld:
        """A copy of the stored state and the repo with a controller of its own, as a
        restarted reconciler has (a controller's threads and locks are not state)."""
        clone = UnitWorld()
        for name, value in vars(self).items():
            if name != "controller":
                setattr(clone, name, copy.deepcopy(value, memo))
        clone.controller = Controller(clone.store, storage_root=Path("/unit/storage"))
        return clone

    # --- what people do: commit
    def put(self, changes: dict[str, Doc]) -> None:
        """One commit: each path gets its new document (None removes the file)."""
        self.state = apply_sync(self.store, self.repo.commit(changes))

    def resync(self) -> None:
        """Read the same commit again, whole (a restart that lost its place)."""
        self.state = apply_sync(self.store, self.repo.read_all())

    def edit(self, name: str, **spec: Any) -> None:
        """An admin's commit changing fields of `batches/<name>.yaml`'s spec."""
        doc = yaml.safe_load(self.repo.files[f"batches/{name}.yaml"])
        doc["spec"].update(spec)
        self.put({f"batches/{name}.yaml": doc})

    # --- what the cluster does: run jobs
    def run(self, item: str, state: JobState, message: str = "", *, batch: str = "b") -> str:
        """Move the newest job of `item` to `state`; return the job's name."""
        job = max((j for j in self.store.list_jobs(batch) if j.item == item),
                  key=lambda j: j.attempt)
        self.store.set_job_state(job.name, state, message)
        return job.name

    def run_all(self, state: JobState, *, batch: str = "b") -> None:
        for j in self.store.list_jobs(batch):
            if j.state not in (JobState.COMPLETED, JobState.FAILED):
                self.store.set_job_state(j.name, state)

    # --- what the controller does: one pass
    def step(self) -> Step:
        before = self._snapshot()
        jobs_before = {j.name for j in self.store.list_jobs()}
        reports_before = {r.id for b in self.store.list_batches()
                          for r in self.store.list_reports(b.name)}
        outbox_before = {e.report_id for e in self.store.pending_outbox(float("inf"))}
        progressed = self.controller.reconcile_all(self.state, None)
        after = self._snapshot()
        step = Step(progressed)
        for name, (state, items) in after.items():
            old_state, old_items = before.get(name, (state, {}))
            if old_state != state:
                step.batch_moves.add((old_state, state))
            for item, (attempt, item_state) in items.items():
                was_attempt, was = old_items.get(item, (attempt, item_state))
                if was_attempt == attempt and was != item_state:  # one job's own move
                    step.item_moves.add((was, item_state))
        step.jobs_created = sorted({j.name for j in self.store.list_jobs()} - jobs_before)
        step.reports = [r for b in self.store.list_batches()
                        for r in self.store.list_reports(b.name) if r.id not in reports_before]
        step.outbox = [e for e in self.store.pending_outbox(float("inf"))
                       if e.report_id not in outbox_before]
        self.batch_moves |= step.batch_moves
        self.item_moves |= step.item_moves
        return step

    def settle(self, passes: int = 10) -> None:
        """Pass until a pass changes nothing (jobs stay where the cluster left them)."""
        for _ in range(passes):
            if not self.step().progressed:
                return
        raise AssertionError(f"still progressing after {passes} passes")

    def _snapshot(self) -> dict[str, tuple[BatchState, dict[str, tuple[int, JobState]]]]:
        """Each batch's state, and each item's (attempt, state)."""
        return {b.name: (b.status.state, {s.item.id: (s.attempts, s.state)
                                          for s in self.store.list_items(b.name)})
                for b in self.store.list_batches()}

    # --- what the status shows
    def batch(self, name: str = "b") -> Batch:
        b = self.store.get_batch(name)
        assert b is not None, f"no batch {name}"
        return b

    def items(self, name: str = "b") -> dict[str, ItemStatus]:
        return {s.item.id: s for s in self.store.list_items(name)}

    def item_states(self, name: str = "b") -> dict[str, str]:
        return {i: str(s.state) for i, s in self.items(name).items()}
