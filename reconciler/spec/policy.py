"""The access policy: who may change what in the repository (README: Who may change what).

The operator keeps it outside the repository (a file; on Kubernetes a ConfigMap mounted as
one), so no commit can grant itself rights. It is checked against
`schemas/accesspolicy.schema.json` with `file:line:col` errors like every other file, plus
what a schema cannot say: a principal listed twice, one key given to two principals
(git would then name either of them as the signer), or a security-key (sk-*) key where
the builtin check (spec.verify: builtin, the default) cannot verify its signatures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.spec.validation import Problem, schema_problems
from reconciler.spec.yamlsafe import DocumentError, read_document

KIND = "AccessPolicy"
log = logging.getLogger(__name__)


class Mode(StrEnum):
    OFF = "off"  # no verification: every commit applies (the demo's default)
    WARN = "warn"  # verify and show refusals, but apply every change
    ENFORCE = "enforce"  # a refused change is not applied: the last authorized one stays


class Verification(StrEnum):
    BUILTIN = "builtin"  # SSHSIG checked in-process (source/sshverify.py): the default
    GIT = "git"  # git's own tooling: ssh-keygen -Y find-principals and -Y verify


class Role(StrEnum):
    DEPOSITOR = "depositor"
    ADMIN = "admin"
    FORGE = "forge"


@dataclass(frozen=True)
class Signer:
    principal: str
    role: Role
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AccessPolicy:
    mode: Mode = Mode.OFF
    signers: tuple[Signer, ...] = ()
    revoked_keys: tuple[str, ...] = ()
    trusted_commit: str = ""  # its history is authorized as is (where a fresh state starts)
    source: str = ""  # the file it was read from, for messages
    verify: Verification = Verification.BUILTIN
    roles: dict[str, Role] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.roles.update((s.principal, s.role) for s in self.signers)

    def role_of(self, principal: str) -> Role | None:
        return self.roles.get(principal)

    def allowed_signers(self) -> str:
        """git's gpg.ssh.allowedSignersFile: `principal key` a line (ssh-keygen(1))."""
        return "".join(f"{s.principal} {_key_only(k)}\n" for s in self.signers for k in s.keys)

    def revocations(self) -> str:
        """git's gpg.ssh.revocationFile: one public key a line (ssh-keygen -Y verify -r)."""
        return "".join(f"{_key_only(k)}\n" for k in self.revoked_keys)


class PolicyInvalid(ValueError):
    """The policy file cannot be used; `problems` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _key_only(line: str) -> str:
    """`type base64` without the comment: what identifies the key."""
    return " ".join(line.split()[:2])


def _cross_checks(doc: Any) -> list[Problem]:
    problems: list[Problem] = []
    principals: dict[str, int] = {}
    keys: dict[str, str] = {}
    builtin = doc.data["spec"].get("verify", Verification.BUILTIN) == Verification.BUILTIN
    for i, signer in enumerate(doc.data["spec"].get("signers") or []):
        name = signer["principal"]
        if name in principals:
            problems.append(Problem.at(
                doc, doc.position(("spec", "signers", i, "principal")),
                f"spec.signers[{i}].principal: \"{name}\" is listed already (signers"
                f"[{principals[name]}]); give each principal one entry with all its keys"))
        principals.setdefault(name, i)
        for j, key in enumerate(signer["keys"]):
            if builtin and key.startswith("sk-"):  # sshverify.py checks no security key
                problems.append(Problem.at(
                    doc, doc.position(("spec", "signers", i, "keys", j)),
                    f"spec.signers[{i}].keys[{j}]: a security-key ({key.split()[0]})"
                    " signature is checked only with spec.verify: git; give an ed25519 key,"
                    " or set verify: git"))
            owner = keys.setdefault(_key_only(key), name)
            if owner != name:
                problems.append(Problem.at(
                    doc, doc.position(("spec", "signers", i, "keys", j)),
                    f"spec.signers[{i}].keys[{j}]: this key is also \"{owner}\"'s; a key"
                    " belongs to one principal"))
    return problems


def load_policy(path: str | Path) -> AccessPolicy:
    """The policy in `path`; PolicyInvalid with file:line:col problems otherwise."""
    try:
        doc = read_document(Path(path), str(path))
    except DocumentError as exc:
        raise PolicyInvalid([Problem.from_error(exc)]) from None
    except OSError as exc:
        why = f"cannot read the access policy: {exc.strerror or exc}"
        raise PolicyInvalid([Problem(str(path), 1, 1, why)]) from None
    if not isinstance(doc.data, dict):
        raise PolicyInvalid([Problem.at(doc, doc.position(), "expected a mapping with"
                                        " apiVersion, kind: AccessPolicy and spec")])
    spec = doc.data.get("spec")
    if isinstance(spec, dict) and spec.get("mode") is False:  # YAML 1.1 reads `off` so
        raise PolicyInvalid([Problem.at(doc, doc.position(("spec", "mode")),
                                        'spec.mode: write "off" in quotes (YAML reads a bare'
                                        " off as false)")])
    problems = schema_problems(doc, KIND)
    if problems:
        raise PolicyInvalid(problems)
    problems = _cross_checks(doc)
    if problems:
        raise PolicyInvalid(problems)
    spec = doc.data["spec"]
    return AccessPolicy(
        mode=Mode(spec["mode"]),
        signers=tuple(Signer(s["principal"], Role(s["role"]), tuple(s["keys"]))
                      for s in spec.get("signers") or []),
        revoked_keys=tuple(spec.get("revokedKeys") or []),
        trusted_commit=spec.get("trustedCommit", ""),
        source=str(path),
        verify=Verification(spec.get("verify", Verification.BUILTIN)),
    )


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows the symlink a ConfigMap update swaps
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PolicyFile:
    """The policy file, read again when it changes (kubelet swaps a mounted ConfigMap's
    file in place): a valid new version takes over at the next sync, so a revoked key stops
    counting without a restart; an invalid one is logged once with its file:line problems,
    and the last valid policy stays."""

    def __init__(self, path: str, policy: AccessPolicy) -> None:
        self.path = path
        self.policy = policy
        self.stamp = _stamp(path)

    def current(self) -> AccessPolicy:
        stamp = _stamp(self.path)
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                self.policy = load_policy(self.path)
                log.warning("access policy %s read again: mode %s", self.path,
                            self.policy.mode)
            except PolicyInvalid as exc:
                log.error("access policy %s changed but cannot be used; the last valid one"
                          " stays:\n%s", self.path, exc)
        return self.policy
