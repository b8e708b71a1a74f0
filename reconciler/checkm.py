"""Merritt checkm batch manifests (`#%checkm_0.7`), one item per data line.

Profiles: mrt-single-file-batch-manifest (each line a file), mrt-container-batch-manifest
(each line a container), mrt-batch-manifest (each line an object manifest). In every case
a line is one object to ingest, so one item, so one job.
"""

from __future__ import annotations

import re
from typing import Any

from reconciler.manifests_error import ManifestError

PROFILES = {
    "mrt-single-file-batch-manifest",
    "mrt-container-batch-manifest",
    "mrt-batch-manifest",
}
ALGORITHMS = {"md5": "md5", "sha256": "sha256", "sha-256": "sha256", "sha512": "sha512",
              "sha-512": "sha512"}
META = {"mrt:creator": "creator", "mrt:date": "date", "mrt:primaryIdentifier":
        "primaryIdentifier", "mrt:localIdentifier": "localIdentifier", "nfo:fileName":
        "fileName", "nfo:fileLastModified": "lastModified"}
ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _sanitise(raw: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", raw.strip())
    cleaned = cleaned.lstrip("._-")[:128]
    return cleaned


def parse_checkm(text: str, source: str) -> list[dict[str, Any]]:
    """Items (shaped like inline batch items) from a checkm manifest; raise ManifestError."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().lower().startswith("#%checkm"):
        raise ManifestError(f"{source}:1: not a checkm manifest (first line must be"
                            " #%checkm_0.7)")
    fields: list[str] | None = None
    profile = ""
    items: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#%"):
            parts = [p.strip() for p in stripped.split("|")]
            key = parts[0].lower()
            if key == "#%profile":
                profile = parts[1].rstrip("/").rsplit("/", 1)[-1] if len(parts) > 1 else ""
                if profile not in PROFILES:
                    raise ManifestError(f"{source}:{n}: unknown manifest profile"
                                        f" {parts[1] if len(parts) > 1 else ''!r}")
            elif key == "#%fields":
                fields = parts[1:]
            elif key == "#%eof":
                break
            continue
        if stripped.startswith("#"):
            continue
        if fields is None:
            raise ManifestError(f"{source}:{n}: data line before the #%fields header")
        values = [v.strip() for v in stripped.split("|")]
        if len(values) > len(fields):
            raise ManifestError(f"{source}:{n}: {len(values)} values but {len(fields)} fields")
        row = dict(zip(fields, values + [""] * (len(fields) - len(values)), strict=True))
        items.append(_item(row, profile, source, n, first_line))
    if not items:
        raise ManifestError(f"{source}: the manifest lists no items")
    return items


def _item(row: dict[str, str], profile: str, source: str, n: int,
          first_line: dict[str, int]) -> dict[str, Any]:
    url = row.get("nfo:fileUrl", "")
    if not url:
        raise ManifestError(f"{source}:{n}: missing nfo:fileUrl")
    raw_id = row.get("mrt:localIdentifier") or row.get("nfo:fileName") or f"line-{n}"
    item_id = _sanitise(raw_id) or f"line-{n}"
    if not ID_OK.match(item_id):
        item_id = f"line-{n}"
    if item_id in first_line:
        raise ManifestError(f"{source}:{n}: item id {item_id!r} (from {raw_id!r}) is already"
                            f" used on line {first_line[item_id]}")
    first_line[item_id] = n
    item: dict[str, Any] = {"id": item_id, "url": url}
    alg, value = row.get("nfo:hashAlgorithm", ""), row.get("nfo:hashValue", "")
    if alg or value:
        norm = ALGORITHMS.get(alg.lower().replace("_", "-"))
        if norm is None:
            raise ManifestError(f"{source}:{n}: unknown hash algorithm {alg!r}"
                                " (md5, sha256, sha512)")
        item["digest"] = {"algorithm": norm, "value": value.lower()}
    size = row.get("nfo:fileSize", "")
    if size:
        if not size.isdigit():
            raise ManifestError(f"{source}:{n}: file size {size!r} is not a whole number")
        item["size"] = int(size)
    if row.get("mrt:title"):
        item["title"] = row["mrt:title"]
    meta = {name: row[key] for key, name in META.items() if row.get(key)}
    meta["profile"] = profile
    item["metadata"] = meta
    return item
