"""A batch's items: inline, or downloaded from `manifest.url` (DESIGN §3).

A remote manifest is a checkm batch manifest (`reconciler.manifests.checkm`) or a YAML/JSON list of
items (or a mapping `{items: [...]}`). Whatever the format, each item is checked against
the same item schema as inline items (`schemas/batch.schema.json`), ids are unique, and
every URL — the manifest's own, every item's, inline ones too, and every redirect — must
pass the one URL check (`reconciler.support.urls`) against the profile's prefixes and the
operator's file roots, so a manifest can never send a worker somewhere the profile did
not allow. A relative `file:` manifest is read from Git at the batch's commit. The
download is bounded in time and size (`reconciler.manifests.fetch`), and YAML goes
through `reconciler.spec.yamlsafe`, which refuses alias bombs and deep nesting. Messages
never show a URL's credentials.

Objects (issue 8 §2): an item's rules beyond the schema (`reconciler.spec.objectrules`)
hold for manifest items as for inline ones, and every file URL and container URL passes
the URL check. The lines of an mrt-batch-manifest name object manifests: each is fetched
here (the same URL check on it and its redirects, the same size bound, within what is left
of the manifest's deadline, at most `OBJECT_MANIFESTS_AT_ONCE` at a time; this runs in the
background download of `reconciler.control.downloads`), must be an mrt-ingest-manifest,
and becomes the object's `files`; an error names the object and the object manifest's URL
and line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS, BatchSpec, Item, Profile
from reconciler.manifests.checkm import (
    MAX_ITEMS,
    OBJECT_PROFILE,
    ManifestError,
    parse_checkm,
    read_checkm,
)
from reconciler.manifests.fetch import FetchError, fetch_bytes
from reconciler.manifests.repofiles import RepoSnapshot
from reconciler.spec.objectrules import object_problems
from reconciler.spec.validation import PATTERN_HINTS, item_certainly_valid, item_validator
from reconciler.spec.yamlsafe import DocumentError, load_document
from reconciler.support.redaction import redact_text, redact_url
from reconciler.support.urls import UrlRefused, check_url, url_allowed

__all__ = ["MAX_ITEMS", "ManifestError", "check_items", "parse_manifest", "resolve_items"]

# A YAML manifest's expanded node count is bounded by its size (no alias bombs) and in all.
MAX_NODES = 4_000_000
OBJECT_MANIFESTS_AT_ONCE = 4  # object manifests of one batch downloaded at a time
MAX_OBJECT_FILES = 10_000  # lines of one object manifest (the schema's files.maxItems)
# Reads an object manifest's bytes from its URL (checked, bounded); raises ManifestError.
ObjectManifestReader = Callable[[str], bytes]


def _schema_message(error: Any) -> str:
    if error.validator == "anyOf" and all(set(b) == {"required"} for b in error.validator_value):
        names = [n for b in error.validator_value for n in b["required"]]
        return f"needs one of {', '.join(names[:-1])} or {names[-1]}"
    pattern = error.schema.get("pattern") if error.validator == "pattern" else None
    if isinstance(pattern, str) and pattern in PATTERN_HINTS:
        return f"{error.instance!r} {PATTERN_HINTS[pattern]}"
    return " ".join(str(error.message).split())


def check_items(raw: list[Any], source: str) -> list[Item]:
    """Validate item dicts like inline items (schema, unique ids, digest length) and build
    them; raise ManifestError naming the entry's index (and id, once known)."""
    if not raw:
        raise ManifestError(f"{source}: the manifest lists no items")
    if len(raw) > MAX_ITEMS:
        raise ManifestError(f"{source}: {len(raw)} items, more than the {MAX_ITEMS} allowed")
    validator = item_validator()
    fast = item_certainly_valid()
    seen: dict[str, int] = {}
    items = []
    for n, entry in enumerate(raw):
        if not fast(entry) and (errors := sorted(
                validator.iter_errors(entry), key=lambda e: [str(p) for p in e.path])):
            where = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in errors[0].path)
            raise ManifestError(f"{source}: item [{n}]{where}: {_schema_message(errors[0])}")
        item_id = entry["id"]
        if item_id in seen:
            raise ManifestError(f"{source}: item [{n}] has id {item_id!r}, already used by"
                                f" item [{seen[item_id]}]")
        seen[item_id] = n
        problems = object_problems(entry)
        if problems:
            at, message = problems[0]
            path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in at)
            raise ManifestError(f"{source}: item [{n}] ({item_id!r}){path}: {message}")
        digest = entry.get("digest")
        if digest and len(digest["value"]) != DIGEST_HEX_DIGITS[digest["algorithm"]]:
            raise ManifestError(f"{source}: item [{n}] ({item_id!r}): a {digest['algorithm']}"
                                f" digest has {DIGEST_HEX_DIGITS[digest['algorithm']]} hex"
                                f" digits, not {len(digest['value'])}")
        items.append(Item.from_dict(entry))
    return items


def _no_duplicate_keys(source: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ManifestError(f"{source}: duplicate key {key!r} in a JSON object")
            out[key] = value
        return out
    return hook


def _structured(data: bytes, source: str) -> Any:
    """The YAML or JSON document: JSON by the fast parser when it is JSON, else safe YAML."""
    if data.lstrip()[:1] in (b"[", b"{"):
        try:
            return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(source))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # flow-style YAML starts the same way; the YAML reader says what is wrong
        except RecursionError as exc:
            raise ManifestError(f"{source}: the JSON is nested too deeply") from exc
    try:
        doc = load_document(data, source, max_bytes=len(data),
                            max_nodes=min(len(data) + 1000, MAX_NODES))
    except DocumentError as exc:
        raise ManifestError(str(exc)) from exc
    return doc.data


def _decode_checkm(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(f"{source}:{line}: not valid UTF-8 (byte"
                            f" 0x{data[exc.start]:02x}); save the manifest as UTF-8") from None


def _object_files(item: dict[str, Any], read: ObjectManifestReader) -> None:
    """Replace an mrt-batch-manifest item's `objectManifest` by the files it lists."""
    url = item.pop("objectManifest")
    try:
        data = read(url)
        manifest = read_checkm(_decode_checkm(data, url), url, max_items=MAX_OBJECT_FILES)
        if manifest.profile != OBJECT_PROFILE:
            raise ManifestError(f"{url}: is an {manifest.profile}; an mrt-batch-manifest line"
                                f" names an object manifest ({OBJECT_PROFILE})")
    except ManifestError as exc:
        raise ManifestError(f"object {item['id']!r}: {exc}") from None
    item["files"] = [entry.file() for entry in manifest.entries]
    for entry in manifest.entries:
        for key, value in entry.object_fields().items():
            item.setdefault(key, value)
    item["metadata"] = {**item.get("metadata", {}), "objectManifest": redact_url(url)}


def expand_objects(raw: list[Any], source: str, read: ObjectManifestReader | None) -> None:
    """Fetch the object manifests that items name (`objectManifest`, from an
    mrt-batch-manifest), a few at a time, and give each item its files; the first error
    (in manifest order) is raised."""
    pending = [item for item in raw if isinstance(item, dict) and "objectManifest" in item]
    if not pending:
        return
    if read is None:
        raise ManifestError(f"{source}: an mrt-batch-manifest's object manifests can only be"
                            " read when the batch runs")
    with ThreadPoolExecutor(min(OBJECT_MANIFESTS_AT_ONCE, len(pending)),
                            thread_name_prefix="batchq-object-manifest") as pool:
        futures = [pool.submit(_object_files, item, read) for item in pending]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()


def parse_manifest(data: bytes, source: str, *,
                   read_object: ObjectManifestReader | None = None) -> list[Item]:
    """Items from a downloaded manifest: checkm, or a YAML/JSON list (or `{items: [...]}`).
    `read_object` fetches the object manifests an mrt-batch-manifest names."""
    head = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head:
        raise ManifestError(f"{source}: the manifest is empty")
    if head[:2] == b"#%":  # checkm, or a checkm without its first line (refused at line 1)
        raw = parse_checkm(_decode_checkm(data, source), source)
        expand_objects(raw, source, read_object)
        return check_items(raw, source)
    body = _structured(data, source)
    if isinstance(body, dict):
        unknown = sorted(set(body) - {"items"})
        if unknown:
            raise ManifestError(f"{source}: unknown field {unknown[0]!r} (a manifest mapping"
                                " has only `items:`)")
        if "items" not in body:
            raise ManifestError(f"{source}: a manifest mapping needs `items:`")
        body = body["items"]
    if body is None:
        raise ManifestError(f"{source}: the manifest is empty")
    if not isinstance(body, list):
        raise ManifestError(f"{source}: expected a checkm manifest, or a YAML/JSON list of"
                            " items (or a mapping with `items:`)")
    return check_items(body, source)


def resolve_items(spec: BatchSpec, profile: Profile, *, repo: RepoSnapshot | None = None,
                  file_roots: Sequence[str | Path] = (), max_bytes: int = 50 * 1024 * 1024,
                  timeout: float = 30.0) -> list[Item]:
    """The batch's items; raise ManifestError with a message for the depositor, in which no
    URL shows its credentials.

    Inline items are returned as they are; a manifest URL is downloaded (a relative `file:`
    URL from `repo`, the repository at the batch's commit; within `timeout` seconds and
    `max_bytes`) and parsed. Every URL must pass `check_url` with the profile's prefixes and
    the operator's `file_roots`.
    """
    try:
        return _resolve(spec, profile, repo, file_roots, max_bytes, timeout)
    except ManifestError as exc:
        raise ManifestError(redact_text(str(exc))) from None


def _resolve(spec: BatchSpec, profile: Profile, repo: RepoSnapshot | None,
             file_roots: Sequence[str | Path], max_bytes: int, timeout: float) -> list[Item]:
    by = f' by profile "{profile.name}"'
    if spec.items is not None:
        items = list(spec.items)
    elif spec.manifest_url:
        url = spec.manifest_url
        try:
            check_url(url, profile.allowed_prefixes, file_roots=file_roots, by=by)
        except UrlRefused as exc:
            raise ManifestError(f"manifest {exc}") from None
        ends_by = time.monotonic() + timeout  # the object manifests' deadline too
        try:
            data = fetch_bytes(url, max_bytes=max_bytes, timeout=timeout, repo=repo,
                               file_roots=file_roots, allowed=lambda target: url_allowed(
                                   target, profile.allowed_prefixes, file_roots=file_roots))
        except FetchError as exc:
            raise ManifestError(f"cannot download the manifest: {exc}") from exc

        def read_object(object_url: str) -> bytes:
            try:
                check_url(object_url, profile.allowed_prefixes, file_roots=file_roots, by=by)
            except UrlRefused as exc:
                raise ManifestError(f"object manifest {exc}") from None
            left = ends_by - time.monotonic()
            if left <= 0:
                raise ManifestError(f"cannot download the object manifest {object_url}: the"
                                    f" manifest's {timeout:g} s deadline has passed")
            try:
                return fetch_bytes(object_url, max_bytes=max_bytes, timeout=left, repo=repo,
                                   file_roots=file_roots, allowed=lambda target: url_allowed(
                                       target, profile.allowed_prefixes, file_roots=file_roots))
            except FetchError as exc:
                raise ManifestError(f"cannot download the object manifest {object_url}:"
                                    f" {exc}") from exc

        items = parse_manifest(data, url, read_object=read_object)
    else:
        raise ManifestError("the batch has neither manifest items nor a manifest URL")
    for item in items:
        urls = item.file_urls()
        userinfos = set()
        for file_url in urls:
            try:
                userinfos.add(check_url(file_url, profile.allowed_prefixes,
                                        file_roots=file_roots, by=by).userinfo)
            except UrlRefused as exc:
                raise ManifestError(f"item {item.id!r}: {exc}") from None
        if len(userinfos - {None}) > 1:
            raise ManifestError(f"item {item.id!r}: its files' URLs carry different"
                                " credentials (user:password@); the files of one object"
                                " share one, or none")
    return items
