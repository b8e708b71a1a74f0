"""Merritt checkm batch manifests (`#%checkm_0.7`), one item (so one job) per data line.

Profiles: mrt-single-file-batch-manifest (each line a file), mrt-container-batch-manifest
(each line a container: zip, tar, ...), mrt-batch-manifest (each line an object manifest,
itself a checkm file listing the object's files). In every case a line is one object to
ingest, so its `nfo:fileUrl` is the item's url.

The format as Merritt writes and accepts it:

    #%checkm_0.7
    #%profile | http://uc3.cdlib.org/registry/ingest/manifest/mrt-single-file-batch-manifest
    #%prefix | nfo: | http://www.semanticdesktop.org/ontologies/2007/03/22/nfo#
    #%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | ...
    http://host/a.tif | sha256 | 9f86... | 48213 | | a.tif | | map-001 | Ann | A map | 2001
    #%eof

Field names are matched without regard to case (`nfo:fileURL` occurs), `#%columns` is read
as `#%fields`, other `#%` directives (`#%prefix`) and `#` comments are skipped, and a line
may leave out trailing empty fields (Merritt's own tests do); more values than fields is an
error. A `|` inside a value is written `%7C`. Anything after `#%eof` is ignored.

`ManifestError` is defined here, the leaf module, and re-exported by `reconciler.manifests.resolve`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS, is_hex_digest

PROFILES = (
    "mrt-single-file-batch-manifest",
    "mrt-container-batch-manifest",
    "mrt-batch-manifest",
)
PROFILE_BASE = "http://uc3.cdlib.org/registry/ingest/manifest/"
MAX_ITEMS = 100_000
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_URL = re.compile(r"(https?://|file:)\S+", re.IGNORECASE)

FILE_URL = "nfo:fileUrl"
KNOWN_FIELDS = (
    FILE_URL, "nfo:hashAlgorithm", "nfo:hashValue", "nfo:fileSize", "nfo:fileLastModified",
    "nfo:fileName", "mrt:primaryIdentifier", "mrt:localIdentifier", "mrt:creator",
    "mrt:title", "mrt:date",
)
_CANONICAL = {name.lower(): name for name in KNOWN_FIELDS}
# checkm field -> item metadata key
METADATA = {
    "mrt:creator": "creator",
    "mrt:date": "date",
    "mrt:primaryIdentifier": "primaryIdentifier",
    "mrt:localIdentifier": "localIdentifier",
    "nfo:fileName": "fileName",
    "nfo:fileLastModified": "lastModified",
}


class ManifestError(RuntimeError):
    """The batch's manifest cannot be read or is invalid; the message says where and why."""


def sanitise_id(raw: str) -> str:
    """`raw` as an item id (letters, digits, `.`, `_`, `-`; first a letter or digit), or ""
    when nothing usable is left. Accents are dropped (é -> e), anything else becomes `_`."""
    text = unicodedata.normalize("NFKD", raw.strip())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return text.lstrip("._-")[:128]


def normalise_algorithm(name: str) -> str | None:
    """`SHA-256`, `sha_256`, `SHA256` -> `sha256`; `MD5` -> `md5`; None if unsupported."""
    key = re.sub(r"[-_\s]", "", name.lower())
    return key if key in DIGEST_HEX_DIGITS else None


def _profile_name(value: str) -> str | None:
    """The profile's name from its URL (Merritt matches on the name; hosts vary)."""
    name = value.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return name if name in PROFILES else None


def _decode(value: str) -> str:
    return re.sub("%7c", "|", value, flags=re.IGNORECASE)


class _Parser:
    def __init__(self, source: str, max_items: int) -> None:
        self.source = source
        self.max_items = max_items
        self.profile: str | None = None
        self.fields: list[str] | None = None
        self.fields_line = 0
        self.items: list[dict[str, Any]] = []
        self.id_lines: dict[str, tuple[int, str]] = {}

    def error(self, n: int, message: str) -> ManifestError:
        return ManifestError(f"{self.source}:{n}: {message}")

    def directive(self, n: int, line: str) -> bool:
        """Handle a `#%` line; return False at `#%eof`."""
        parts = [p.strip() for p in line.split("|")]
        key = parts[0].lower()
        if key == "#%eof":
            return False
        if key == "#%profile":
            value = parts[1] if len(parts) > 1 else ""
            self.profile = _profile_name(value)
            if self.profile is None:
                raise self.error(n, f"unknown manifest profile {value!r} (expected"
                                    f" {PROFILE_BASE}<name> with <name> one of"
                                    f" {', '.join(PROFILES)})")
        elif key in ("#%fields", "#%columns"):
            names = parts[1:]
            if len(names) == 1 and " " in names[0]:  # `#%columns | a b c` (older form)
                names = names[0].split()
            fields = [_CANONICAL.get(name.lower(), name) for name in names]
            dupes = sorted({f for f in fields if fields.count(f) > 1})
            if dupes:
                raise self.error(n, f"field {dupes[0]} is listed twice")
            if FILE_URL not in fields:
                raise self.error(n, f"the {parts[0]} header has no {FILE_URL}")
            self.fields, self.fields_line = fields, n
        return True

    def data(self, n: int, line: str) -> None:
        if self.profile is None:
            raise self.error(n, "data line before the #%profile header")
        if self.fields is None:
            raise self.error(n, "data line before the #%fields header")
        values = [v.strip() for v in line.split("|")]
        if len(values) > len(self.fields):
            raise self.error(n, f"{len(values)} values, but the #%fields header (line"
                                f" {self.fields_line}) names {len(self.fields)} fields")
        if len(self.items) >= self.max_items:
            raise self.error(n, f"more than {self.max_items} items")
        row = dict(zip(self.fields, values, strict=False))
        self.items.append(self.item(n, row))

    def item(self, n: int, row: dict[str, str]) -> dict[str, Any]:
        url = row.get(FILE_URL, "")
        if not url:
            raise self.error(n, f"missing {FILE_URL}")
        if not _URL.fullmatch(url):
            raise self.error(n, f"{FILE_URL} {url!r} is not an http://, https:// or file: URL")
        raw_id = (row.get("mrt:localIdentifier") or row.get("nfo:fileName") or "").strip()
        item_id = sanitise_id(_decode(raw_id)) or f"line-{n}"
        if item_id in self.id_lines:
            first, first_raw = self.id_lines[item_id]
            earlier = f" (from {first_raw!r})" if first_raw != raw_id else ""
            raise self.error(n, f"item id {item_id!r} (from {raw_id!r}) is already used on"
                                f" line {first}{earlier}")
        self.id_lines[item_id] = (n, raw_id)
        item: dict[str, Any] = {"id": item_id, "url": url}
        algorithm, value = row.get("nfo:hashAlgorithm", ""), row.get("nfo:hashValue", "")
        if algorithm or value:
            if not algorithm:
                raise self.error(n, "nfo:hashValue is given without nfo:hashAlgorithm")
            norm = normalise_algorithm(algorithm)
            if norm is None:
                raise self.error(n, f"unknown hash algorithm {algorithm!r} (md5, sha256,"
                                    " sha512)")
            if not value:
                raise self.error(n, f"nfo:hashAlgorithm {algorithm} is given without"
                                    " nfo:hashValue")
            value = value.lower()
            if not is_hex_digest(norm, value):
                raise self.error(n, f"hash value {value!r} is not a {norm} digest"
                                    f" ({DIGEST_HEX_DIGITS[norm]} hex digits)")
            item["digest"] = {"algorithm": norm, "value": value}
        size = row.get("nfo:fileSize", "")
        if size:
            if not re.fullmatch(r"[0-9]{1,19}", size):
                raise self.error(n, f"file size {size!r} is not a whole number")
            item["size"] = int(size)
        if row.get("mrt:title"):
            item["title"] = _decode(row["mrt:title"])
        metadata = {key: _decode(row[field]) for field, key in METADATA.items() if row.get(field)}
        metadata["profile"] = self.profile or ""
        item["metadata"] = metadata
        return item


def parse_checkm(text: str, source: str, *, max_items: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """Items (shaped like a batch file's inline items) from a checkm batch manifest.

    Raise ManifestError naming `source:line`. Ids come from mrt:localIdentifier, else
    nfo:fileName, else `line-<n>`, made safe by `sanitise_id`; ids that end up equal are an
    error naming both lines, never silently merged.
    """
    lines = text.removeprefix("\ufeff").splitlines()
    first = next((n for n, line in enumerate(lines, start=1) if line.strip()), None)
    if first is None or not lines[first - 1].strip().lower().startswith("#%checkm"):
        raise ManifestError(f"{source}:{first or 1}: not a checkm manifest (the first line"
                            " must be #%checkm_0.7)")
    parser = _Parser(source, max_items)
    for n, raw in enumerate(lines[first:], start=first + 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#%"):
            if not parser.directive(n, line):
                break
        elif not line.startswith("#"):
            parser.data(n, line)
    if not parser.items:
        raise ManifestError(f"{source}:{len(lines)}: the manifest lists no items")
    return parser.items
