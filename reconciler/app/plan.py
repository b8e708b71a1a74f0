"""`batchq plan BASE..HEAD`: what the reconciler would do with a commit, without doing it.

Like `argocd app diff` and `flux diff`, it compares desired state (the files at HEAD, read
from Git) with what is stored (the batches, their items and reports), and says what the
next passes would do: batches added, changed, held or released, items restarted (with the
attempt numbers), UpdateReporting requests (and whether an email would go out), deletions
(and whether the mass-deletion guard refuses them), and files that would be refused. It
uses the reconciler's own checks (`validate_text`, the profile refusal, the layout rule)
and reads Git objects and the store only: it writes nothing, fetches nothing, creates no
job and sends no email. With an access policy (`--access-policy`), every commit of the range
is verified and judged as the sync would (source/access.py), its refusals come first (the
commit, the signer or "unsigned", the path and field), and in mode enforce the rest of the
plan is what would be applied: the authorized versions, not the head's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import git

from reconciler.domain.model import Batch, BatchSpec, QueueSettings
from reconciler.domain.states import BatchState, JobState, RequestedState
from reconciler.source.access import judge_range
from reconciler.source.gitrepo import SourceError
from reconciler.spec.layout import is_relevant
from reconciler.spec.policy import AccessPolicy, Mode
from reconciler.spec.validation import batch_name, batch_profile_refusal, validate_text
from reconciler.store.base import ReadStore, SyncState

KINDS = {"batches": "Batch", "profiles": "Profile"}
JOB_TERMINAL = (JobState.COMPLETED, JobState.FAILED)


@dataclass
class Change:
    """One thing the reconciler would do, or refuse: `action` is a short verb (add, change,
    hold, release, restart, update-reporting, delete, refuse, ...)."""

    action: str
    path: str
    batch: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    base: str
    head: str
    changes: list[Change] = field(default_factory=list)

    def add(self, action: str, path: str, batch: str = "", message: str = "",
            **details: Any) -> None:
        self.changes.append(Change(action, path, batch, message, details))

    def as_json(self) -> dict[str, Any]:
        return {"base": self.base, "head": self.head,
                "changes": [asdict(c) for c in self.changes]}


class PlanError(RuntimeError):
    """The revisions cannot be read (a bad range, not a repository)."""


def _files_at(repo: git.Repo, rev: str | None) -> dict[str, bytes]:
    """Every file the reconciler reads at `rev` (none for None: an empty repository)."""
    if rev is None:
        return {}
    try:
        tree = repo.commit(rev).tree
    except (git.BadName, ValueError) as exc:
        raise PlanError(f"unknown revision {rev!r}: give BASE..HEAD as commits, branches or"
                        " tags of the repository") from exc
    out: dict[str, bytes] = {}
    for blob in tree.traverse():
        path = str(blob.path)  # type: ignore[union-attr]
        if blob.type == "blob" and is_relevant(path):  # type: ignore[union-attr]
            out[path] = blob.data_stream.read()  # type: ignore[union-attr]
    return out


def _kind(path: str) -> str:
    return "Queue" if path == "queue.yaml" else KINDS[path.split("/")[0]]


def _valid(files: dict[str, bytes], path: str) -> tuple[dict[str, Any] | None, str]:
    data, problems = validate_text(files[path], path, _kind(path))
    return (data if not problems else None), "\n".join(str(p) for p in problems)


def _profiles(files: dict[str, bytes]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Valid profiles by name, and each invalid profile file's first error, by name."""
    good: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    for path in files:
        if path.startswith("profiles/"):
            data, err = _valid(files, path)
            name = PurePosixPath(path).stem
            if data is not None:
                good[str((data.get("metadata") or {}).get("name") or name)] = data
            else:
                bad[name] = err.split("\n")[0]
    return good, bad


def _queue(files: dict[str, bytes], stored: dict[str, Any]) -> QueueSettings:
    if "queue.yaml" not in files:
        return QueueSettings()
    data, _ = _valid(files, "queue.yaml")
    return QueueSettings.from_dict((data.get("spec") or {}) if data else stored)


def make_plan(repo_path: str, base: str | None, head: str, store: ReadStore | None,
              policy: AccessPolicy | None = None, *, timeout: float = 120.0) -> Plan:
    """The plan for moving the store from what `base` said to what `head` says."""
    try:
        repo = git.Repo(repo_path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        raise PlanError(f"{repo_path} is not a Git repository") from exc
    sync = store.load_sync_state() if store is not None else None
    try:
        before, after = _files_at(repo, base), _files_at(repo, head)
        plan = Plan(base=repo.commit(base).hexsha if base else "",
                    head=repo.commit(head).hexsha)
        if policy is not None and policy.mode != Mode.OFF:
            _plan_access(plan, repo, policy, sync, after, timeout=timeout)
    finally:
        repo.close()
    batches = {b.name: b for b in store.list_batches()} if store is not None else {}
    profiles, bad_profiles = _profiles(after)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    for path in changed:
        if path == "queue.yaml" or path.startswith("profiles/"):
            _plan_setting(plan, path, before, after)
    held_paths: dict[str, str] = {}  # batch file -> the batch name it holds at head
    for path in changed:
        if path.startswith("batches/") and path in after:
            name = _plan_batch(plan, path, after, profiles, bad_profiles, batches, store)
            if name:
                held_paths[path] = name
    _plan_deletions(plan, after, batches, held_paths,
                    _queue(after, sync.queue if sync else {}))
    return plan


def _plan_access(plan: Plan, repo: git.Repo, policy: AccessPolicy, sync: SyncState | None,
                 after: dict[str, bytes], *, timeout: float) -> None:
    """The access policy's refusals in the range; in mode enforce, `after` becomes what
    would be applied (each judged file at its authorized version)."""
    known = sync is not None and bool(plan.base) and sync.synced_commit == plan.base
    try:
        judged = judge_range(repo, policy, plan.base or None, plan.head,
                             sync.access_held if known and sync is not None else {},
                             timeout=timeout)
    except SourceError as exc:
        raise PlanError(f"cannot verify the commits of the range: {exc}") from exc
    for r in judged.refusals:
        plan.add("unauthorized", r.path, "", f"the access policy refuses {r.line()}",
                 commit=r.commit, signer=r.signer, field=r.field, applied=r.applied)
    if policy.mode == Mode.ENFORCE:
        for path, data in judged.authorized.items():
            if data is None:
                after.pop(path, None)
            else:
                after[path] = data


def _plan_setting(plan: Plan, path: str, before: dict[str, bytes],
                  after: dict[str, bytes]) -> None:
    if path not in after:
        plan.add("delete", path, message="removed: " + (
            "the queue's defaults apply" if path == "queue.yaml"
            else "batches that use this profile stall until it is back"))
        return
    data, err = _valid(after, path)
    if data is None:
        plan.add("refuse", path, message=f"refused, the last good version stays: {err}")
        return
    old, _ = _valid(before, path) if path in before else (None, "")
    spec, was = data.get("spec") or {}, (old or {}).get("spec") or {}
    fields = sorted(k for k in set(spec) | set(was) if spec.get(k) != was.get(k))
    said = ", ".join(f"{k}: {was.get(k)!r} -> {spec.get(k)!r}" for k in fields)
    if old is None:
        plan.add("add", path, message="added")
    else:
        plan.add("change", path, message="changed" + (f" ({said})" if said else ""),
                 fields=fields)


def _plan_batch(plan: Plan, path: str, after: dict[str, bytes],
                profiles: dict[str, dict[str, Any]], bad_profiles: dict[str, str],
                batches: dict[str, Batch], store: ReadStore | None) -> str:
    """Plan one batch file present at head; return the batch name it holds ("" if none)."""
    data, err = _valid(after, path)
    if data is None:
        stored = next((b for b in batches.values() if b.source_path == path), None)
        keeps = (f"; batch {stored.name} keeps its last good spec" if stored is not None
                 and stored.spec is not None else "; it shows as Invalid")
        plan.add("refuse", path, stored.name if stored else PurePosixPath(path).stem,
                 f"refused{keeps}: {err}")
        return stored.name if stored is not None else ""
    name = batch_name(path, data)
    spec = data.get("spec") or {}
    profile = str(spec.get("profile"))
    if profile not in profiles:
        plan.add("refuse", path, name, "refused: " + batch_profile_refusal(
            after[path], path, profile, bad_profiles.get(profile)))
        return name
    new = BatchSpec.from_dict(spec)
    old = batches.get(name)
    if old is None or old.status.state == BatchState.DELETED or old.spec is None:
        items = f"{len(new.items)} items" if new.items is not None else (
            f"items from {new.manifest_url} (read when the queue admits it)")
        held = " (held: no job starts until it is released)" if (
            new.state == RequestedState.HELD) else ""
        plan.add("add", path, name, f"add batch {name}: {items}{held}",
                 items=len(new.items) if new.items is not None else None)
        return name
    _plan_edit(plan, path, old, new, store)
    return name


def _plan_edit(plan: Plan, path: str, old: Batch, new: BatchSpec,
               store: ReadStore | None) -> None:
    """An admitted (or queued) batch's file changed: what each changed field does."""
    was = old.spec
    assert was is not None and store is not None
    items = {s.item.id: s for s in store.list_items(old.name)}
    state = old.status.state
    if new.state != was.state and new.state == RequestedState.HELD:
        plan.add("hold", path, old.name, f"hold {old.name}: " + (
            "no new job starts; its unstarted jobs are held" if state == BatchState.PROCESSING
            else "it is not admitted until released" if state == BatchState.PENDING
            else f"it is {state}; restarts asked for while it is held wait"))
    if was.state == RequestedState.HELD and new.state != RequestedState.HELD:
        plan.add("release", path, old.name, f"release {old.name}: " + (
            "it queues again and resumes" if state in (BatchState.HELD, BatchState.PENDING)
            else f"it is {state}; restarts that waited start"))
    for item, wanted in sorted(new.restarts.items()):
        s = items.get(item)
        if s is None or wanted <= s.attempts - 1:
            continue
        if s.state != JobState.FAILED:
            plan.add("no-restart", path, old.name, f"{item} is {s.state}, not Failed: no"
                     " restart", item=item)
            continue
        plan.add("restart", path, old.name, f"restart {item}: attempt {s.attempts + 1}"
                 f" (restarts {wanted}, used {s.attempts - 1}); the batch stays {state}",
                 item=item, attempt=s.attempts + 1)
    if new.state == RequestedState.UPDATE_REPORTING and (
            was.state != RequestedState.UPDATE_REPORTING or old.status.update_generation
            < old.generation):
        _plan_update(plan, path, old, new, items, store)
    if (new.items, new.manifest_url) != (was.items, was.manifest_url):
        if old.status.items_loaded:
            plan.add("out-of-sync", path, old.name, f"manifest changed after {old.name} was"
                     " admitted: its jobs keep the items they were created with (Jobs are"
                     " immutable); to use the new items, submit them as a new batch")
        else:
            plan.add("change", path, old.name, f"manifest of {old.name} changed before"
                     " admission: the new items will be used")
    other = [k for k in ("priority", "depositor") if getattr(new, k) != getattr(was, k)]
    if other:
        plan.add("change", path, old.name, f"{old.name}: {', '.join(other)} changed",
                 fields=other)


def _plan_update(plan: Plan, path: str, old: Batch, new: BatchSpec,
                 items: dict[str, Any], store: ReadStore) -> None:
    """UpdateReporting: whether an email would go out, and why (not)."""
    if old.status.state != BatchState.FAILED:
        plan.add("update-reporting", path, old.name, "UpdateReporting would be ignored: it"
                 f" applies to Failed batches (this one is {old.status.state})", email=False)
        return
    restarting = [i for i, n in new.restarts.items()
                  if i in items and items[i].state == JobState.FAILED
                  and n > items[i].attempts - 1]
    running = [i for i, s in items.items() if s.state not in JOB_TERMINAL]
    if restarting or running:
        plan.add("update-reporting", path, old.name, "UpdateReporting waits until"
                 f" {', '.join(sorted(restarting + running))} finish; whether an email goes"
                 " out depends on how they end", email=None)
        return
    reports = store.list_reports(old.name)
    last = reports[-1].job_states if reports else {}
    changed = sorted(i for i, s in items.items() if last.get(i) != str(s.state))
    if changed:
        said = ", ".join(f"{i}: {last.get(i, 'new')} -> {items[i].state}" for i in changed)
        plan.add("update-reporting", path, old.name, f"UpdateReporting: an update email"
                 f" would go out ({said})", email=True, changed=changed)
    else:
        plan.add("update-reporting", path, old.name, "UpdateReporting: no email (no job"
                 " changed since the last report)", email=False, changed=[])


def _plan_deletions(plan: Plan, after: dict[str, bytes], batches: dict[str, Batch],
                    held_paths: dict[str, str], queue: QueueSettings) -> None:
    """Batches whose file is gone (or now names another batch), and the guard's verdict."""
    gone = sorted(b.name for b in batches.values()
                  if b.status.state != BatchState.DELETED
                  and (b.source_path not in after
                       or held_paths.get(b.source_path, b.name) != b.name))
    if not gone:
        return
    if len(gone) > queue.max_deletes_per_sync:
        plan.add("refuse", "queue.yaml", "", f"the mass-deletion guard would refuse to delete"
                 f" {len(gone)} batches ({', '.join(gone)}): more than maxDeletesPerSync="
                 f"{queue.max_deletes_per_sync}; nothing is deleted", batches=gone)
        return
    for name in gone:
        b = batches[name]
        jobs = b.status.item_count
        plan.add("delete", b.source_path, name, f"delete batch {name}: its jobs are deleted"
                 f" ({jobs} items), it shows Deleted for the retention period")


def text_lines(plan: Plan) -> list[str]:
    """One line a change, `path: message`, under a header naming the range."""
    head = f"plan {plan.base[:12] or '(empty)'}..{plan.head[:12]}"
    if not plan.changes:
        return [head, "no changes: the reconciler would do nothing"]
    return [head] + [f"  {c.action:<16} {c.path}: {c.message}".replace("\n", "\n" + " " * 20)
                     for c in plan.changes]


def markdown(plan: Plan) -> str:
    """A pull-request comment: one table row a change."""
    rows = ["| | file | batch | what |", "|---|---|---|---|"]
    for c in plan.changes:
        cell = c.message.replace("|", "\\|").replace("\n", "<br>")
        rows.append(f"| {c.action} | `{c.path}` | {c.batch} | {cell} |")
    title = f"### batchq plan `{plan.base[:12] or '(empty)'}..{plan.head[:12]}`"
    body = "\n".join(rows) if plan.changes else "No changes: the reconciler would do nothing."
    return f"{title}\n\n{body}\n"
