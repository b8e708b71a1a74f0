r"""Merritt checkm manifests (`#%checkm_0.7`), read as Merritt's own parser reads them.

Batch profiles: mrt-single-file-batch-manifest (each line a file), mrt-container-batch-manifest
(each line a container: zip, tar, ...), mrt-batch-manifest (each line an object manifest,
itself a checkm file listing the object's files). Object profile: mrt-ingest-manifest (every
line a file of ONE object). A single-file or container line is one item (one job); an object
manifest of one file is one item; objects of several files, and the object manifests an
mrt-batch-manifest names, are parsed but refused for now (issue 8 §2: an item is an object).

The format as Merritt writes and accepts it:

    #%checkm_0.7
    #%profile | http://uc3.cdlib.org/registry/ingest/manifest/mrt-single-file-batch-manifest
    #%prefix | nfo: | http://www.semanticdesktop.org/ontologies/2007/03/22/nfo#
    #%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | ...
    http://host/a.tif | sha256 | 9f86... | 48213 | | a.tif | | map-001 | Ann | A map | 2001
    #%eof

What Merritt's parser does (CDLUC3/mrt-core2 `core/.../Checkm.java`), and so this one:
- a header's value follows its name after any run of spaces and `|` (`squeezeHeader`), so
  `#%profile <url>` and `#%profile | <url>` are the same; field names are matched without
  regard to case (`nfo:fileURL` occurs) and `#%columns` is read as `#%fields`;
- a line is split on `|` with the blanks around it (`\s*\|\s*`, Java's `split`, which
  drops trailing empty values), so a line may leave out trailing empty fields or end in ` |`;
  a line with more non-empty values than fields is refused here (Merritt drops them unread);
- values but the URL are decoded as Merritt's `dec` does: `%20` is a space, `%7c` a `|`;
  nothing else is decoded (a `%41` stays `%41`), and the URL is taken as written;
- `mrt:localIdentifier` may hold several identifiers separated by `;` (mrt-ingest's
  localid tests): the first one names the item, all are kept;
- a digest algorithm is one of Merritt's (`MessageDigestType`) that Python computes
  (`DIGEST_HEX_DIGITS`); adler32, crc32 and md2 are refused by name.
Other `#%` directives (`#%prefix`) and `#` comments are skipped; anything after `#%eof` is
ignored.

`ManifestError` is defined here, the leaf module, and re-exported by `reconciler.manifests.resolve`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS, UNVERIFIABLE_DIGESTS, is_hex_digest

BATCH_PROFILES = (
    "mrt-single-file-batch-manifest",
    "mrt-container-batch-manifest",
    "mrt-batch-manifest",
)
OBJECT_PROFILE = "mrt-ingest-manifest"
PROFILES = (*BATCH_PROFILES, OBJECT_PROFILE)
PROFILE_BASE = "http://uc3.cdlib.org/registry/ingest/manifest/"
MAX_ITEMS = 100_000
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_URL = re.compile(r"(https?://|file:)\S+", re.IGNORECASE)
_DIRECTIVE = re.compile(r"#%[A-Za-z0-9_]*")
NOT_YET = "objects of several files are not supported yet (issue 8 §2)"

FILE_URL = "nfo:fileUrl"
KNOWN_FIELDS = (
    FILE_URL, "nfo:hashAlgorithm", "nfo:hashValue", "nfo:fileSize", "nfo:fileLastModified",
    "nfo:fileName", "mrt:primaryIdentifier", "mrt:localIdentifier", "mrt:creator",
    "mrt:title", "mrt:date", "mrt:mimeType", "nie:mimeType",
)
_CANONICAL = {name.lower(): name for name in KNOWN_FIELDS}
# checkm field -> item metadata key
METADATA = {
    "mrt:creator": "creator",
    "mrt:date": "date",
    "mrt:primaryIdentifier": "primaryIdentifier",
    "nfo:fileName": "fileName",
    "nfo:fileLastModified": "lastModified",
    "mrt:mimeType": "mimeType",
    "nie:mimeType": "mimeType",
}
_ALGORITHMS = {name.replace("_", ""): name for name in DIGEST_HEX_DIGITS}


class ManifestError(RuntimeError):
    """The batch's manifest cannot be read or is invalid; the message says where and why."""


@dataclass(frozen=True)
class Entry:
    """One data line, parsed: a file (or, in an mrt-batch-manifest, an object manifest)."""

    line: int
    id: str
    url: str
    digest: dict[str, str] | None = None
    size: int | None = None
    title: str | None = None
    local_ids: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def item(self, profile: str) -> dict[str, Any]:
        """The entry as a batch file's inline item."""
        item: dict[str, Any] = {"id": self.id, "url": self.url}
        if self.digest:
            item["digest"] = dict(self.digest)
        if self.size is not None:
            item["size"] = self.size
        if self.title:
            item["title"] = self.title
        item["metadata"] = {**self.metadata, "profile": profile}
        return item


@dataclass(frozen=True)
class CheckmManifest:
    """A parsed manifest: its profile and its data lines, in order."""

    source: str
    profile: str
    entries: tuple[Entry, ...]


def sanitise_id(raw: str) -> str:
    """`raw` as an item id (letters, digits, `.`, `_`, `-`; first a letter or digit), or ""
    when nothing usable is left. Accents are dropped (é -> e), anything else becomes `_`."""
    text = unicodedata.normalize("NFKD", raw.strip())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return text.lstrip("._-")[:128]


def normalise_algorithm(name: str) -> str | None:
    """`SHA-256`, `sha_256`, `SHA256` -> `sha256`; `SHA3-256` -> `sha3_256`; `MD5` -> `md5`;
    None if batchq cannot compute it."""
    return _ALGORITHMS.get(re.sub(r"[-_\s]", "", name.lower()))


def _profile_name(value: str) -> str | None:
    """The profile's name from its URL (Merritt matches on the name; hosts vary)."""
    name = value.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return name if name in PROFILES else None


def _decode(value: str) -> str:
    """Merritt's `Checkm.dec`: `%20` is a space and `%7c` a `|`; nothing else is decoded."""
    return re.sub("%7c", "|", value.replace("%20", " "), flags=re.IGNORECASE)


def _local_ids(raw: str) -> tuple[str, ...]:
    """`a;a;b` -> (a, b): Merritt's several local identifiers, repeats dropped."""
    ids = (_decode(part).strip() for part in raw.split(";"))
    return tuple(dict.fromkeys(i for i in ids if i))


class _Parser:
    def __init__(self, source: str, max_items: int) -> None:
        self.source = source
        self.max_items = max_items
        self.profile: str | None = None
        self.fields: list[str] | None = None
        self.fields_line = 0
        self.entries: list[Entry] = []
        self.id_lines: dict[str, tuple[int, str]] = {}

    def error(self, n: int, message: str) -> ManifestError:
        return ManifestError(f"{self.source}:{n}: {message}")

    def directive(self, n: int, line: str) -> bool:
        """Handle a `#%` line; return False at `#%eof`."""
        match = _DIRECTIVE.match(line)
        name = match.group(0) if match else line
        key = name.lower()
        rest = line[len(name):].lstrip(" \t|")  # Merritt's squeezeHeader
        if key == "#%eof":
            return False
        if key == "#%profile":
            value = rest.split("|", 1)[0].strip()
            self.profile = _profile_name(value)
            if self.profile is None:
                raise self.error(n, f"unknown manifest profile {value!r} (expected"
                                    f" {PROFILE_BASE}<name> with <name> one of"
                                    f" {', '.join(PROFILES)})")
        elif key in ("#%fields", "#%columns"):
            names = [part.strip() for part in rest.split("|")]
            while names and not names[-1]:
                names.pop()
            if len(names) == 1 and " " in names[0]:  # `#%columns | a b c` (older form)
                names = names[0].split()
            fields = [_CANONICAL.get(name.lower(), name) for name in names]
            dupes = sorted({f for f in fields if fields.count(f) > 1})
            if dupes:
                raise self.error(n, f"field {dupes[0]} is listed twice")
            if FILE_URL not in fields:
                raise self.error(n, f"the {name} header has no {FILE_URL}")
            self.fields, self.fields_line = fields, n
        return True

    def data(self, n: int, line: str) -> None:
        if self.profile is None:
            raise self.error(n, "data line before the #%profile header")
        if self.fields is None:
            raise self.error(n, "data line before the #%fields header")
        values = [v.strip() for v in line.split("|")]
        while values and not values[-1]:  # Java's split drops trailing empty values
            values.pop()
        if len(values) > len(self.fields):
            raise self.error(n, f"{len(values)} values, but the #%fields header (line"
                                f" {self.fields_line}) names {len(self.fields)} fields")
        if len(self.entries) >= self.max_items:
            raise self.error(n, f"more than {self.max_items} items")
        row = dict(zip(self.fields, values, strict=False))
        self.entries.append(self.entry(n, row))

    def entry(self, n: int, row: dict[str, str]) -> Entry:
        url = row.get(FILE_URL, "")
        if not url:
            raise self.error(n, f"missing {FILE_URL}")
        if not _URL.fullmatch(url):
            raise self.error(n, f"{FILE_URL} {url!r} is not an http://, https:// or file: URL")
        local_ids = _local_ids(row.get("mrt:localIdentifier", ""))
        raw_id = local_ids[0] if local_ids else _decode(row.get("nfo:fileName", "")).strip()
        item_id = sanitise_id(raw_id) or f"line-{n}"
        if item_id in self.id_lines:
            first, first_raw = self.id_lines[item_id]
            earlier = f" (from {first_raw!r})" if first_raw != raw_id else ""
            raise self.error(n, f"item id {item_id!r} (from {raw_id!r}) is already used on"
                                f" line {first}{earlier}")
        self.id_lines[item_id] = (n, raw_id)
        size = row.get("nfo:fileSize", "")
        if size and not re.fullmatch(r"[0-9]{1,19}", size):
            raise self.error(n, f"file size {size!r} is not a whole number")
        metadata = {key: _decode(row[name]) for name, key in METADATA.items() if row.get(name)}
        if local_ids:
            metadata["localIdentifier"] = "; ".join(local_ids)
        return Entry(line=n, id=item_id, url=url, digest=self.digest(n, row),
                     size=int(size) if size else None,
                     title=_decode(row["mrt:title"]) if row.get("mrt:title") else None,
                     local_ids=local_ids, metadata=metadata)

    def digest(self, n: int, row: dict[str, str]) -> dict[str, str] | None:
        algorithm, value = row.get("nfo:hashAlgorithm", ""), row.get("nfo:hashValue", "")
        if not (algorithm or value):
            return None
        if not algorithm:
            raise self.error(n, "nfo:hashValue is given without nfo:hashAlgorithm")
        norm = normalise_algorithm(algorithm)
        known = ", ".join(DIGEST_HEX_DIGITS)
        if norm is None:
            if re.sub(r"[-_\s]", "", algorithm.lower()) in UNVERIFIABLE_DIGESTS:
                raise self.error(n, f"hash algorithm {algorithm!r} is one Merritt accepts,"
                                    f" but batchq cannot verify it; give one of {known},"
                                    " or leave the digest out")
            raise self.error(n, f"unknown hash algorithm {algorithm!r} ({known})")
        if not value:
            raise self.error(n, f"nfo:hashAlgorithm {algorithm} is given without"
                                " nfo:hashValue")
        value = value.lower()
        if not is_hex_digest(norm, value):
            raise self.error(n, f"hash value {value!r} is not a {norm} digest"
                                f" ({DIGEST_HEX_DIGITS[norm]} hex digits)")
        return {"algorithm": norm, "value": value}


def read_checkm(text: str, source: str, *, max_items: int = MAX_ITEMS) -> CheckmManifest:
    """Every data line of a checkm manifest of any profile Merritt accepts, parsed.

    Raise ManifestError naming `source:line`. Ids come from the first
    mrt:localIdentifier, else nfo:fileName, else `line-<n>`, made safe by `sanitise_id`;
    ids that end up equal are an error naming both lines, never silently merged.
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
    if not parser.entries or parser.profile is None:
        raise ManifestError(f"{source}:{len(lines)}: the manifest lists no items")
    return CheckmManifest(source, parser.profile, tuple(parser.entries))


def parse_checkm(text: str, source: str, *, max_items: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """Items (shaped like a batch file's inline items) from a checkm manifest.

    One item per line of a single-file or container batch manifest, and one for an
    object manifest of one file. An object of several files, and an mrt-batch-manifest
    (whose lines are object manifests, not payloads), are refused at `source:line` until
    an item can be an object (issue 8 §2), rather than stored as if they were payloads.
    """
    manifest = read_checkm(text, source, max_items=max_items)
    entries = manifest.entries
    if manifest.profile == "mrt-batch-manifest":
        raise ManifestError(f"{source}:{entries[0].line}: an mrt-batch-manifest lists object"
                            f" manifests ({entries[0].url} for object {entries[0].id!r}),"
                            f" each an object of its own files; {NOT_YET}")
    if manifest.profile == OBJECT_PROFILE and len(entries) > 1:
        raise ManifestError(f"{source}:{entries[0].line}: the {OBJECT_PROFILE} lists"
                            f" {len(entries)} files for one object (lines {entries[0].line}"
                            f"-{entries[-1].line}); {NOT_YET}")
    return [entry.item(manifest.profile) for entry in entries]
