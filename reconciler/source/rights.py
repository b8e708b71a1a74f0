"""What changing one file needs, and whether a signer has it (README: Who may change what).

Pure functions of the file's two versions and the signer: no Git, no store.
- `profiles/` and `queue.yaml`: admins only (a profile's job.command runs on the
  reconciler's host or cluster).
- Deleting a batch file: admins only.
- Adding a batch file: a depositor, in their own name (spec.depositor.email is their
  principal), with the admin fields at their defaults.
- Editing a batch file: its depositor (the email in the version before the change), for
  every field but the admin ones: spec.state, spec.restarts, spec.priority,
  spec.depositor.email (who owns it) and metadata.name (a rename retires the old batch).
A version that does not parse as a mapping has no fields: only its ownership is judged
(it cannot take effect anyway; the sync shows its error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.domain.model import DEFAULT_PRIORITY
from reconciler.domain.states import RequestedState
from reconciler.source.signatures import Signature
from reconciler.spec.policy import Role
from reconciler.spec.yamlsafe import DocumentError, load_document

ADMIN_FIELDS: dict[tuple[str, ...], Any] = {  # path in the document -> its default
    ("spec", "state"): RequestedState.ACTIVE,
    ("spec", "restarts"): {},
    ("spec", "priority"): DEFAULT_PRIORITY,
    ("spec", "depositor", "email"): None,
    ("metadata", "name"): None,
}


@dataclass(frozen=True)
class Need:
    """One thing a change does that needs a right: an admin's (`admin`), or being the
    batch's depositor (`owner`; "" when any depositor will do)."""

    field: str  # "" for the file as a whole
    why: str
    admin: bool = False
    owner: str = ""


def _parse(data: bytes | None) -> dict[str, Any] | None:
    """The file's mapping, read as every untrusted file is (yamlsafe); None if it has none."""
    if data is None:
        return None
    try:
        loaded = load_document(data, "").data
    except DocumentError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _get(doc: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return ADMIN_FIELDS[path]
        node = node[key]
    return node


def _email(doc: dict[str, Any] | None) -> str:
    value = _get(doc, ("spec", "depositor", "email"))
    return value.lower() if isinstance(value, str) else ""


def needs(path: str, old: bytes | None, new: bytes | None) -> list[Need]:
    """What changing `path` from `old` to `new` (None: absent) needs."""
    if path.startswith("profiles/"):
        return [Need("", "only an admin may change a profile (its job.command runs on the"
                     " reconciler's host or cluster)", admin=True)]
    if not path.startswith("batches/"):
        return [Need("", f"only an admin may change {path}", admin=True)]
    if new is None:
        return [Need("", "only an admin may delete a batch file", admin=True)]
    before, after = _parse(old), _parse(new)
    if old is None:
        owner = _email(after)
        out = [Need("", f"a depositor adds batches in their own name only (spec.depositor"
                    f".email is \"{owner}\")", owner=owner)] if after is not None else [
            Need("", "a new batch file")]
        return out + [Need(".".join(f), f"only an admin may set {'.'.join(f)}", admin=True)
                      for f, default in ADMIN_FIELDS.items()
                      if default is not None and _get(after, f) != default]
    owner = _email(before) if before is not None else _email(after)
    out = [Need("", f"only its depositor ({owner or 'unknown'}) or an admin may edit"
                " this batch", owner=owner or "\0")]  # "\0": no depositor matches
    if before is not None and after is not None:
        out += [Need(".".join(f), f"only an admin may change {'.'.join(f)}", admin=True)
                for f in ADMIN_FIELDS if _get(before, f) != _get(after, f)]
    return out


def refused(signature: Signature, wanted: list[Need], *, merge: bool) -> list[Need]:
    """The needs `signature`'s signer does not meet (all of them for a merge commit's own
    changes unless an admin signed it: a forge only combines what its parents did)."""
    role = signature.role
    if role == Role.ADMIN:
        return []
    if role != Role.DEPOSITOR or merge:
        return wanted
    return [n for n in wanted
            if n.admin or (n.owner and n.owner.lower() != signature.principal.lower())]


def reason(signature: Signature, failed: list[Need], *, merge: bool) -> str:
    """Why, in one line, for `status` and the page."""
    if signature.role is None:
        return "a change must be signed by a key of the access policy"
    if merge and signature.role != Role.ADMIN:
        return ("a merge commit may only combine its parents (each judged by its own signer);"
                " this one changes the file itself")
    if signature.role == Role.FORGE:
        return "a forge key signs merge commits only"
    admin = [n for n in failed if n.admin]
    return "; ".join(n.why for n in (admin or failed))
