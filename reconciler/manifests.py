"""A batch's items: inline, or downloaded from `manifest.url` (DESIGN §3).

A remote manifest is a checkm batch manifest or a YAML/JSON list of items (or a mapping
with `items:`). Either way each item is checked against the same item schema as inline
items, ids are unique, and every URL must be allowed by the profile, so a manifest can
never send a worker somewhere the profile did not allow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.checkm import parse_checkm
from reconciler.fetch import FetchError, fetch_bytes
from reconciler.manifests_error import ManifestError
from reconciler.model import BatchSpec, Item, Profile
from reconciler.validation import DIGEST_HEX_DIGITS, item_validator
from reconciler.yamlsafe import DocumentError, load_document

__all__ = ["ManifestError", "resolve_items"]
MAX_ITEMS = 100_000


def check_items(raw: list[Any], source: str) -> list[Item]:
    """Validate item dicts (shape, unique ids, digest length); raise ManifestError."""
    if not raw:
        raise ManifestError(f"{source}: the manifest lists no items")
    if len(raw) > MAX_ITEMS:
        raise ManifestError(f"{source}: {len(raw)} items, more than the {MAX_ITEMS} allowed")
    validator = item_validator()
    seen: dict[str, int] = {}
    items = []
    for n, entry in enumerate(raw):
        errors = sorted(validator.iter_errors(entry), key=lambda e: list(e.path))
        if errors:
            where = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in errors[0].path)
            raise ManifestError(f"{source}: item [{n}]{where}: {errors[0].message}")
        item_id = entry["id"]
        if item_id in seen:
            raise ManifestError(f"{source}: item [{n}] has id {item_id!r}, already used by"
                                f" item [{seen[item_id]}]")
        seen[item_id] = n
        digest = entry.get("digest")
        if digest and len(digest["value"]) != DIGEST_HEX_DIGITS[digest["algorithm"]]:
            raise ManifestError(f"{source}: item {item_id!r}: a {digest['algorithm']} digest"
                                f" has {DIGEST_HEX_DIGITS[digest['algorithm']]} hex digits")
        items.append(Item.from_dict(entry))
    return items


def _parse(data: bytes, source: str) -> list[Item]:
    text = data.decode("utf-8", errors="replace")
    if text.lstrip().lower().startswith("#%checkm"):
        return check_items(parse_checkm(text, source), source)
    try:
        doc = load_document(data, source, max_bytes=len(data) + 1)
    except DocumentError as exc:
        raise ManifestError(str(exc)) from exc
    body = doc.data
    if isinstance(body, dict) and "items" in body:
        body = body["items"]
    if not isinstance(body, list):
        raise ManifestError(f"{source}: expected a checkm manifest, or a YAML/JSON list of"
                            " items (or a mapping with `items:`)")
    return check_items(body, source)


def resolve_items(spec: BatchSpec, profile: Profile, *, base_dir: Path | None,
                  max_bytes: int = 50 * 1024 * 1024, timeout: float = 30.0) -> list[Item]:
    """The batch's items; raise ManifestError with a message for the depositor."""
    if spec.items is not None:
        items = list(spec.items)
    else:
        url = spec.manifest_url or ""
        if not profile.allows(url):
            raise ManifestError(f"manifest URL {url} is not allowed by profile"
                                f" \"{profile.name}\" (allowed prefixes:"
                                f" {', '.join(profile.allowed_prefixes) or 'none'})")
        try:
            data = fetch_bytes(url, max_bytes=max_bytes, timeout=timeout, base_dir=base_dir)
        except FetchError as exc:
            raise ManifestError(f"cannot download the manifest: {exc}") from exc
        items = _parse(data, url)
    for item in items:
        if not profile.allows(item.url):
            raise ManifestError(f"item {item.id!r}: URL {item.url} is not allowed by profile"
                                f" \"{profile.name}\" (allowed prefixes:"
                                f" {', '.join(profile.allowed_prefixes) or 'none'})")
    return items
