"""OCFL inventories as plain data: read the head state, plan the next version.

Pure functions (no I/O), so both targets share them. Content is addressed by sha512
within the object: a file whose sha512 the manifest already lists is not stored again,
and the `fixity` block keeps the other digests (sha256, and md5 or sha1 when a manifest
gave one) so that a restart can compare a manifest's digest with what is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from reconciler.storage.layout import SPEC
from reconciler.storage.model import ObjectInfo, StagedFile, StorageError

DIGEST = "sha512"
INVENTORY = "inventory.json"
SIDECAR = f"{INVENTORY}.{DIGEST}"
INVENTORY_TYPE = f"https://ocfl.io/{SPEC}/spec/#inventory"
CONTENT = "content"
# hashlib names that OCFL's fixity block knows by the same name; others are not recorded
FIXITY = ("sha256", "sha1", "md5")
_VERSION = re.compile(r"v([1-9][0-9]*)")

Inventory = dict[str, Any]


def encode(inventory: Inventory) -> tuple[bytes, bytes]:
    """The inventory file and its sidecar (`<sha512> inventory.json`)."""
    data = (json.dumps(inventory, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
    return data, sidecar_for(data)


def sidecar_for(data: bytes) -> bytes:
    return f"{hashlib.sha512(data).hexdigest()} {INVENTORY}\n".encode()


def sidecar_matches(data: bytes, sidecar: bytes | None) -> bool:
    if sidecar is None:
        return False
    words = sidecar.decode("utf-8", "replace").split()
    return bool(words) and words[0].lower() == hashlib.sha512(data).hexdigest()


def decode(data: bytes, where: str) -> Inventory:
    try:
        inventory = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{where}: not a JSON inventory ({exc})") from None
    if (not isinstance(inventory, dict) or inventory.get("digestAlgorithm") != DIGEST
            or not isinstance(inventory.get("versions"), dict)
            or not isinstance(inventory.get("manifest"), dict)
            or inventory.get("head") not in inventory["versions"]):
        raise StorageError(f"{where}: not an OCFL inventory batchq can extend"
                           f" (it needs digestAlgorithm {DIGEST} and a head version)")
    return inventory


def version_number(name: str) -> int:
    match = _VERSION.fullmatch(name)
    if match is None:
        raise StorageError(f"version {name!r} is not named v1, v2, ... (zero-padded names"
                           " are not extended by batchq)")
    return int(match.group(1))


def head_state(inventory: Inventory) -> dict[str, str]:
    """name -> sha512 of the head version."""
    state = inventory["versions"][inventory["head"]]["state"]
    return {name: digest for digest, names in state.items() for name in names}


def stored_digests(inventory: Inventory) -> dict[str, dict[str, str]]:
    """name -> {sha512, and each fixity algorithm that covers it} for the head version."""
    by_path: dict[str, dict[str, str]] = {}
    for algorithm, block in (inventory.get("fixity") or {}).items():
        for digest, paths in block.items():
            for path in paths:
                by_path.setdefault(path, {})[algorithm] = digest
    out = {}
    for name, digest in head_state(inventory).items():
        digests = {DIGEST: digest}
        for path in inventory["manifest"].get(digest, ()):
            for algorithm, value in by_path.get(path, {}).items():
                digests.setdefault(algorithm, value)
        out[name] = digests
    return out


def check_names(files: Sequence[StagedFile]) -> None:
    """Logical paths must be relative, clean, unique, and no one a directory of another."""
    seen: set[str] = set()
    for f in files:
        parts = f.name.split("/")
        if not f.name or any(p in ("", ".", "..") for p in parts) or "\\" in f.name:
            raise StorageError(f"file name {f.name!r} is not a clean relative path")
        if DIGEST not in f.digests:
            raise StorageError(f"file {f.name!r} has no {DIGEST} digest")
        if f.name in seen:
            raise StorageError(f"file name {f.name!r} occurs twice in the object")
        seen.add(f.name)
    for name in seen:
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise StorageError(f"file name {name!r} lies inside the file"
                                   f" {'/'.join(parts[:i])!r}")


@dataclass(frozen=True)
class Plan:
    """The next version: its inventory, and the files whose bytes must be written."""

    version: str
    inventory: Inventory
    copies: tuple[tuple[str, StagedFile], ...]  # (content path, file)
    reused: int


def version_message(info: ObjectInfo, message: str) -> str:
    """The version's message: the deposit's, then the object's descriptive metadata (what,
    who, when and its local identifiers, the fields Merritt keeps in an object's ERC), so
    they are preserved in the inventory with the version that deposited them."""
    lines = [message]
    for label, value in (("what", info.title), ("who", info.creator), ("when", info.date)):
        if value:
            lines.append(f"{label}: {value}")
    if info.local_ids:
        lines.append("local identifiers: " + "; ".join(info.local_ids))
    return "\n".join(lines)


def plan_version(previous: Inventory | None, info: ObjectInfo, files: Sequence[StagedFile],
                 *, message: str, created: str) -> Plan | None:
    """The next version holding exactly `files`, or None when the head already does."""
    check_names(files)
    state = {f.name: f.digests[DIGEST].lower() for f in files}
    if previous is not None and head_state(previous) == state:
        return None
    number = 1 if previous is None else version_number(previous["head"]) + 1
    version = f"v{number}"
    manifest: dict[str, list[str]] = {d: list(p) for d, p in
                                      (previous or {}).get("manifest", {}).items()}
    fixity: dict[str, dict[str, list[str]]] = {
        a: {d: list(p) for d, p in block.items()}
        for a, block in (previous or {}).get("fixity", {}).items()}
    copies: list[tuple[str, StagedFile]] = []
    reused = 0
    for f in sorted(files, key=lambda f: f.name):
        digest = state[f.name]
        if digest in manifest:
            reused += 1
            continue
        path = f"{version}/{CONTENT}/{f.name}"
        manifest[digest] = [path]
        copies.append((path, f))
        for algorithm in FIXITY:
            if algorithm in f.digests:
                fixity.setdefault(algorithm, {}).setdefault(
                    f.digests[algorithm].lower(), []).append(path)
    version_state: dict[str, list[str]] = {}
    for name, digest in sorted(state.items()):
        version_state.setdefault(digest, []).append(name)
    versions = dict((previous or {}).get("versions", {}))
    versions[version] = {"created": created, "message": version_message(info, message),
                         "state": version_state,
                         "user": {"name": f"batchq (batch {info.batch}, item {info.item})",
                                  "address": f"urn:batchq:batch:{quote(info.batch, safe='')}"}}
    inventory: Inventory = {
        "id": info.object_id, "type": INVENTORY_TYPE, "digestAlgorithm": DIGEST,
        "head": version, "manifest": manifest, "versions": versions,
    }
    if fixity:
        inventory["fixity"] = fixity
    if previous is not None and previous.get("id") != info.object_id:
        raise StorageError(f"the object at this path has id {previous.get('id')!r},"
                           f" not {info.object_id!r}")
    return Plan(version, inventory, tuple(copies), reused)


def extends(newer: Inventory, older: Inventory) -> bool:
    """Is `newer` the next version of `older` (same id, same earlier versions)?"""
    return (newer.get("id") == older.get("id")
            and version_number(newer["head"]) == version_number(older["head"]) + 1
            and all(newer["versions"].get(v) == s for v, s in older["versions"].items()))
