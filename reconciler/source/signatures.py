"""Every commit of a push with its verified signer and its changes.

One `git log` stream lists the whole range, parents before children (`--topo-order
--reverse`), with each commit's raw changes: against its parent, and for a merge only the
paths that differ from every parent (`-c`), i.e. what the merge itself changed.
Signatures are checked against the access policy's keys one of two ways (policy `verify`):
- builtin (the default): one `git cat-file --batch` reads every raw commit object and
  sshverify.py checks each SSHSIG in-process, with the verdicts git would give;
- git: git checks each signature itself in the same `git log` (gpg.format ssh:
  `ssh-keygen -Y find-principals` and `-Y verify` against an allowed-signers file written
  from the policy, and its revoked keys as gpg.ssh.revocationFile): two processes a commit.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import git

from reconciler.source.catfile import CatFileError, CatFileTimeout, read_objects
from reconciler.source.gitrepo import SourceError, run_with_deadline
from reconciler.source.sshverify import Verifier
from reconciler.spec.policy import AccessPolicy, Role, Verification
from reconciler.support.redaction import redact_text

ZERO = "0" * 40
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """A file one commit changed: its blob before (in the first parent) and after; None
    when absent."""

    path: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Signature:
    """Who signed a commit, as git verified it against the policy's keys."""

    principal: str  # "" unless git verified a good signature by a key of the policy
    role: Role | None
    label: str  # what messages call the signer: the principal, or "unsigned (why)"
    status: str = ""  # git's %G? (G, U, B, E, N, ...)
    key: str = ""  # git's %GK: the SSH key's SHA256 fingerprint for G and U


@dataclass(frozen=True)
class CommitRecord:
    sha: str
    parents: tuple[str, ...]
    signature: Signature
    committed_at: float
    changes: tuple[Change, ...]

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1


def _signature(status: str, principal: str, key: str, policy: AccessPolicy,
               why: str = "") -> Signature:
    """%G?, %GS and %GK as git reports them (git-log(1) PRETTY FORMATS); `why` says more
    about an "E"."""
    if status == "G" and principal:
        return Signature(principal, policy.role_of(principal), principal, status, key)
    if status == "E" and why:
        return Signature("", None, f"unsigned ({why})", status, key)
    why = {
        "N": "",
        "U": f" (key {key} is not in the access policy)",
        "B": " (the signature is bad, or its key is revoked)",
        "X": " (the signature has expired)",
        "Y": " (the key has expired)",
        "R": " (the key is revoked)",
        "E": " (the signature cannot be checked)",
    }.get(status, f" (signature status {status})")
    return Signature("", None, f"unsigned{why}", status, key)


def _blob(sha: str) -> str | None:
    return None if sha == ZERO else sha


def _changes(tokens: list[str]) -> tuple[Change, ...]:
    """A `:`-line, then its path (git log --raw -z; `::` for a merge's -c lines): modes
    and blobs for each parent, then the commit's."""
    out = []
    fields: list[str] = []
    for token in tokens:
        if not fields:
            fields = token.lstrip("\n").split()
            if not fields or not fields[0].startswith(":"):
                fields = []
            continue
        parents = len(fields[0]) - len(fields[0].lstrip(":"))  # one colon per parent
        shas = fields[parents + 1:parents + 1 + parents + 1]
        out.append(Change(token, _blob(shas[0]), _blob(shas[-1])))
        fields = []
    return tuple(out)


LOG_FORMAT = "%x01%H%x00%P%x00%ct%x00"
LOG_ARGS = ["log", "--topo-order", "--reverse", "-c", "--raw", "--no-renames", "--no-abbrev",
            "-z"]


def read_commits(mirror: Path, policy: AccessPolicy, revisions: list[str], *,
                 timeout: float) -> list[CommitRecord]:
    """The commits of `revisions` (git rev-list syntax, e.g. ["HEAD", "^LAST"]), oldest
    first, each with its signature and changes; SourceError when git cannot list them."""
    if policy.verify == Verification.GIT:
        return _read_verified_by_git(mirror, policy, revisions, timeout=timeout)
    deadline = time.monotonic() + timeout
    listed = _list(mirror, revisions, timeout=timeout)
    raw = _raw_commits(mirror, [sha for sha, *_ in listed],
                       timeout=max(deadline - time.monotonic(), 1.0))
    verifier = Verifier(((s.principal, k) for s in policy.signers for k in s.keys),
                        policy.revoked_keys)
    records = []
    for sha, parents, when, changes in listed:
        v = verifier.verify_commit(raw[sha])
        records.append(CommitRecord(sha, tuple(parents.split()),
                                    _signature(v.status, v.principal, v.key, policy, v.why),
                                    float(when), _changes(changes)))
    return records


def _list(mirror: Path, revisions: list[str], *,
          timeout: float) -> list[tuple[str, str, str, list[str]]]:
    """Each commit of the range, oldest first: sha, parents, commit time, raw changes."""
    out = _run(mirror, [*LOG_ARGS, f"--format={LOG_FORMAT}", *revisions, "--"],
               timeout=timeout)
    listed = []
    for chunk in out.split("\x01")[1:]:
        tokens = chunk.split("\0")
        sha, parents, when = tokens[:3]
        listed.append((sha, parents, when, [t for t in tokens[3:] if t]))
    return listed


def _git() -> str:
    return str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git")


def _run(mirror: Path, args: list[str], *, timeout: float) -> str:
    try:
        done = run_with_deadline([_git(), *args], cwd=mirror, env=dict(os.environ),
                                 timeout=timeout, errors="surrogateescape")
    except subprocess.TimeoutExpired:
        raise SourceError(f"listing the commits to verify took over {timeout:g} s") from None
    if done.returncode != 0:
        raise SourceError(redact_text(f"cannot list commits to verify: {done.stderr.strip()}"))
    return done.stdout


def _raw_commits(mirror: Path, shas: list[str], *, timeout: float) -> dict[str, bytes]:
    """Each commit object as stored, read through one `git cat-file --batch`."""
    try:
        found = read_objects(mirror, shas, kind="commit", limit=sys.maxsize, git=_git(),
                             timeout=timeout)
    except CatFileTimeout:
        raise SourceError(f"reading the commits to verify took over {timeout:g} s") from None
    except CatFileError as exc:
        raise SourceError(redact_text(f"cannot read commits to verify: {exc}")) from None
    return {sha: c.data for sha, c in found.items() if c.data is not None}  # all: no limit


def _read_verified_by_git(mirror: Path, policy: AccessPolicy, revisions: list[str], *,
                          timeout: float) -> list[CommitRecord]:
    """read_commits with git checking each signature (policy verify: git). git 2.39 dies
    on some commits (a gpgsig header it cannot parse; ssh-keygen rejecting a blob before
    reading the payload kills git with SIGPIPE): one such commit must not stop every sync,
    so then each commit is verified on its own, and the one git cannot check is "E"."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="batchq-signers-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(policy.allowed_signers(), encoding="utf-8")
        config = ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}"]
        if policy.revoked_keys:
            revoked = Path(tmp) / "revoked_keys"
            revoked.write_text(policy.revocations(), encoding="utf-8")
            config += ["-c", f"gpg.ssh.revocationFile={revoked}"]
        command = [_git(), *config, *LOG_ARGS,
                   "--format=%x01%H%x00%P%x00%G?%x00%GS%x00%GK%x00%ct%x00", *revisions, "--"]
        try:
            done = run_with_deadline(command, cwd=mirror, env=dict(os.environ),
                                     timeout=timeout, errors="surrogateescape")
        except subprocess.TimeoutExpired:
            raise SourceError(f"verifying signatures took over {timeout:g} s") from None
        if done.returncode != 0:
            listed = _list(mirror, revisions, timeout=max(deadline - time.monotonic(), 1.0))
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            log.warning("git could not verify the range (%s): verifying commit by commit",
                        redact_text(why))
            return [CommitRecord(sha, tuple(parents.split()),
                                 _git_verdict(mirror, config, sha, policy, deadline),
                                 float(when), _changes(changes))
                    for sha, parents, when, changes in listed]
    records = []
    for chunk in done.stdout.split("\x01")[1:]:
        tokens = chunk.split("\0")
        sha, parents, status, principal, key, when = tokens[:6]
        records.append(CommitRecord(sha, tuple(parents.split()),
                                    _signature(status, principal, key, policy),
                                    float(when), _changes([t for t in tokens[6:] if t])))
    return records


def _git_verdict(mirror: Path, config: list[str], sha: str, policy: AccessPolicy,
                 deadline: float) -> Signature:
    """One commit's signature as git checks it; "E" when git dies checking it."""
    timeout = max(deadline - time.monotonic(), 1.0)
    try:
        done = run_with_deadline([_git(), *config, "log", "-1",
                                  "--format=%G?%x00%GS%x00%GK", sha, "--"], cwd=mirror,
                                 env=dict(os.environ), timeout=timeout,
                                 errors="surrogateescape")
    except subprocess.TimeoutExpired:
        raise SourceError(f"verifying signatures took over {timeout:g} s") from None
    if done.returncode != 0:
        return _signature("E", "", "", policy, "git could not check this signature")
    status, principal, key = [*done.stdout.strip("\n").split("\0"), "", ""][:3]
    return _signature(status, principal, key, policy)
