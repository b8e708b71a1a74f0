"""Every commit of a push with its verified signer and its changes, in one `git log` stream.

git checks each signature itself (gpg.format ssh: `ssh-keygen -Y find-principals` and
`-Y verify` against an allowed-signers file written from the access policy, and the
policy's revoked keys as gpg.ssh.revocationFile), so batchq parses no signature. One
process lists the whole range, parents before children (`--topo-order --reverse`), with
each commit's raw changes: against its parent, and for a merge only the paths that differ
from every parent (`-c`), i.e. what the merge itself changed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from reconciler.source.gitrepo import SourceError, run_with_deadline
from reconciler.spec.policy import AccessPolicy, Role
from reconciler.support.redaction import redact_text

ZERO = "0" * 40


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


def _signature(status: str, principal: str, key: str, policy: AccessPolicy) -> Signature:
    """%G? and %GS as git reports them (git-log(1) PRETTY FORMATS)."""
    if status == "G" and principal:
        return Signature(principal, policy.role_of(principal), principal)
    why = {
        "N": "",
        "U": f" (key {key} is not in the access policy)",
        "B": " (the signature is bad, or its key is revoked)",
        "X": " (the signature has expired)",
        "Y": " (the key has expired)",
        "R": " (the key is revoked)",
        "E": " (the signature cannot be checked)",
    }.get(status, f" (signature status {status})")
    return Signature("", None, f"unsigned{why}")


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


def read_commits(mirror: Path, policy: AccessPolicy, revisions: list[str], *,
                 timeout: float) -> list[CommitRecord]:
    """The commits of `revisions` (git rev-list syntax, e.g. ["HEAD", "^LAST"]), oldest
    first, each with its signature and changes; SourceError when git cannot list them."""
    with tempfile.TemporaryDirectory(prefix="batchq-signers-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(policy.allowed_signers(), encoding="utf-8")
        config = ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}"]
        if policy.revoked_keys:
            revoked = Path(tmp) / "revoked_keys"
            revoked.write_text(policy.revocations(), encoding="utf-8")
            config += ["-c", f"gpg.ssh.revocationFile={revoked}"]
        command = [str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"), *config, "log",
                   "--topo-order", "--reverse", "-c", "--raw", "--no-renames", "--no-abbrev",
                   "-z", "--format=%x01%H%x00%P%x00%G?%x00%GS%x00%GK%x00%ct%x00",
                   *revisions, "--"]
        try:
            done = run_with_deadline(command, cwd=mirror, env=dict(os.environ),
                                     timeout=timeout, errors="surrogateescape")
        except subprocess.TimeoutExpired:
            raise SourceError(f"verifying signatures took over {timeout:g} s") from None
    if done.returncode != 0:
        raise SourceError(redact_text(f"cannot list commits to verify: {done.stderr.strip()}"))
    records = []
    for chunk in done.stdout.split("\x01")[1:]:
        tokens = chunk.split("\0")
        sha, parents, status, principal, key, when = tokens[:6]
        records.append(CommitRecord(sha, tuple(parents.split()),
                                    _signature(status, principal, key, policy),
                                    float(when), _changes([t for t in tokens[6:] if t])))
    return records
