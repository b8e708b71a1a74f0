"""Commit by commit, apply only what each commit's signer may change (README: Who may change
what; DESIGN §10 Authority).

The authorized version of each file starts as it was at the last synced commit (or the
version held back then; for a fresh state dir, as at the policy's trustedCommit, else
absent), and every commit between it and the new head (`git log
LAST..HEAD`, one stream: signatures.py) is judged on its own changes against its own
signer's rights (rights.py):
- allowed: the change is applied to the authorized version. When that version is the
  commit's parent's, the file is simply the commit's; when an earlier change to the file
  was refused, the commit's own change is merged onto the authorized version with git's
  three-way merge (`git merge-file`), so a signed commit on top never carries an unsigned
  change with it; a change that does not merge cleanly is refused, saying so.
- refused: the authorized version stays, and the refusal is kept for `status`, the page
  and /metrics. In mode warn the change is applied all the same, and shown.
- A merge commit is judged by the commits it merges, each by its own signer; its own
  changes (a file that differs from every parent: a conflict resolution) need an admin's
  signature. Whoever signed the merge (a forge's key, an admin's, none) adds no rights.
- A rewritten branch (force-push) is judged the same way: its new commits one by one. A
  file that differs from the last synced commit and that no new commit changed (the
  rewrite dropped the commit that made it) keeps its authorized version: nothing already
  authorized is re-judged into a deletion; an admin's signed commit changes it.
Where the branch holds a file the authorized version differs from, the authorized one is
held (SyncState.access_held) for the next syncs, and the sync applies it instead.
`judge_range` judges a range without applying anything: what `batchq plan` shows.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import git

from reconciler.domain.refusals import MAX_PER_PATH, Refusal
from reconciler.source import rights
from reconciler.source.gitrepo import (
    MAX_FILE_BYTES,
    FileVersion,
    GitSource,
    SyncResult,
    is_utf8,
)
from reconciler.source.signatures import Change, CommitRecord, Signature, read_commits
from reconciler.spec.layout import is_relevant
from reconciler.spec.policy import AccessPolicy, Mode
from reconciler.store.base import SyncState

log = logging.getLogger(__name__)
REWRITE = Signature("", None, "no commit (the branch was rewritten)")


@dataclass(frozen=True)
class Version:
    """A file's content (None: absent) and the commit that made it so."""

    data: bytes | None
    revision: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        data = None if self.data is None else base64.b64encode(self.data).decode()
        return {"data": data, "revision": self.revision, "at": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Version:
        data = d.get("data")
        return cls(None if data is None else base64.b64decode(data), str(d["revision"]),
                   float(d["at"]))


@dataclass
class Outcome:
    """What the sync applies, and what the sync state keeps."""

    result: SyncResult
    held: dict[str, dict[str, Any]]
    refusals: dict[str, list[dict[str, Any]]]
    new_refusals: list[Refusal] = field(default_factory=list)


class _Judge:
    def __init__(self, repo: git.Repo, policy: AccessPolicy, base: str | None,
                 held: dict[str, dict[str, Any]]) -> None:
        self.repo = repo
        self.policy = policy
        self.base = self.repo.commit(base) if base else None
        self.base_tree = self.base.tree if self.base else None
        self.held = {p: Version.from_dict(v) for p, v in held.items()}
        self.authorized: dict[str, Version] = {}
        self.at_base: dict[str, Version] = {}
        self.refused: list[Refusal] = []
        self.last_word: dict[str, bool] = {}  # path -> was its last change in range allowed

    def blob(self, sha: str | None) -> bytes | None:
        return None if sha is None else bytes(self.repo.odb.stream(bytes.fromhex(sha)).read())

    def base_version(self, path: str) -> Version:
        """The version the store has: held back at the last sync, else the branch's then."""
        if path not in self.at_base:
            if path in self.held:
                self.at_base[path] = self.held[path]
            else:
                base = self.base
                self.at_base[path] = Version(tree_blob(self.base_tree, path),
                                             base.hexsha if base else "",
                                             float(base.committed_date) if base else 0.0)
        return self.at_base[path]

    def current(self, path: str) -> Version:
        return self.authorized.get(path) or self.base_version(path)

    def judge(self, commit: CommitRecord) -> None:
        for change in commit.changes:  # a name that is not UTF-8 never becomes a batch
            if is_relevant(change.path) and is_utf8(change.path):  # (gitrepo.name_error)
                self._judge_change(commit, change)

    def _judge_change(self, commit: CommitRecord, change: Change) -> None:
        old, new = self.blob(change.old), self.blob(change.new)
        cur = self.current(change.path)
        if commit.is_merge and cur.data == new:
            return  # what the merged commits did, merged cleanly: nothing of its own
        # a file never authorized (its addition was refused) is judged as added by this
        # commit, whole: an edit on top of it must not carry what the addition could not
        wanted = rights.needs(change.path, None if cur.data is None else old, new)
        failed = rights.refused(commit.signature, wanted, merge=commit.is_merge)
        warn = self.policy.mode == Mode.WARN
        if failed:
            fields = ", ".join(n.field for n in failed if n.field)
            why = rights.reason(commit.signature, failed, merge=commit.is_merge)
            self._refuse(commit, change.path, commit.signature, fields, why, applied=warn)
            if not warn:
                return
        merged, why = self._apply(cur, old, new)
        if merged is None:
            if not failed:
                self._refuse(commit, change.path, commit.signature, "", why, applied=False)
            return
        self.authorized[change.path] = Version(merged.data, commit.sha, commit.committed_at)
        if not failed:
            self.last_word[change.path] = True

    def _apply(self, cur: Version, old: bytes | None,
               new: bytes | None) -> tuple[Version | None, str]:
        """The authorized version with one allowed change made to it (None: it cannot be)."""
        if cur.data == old or new is None or cur.data == new:
            return Version(new, "", 0.0), ""
        if cur.data is None:  # never authorized: the signer's version is judged whole
            return Version(new, "", 0.0), ""
        merged = self._merge3(old or b"", cur.data, new)
        if merged is None:
            return None, ("this change does not apply cleanly to the version last authorized"
                          " (an earlier change to the file was refused): revert that change,"
                          " then commit again")
        return Version(merged, "", 0.0), ""

    def _merge3(self, base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="batchq-merge-") as tmp:
            files = []
            for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
                (Path(tmp) / name).write_bytes(data)
                files.append(str(Path(tmp) / name))
            done = subprocess.run(["git", "merge-file", "-p", "--quiet", *files],
                                  capture_output=True, cwd=tmp, check=False, timeout=60)
        return done.stdout if done.returncode == 0 else None

    def _refuse(self, commit: CommitRecord, path: str, signature: Signature, fields: str,
                why: str, *, applied: bool) -> None:
        self.refused.append(Refusal(commit.sha, signature.label, path, fields, why,
                                    commit.committed_at, applied))
        self.last_word[path] = False


def _range(source: GitSource, policy: AccessPolicy, last: str | None,
           head: str) -> tuple[str | None, list[str]]:
    """The base commit (None: none known) and the revisions to verify: from the last synced
    commit, else from the policy's trusted commit, else the whole history."""
    start = last or policy.trusted_commit or None
    if start is None:
        return None, [head]
    try:
        source.repo().commit(start)
        if last is None and not _is_ancestor(source.repo(), start, head):
            raise ValueError(start)
    except (ValueError, git.BadName):  # a mirror made afresh no longer has it
        log.warning("commit %s is not in the mirror or not in the branch's history:"
                    " verifying the whole history of %s", start[:12], head[:12])
        return None, [head]
    return start, [head, f"^{start}"]


def tree_blob(tree: git.Tree | None, path: str) -> bytes | None:
    """The file's content in `tree` (None: absent)."""
    if tree is None:
        return None
    try:
        obj = tree / path
    except KeyError:
        return None
    return bytes(obj.data_stream.read()) if isinstance(obj, git.Blob) else None


def authorize(source: GitSource, policy: AccessPolicy, last: str | None, result: SyncResult,
              state: SyncState, live_paths: set[str], *, timeout: float) -> Outcome:
    """Judge every commit of LAST..HEAD; in mode enforce, make `result` apply only what was
    authorized. `live_paths`: files the store has a batch from (never deleted by this)."""
    outcome = Outcome(result, dict(state.access_held), dict(state.access_refusals))
    if last == result.head:
        return outcome
    base, revisions = _range(source, policy, last, result.head)
    known = base is not None and base == last  # the store holds what was authorized at base
    judge = _Judge(source.repo(), policy, base, state.access_held if known else {})
    for commit in read_commits(source.mirror, policy, revisions, timeout=timeout):
        judge.judge(commit)
    repo = source.repo()
    head = repo.commit(result.head)
    rewritten = base is not None and not _is_ancestor(repo, base, result.head)
    paths = set(judge.authorized) | set(judge.held) | set(judge.last_word)
    if rewritten and base is not None:
        out = repo.git.diff("--name-only", "--no-renames", "-z", base, result.head, "--",
                            "batches", "profiles", "queue.yaml")
        for path in {p for p in out.split("\0") if p and is_relevant(p)} - paths:
            now = tree_blob(head.tree, path)
            if policy.mode == Mode.ENFORCE:
                judge.refused.append(Refusal(result.head, REWRITE.label, path, "",
                                             "the branch was rewritten and no new commit"
                                             " makes this change; make it in a signed commit",
                                             float(head.committed_date), False))
                judge.last_word[path] = False
                paths.add(path)
            else:
                judge.authorized[path] = Version(now, result.head, float(head.committed_date))
    held: dict[str, dict[str, Any]] = {}
    final: dict[str, Version] = {}
    for path in paths:
        version = judge.current(path)
        final[path] = version
        if policy.mode == Mode.ENFORCE and version.data != tree_blob(head.tree, path):
            held[path] = version.to_dict()
    outcome.held = held
    outcome.new_refusals = judge.refused
    outcome.refusals = _kept_refusals(state.access_refusals, judge, held, policy)
    if policy.mode == Mode.ENFORCE:
        outcome.result = _authorized_result(result, judge, final, held, live_paths, known)
    for r in judge.refused:
        log.warning("access policy: %s", r.line())
    return outcome


def _is_ancestor(repo: git.Repo, old: str, new: str) -> bool:
    try:
        repo.git.merge_base("--is-ancestor", old, new)
        return True
    except git.GitCommandError:
        return False


def _kept_refusals(stored: dict[str, list[dict[str, Any]]], judge: _Judge,
                   held: dict[str, dict[str, Any]],
                   policy: AccessPolicy) -> dict[str, list[dict[str, Any]]]:
    """A file's refusals stay while its refused version is held back (enforce), or until
    an allowed change to it (warn); the newest MAX_PER_PATH of each file are kept."""
    out = {p: list(rows) for p, rows in stored.items()}
    for r in judge.refused:
        rows = out.setdefault(r.path, [])
        if not any(row["commit"] == r.commit for row in rows):
            rows.append(r.to_dict())
    for path in list(out):
        if policy.mode == Mode.ENFORCE:
            if path not in held and (path in judge.last_word or path in judge.held):
                out.pop(path)
        elif judge.last_word.get(path) is True:
            out.pop(path)
    return {p: rows[-MAX_PER_PATH:] for p, rows in out.items() if rows}


def _file_version(path: str, version: Version) -> FileVersion:
    if version.data is not None and len(version.data) > MAX_FILE_BYTES:
        return FileVersion(path, None, version.revision, version.at, too_big=len(version.data))
    return FileVersion(path, version.data, version.revision, version.at)


def _authorized_result(result: SyncResult, judge: _Judge, final: dict[str, Version],
                       held: dict[str, dict[str, Any]], live_paths: set[str],
                       known: bool) -> SyncResult:
    """`result` with each judged file at its authorized version. `known`: the store holds
    each file's version at the base (else it is written again)."""
    changed = {f.path: f for f in result.changed}
    batch_paths = set(result.batch_paths)
    for path, version in final.items():
        before = judge.base_version(path) if known else Version(None, "", 0.0)
        if path in held:
            changed.pop(path, None)
        if before.data != version.data and (path in held or path not in changed):
            changed[path] = _file_version(path, version)
        if path.startswith("batches/") and path in held:
            if version.data is not None:
                batch_paths.add(path)
            elif path not in live_paths:
                batch_paths.discard(path)
    return replace(result, changed=[changed[p] for p in sorted(changed)],
                   batch_paths=batch_paths, listed=True)


@dataclass(frozen=True)
class Judgement:
    """What the policy makes of a range: its refusals, and each judged file's authorized
    version at the head (None: absent), which mode enforce applies instead of the head's."""

    refusals: list[Refusal]
    authorized: dict[str, bytes | None]


def judge_range(repo: git.Repo, policy: AccessPolicy, base: str | None, head: str,
                held: dict[str, dict[str, Any]], *, timeout: float) -> Judgement:
    """Judge BASE..HEAD in `repo` (any repository holding both commits), applying nothing:
    what `batchq plan` shows. `held`: the versions the reconciler holds back at BASE
    (SyncState.access_held when BASE is the store's synced commit, else {})."""
    judge = _Judge(repo, policy, base, held)
    revisions = [head] if base is None else [head, f"^{base}"]
    for commit in read_commits(Path(repo.git_dir), policy, revisions, timeout=timeout):
        judge.judge(commit)
    paths = set(judge.authorized) | set(judge.held) | set(judge.last_word)
    return Judgement(judge.refused, {p: judge.current(p).data for p in sorted(paths)})


def refusals_between(repo: git.Repo, policy: AccessPolicy, base: str | None, head: str,
                     *, timeout: float) -> list[Refusal]:
    """What the policy would refuse in BASE..HEAD, applying nothing (versions held back by
    the running reconciler are not taken into account: judge_range takes them)."""
    return judge_range(repo, policy, base, head, {}, timeout=timeout).refusals
