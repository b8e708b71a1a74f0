r"""Merritt checkm manifests (`#%checkm_0.7`), read as Merritt's own parser reads them.

Batch profiles: mrt-single-file-batch-manifest (each line a file), mrt-container-batch-manifest
(each line a container: zip, tar, ...), mrt-batch-manifest (each line an object manifest,
itself a checkm file listing the object's files). Object profile: mrt-ingest-manifest (every
line a file of ONE object). Each maps to items that are objects (issue 8 §2):
- a single-file batch line is an object of one file, named by its nfo:fileName (else the
  URL's last segment);
- a container batch line is an object whose files are the members of the zip or tar it
  names (the format from the URL's ending, else the nfo:fileName's, else the content);
- an mrt-ingest-manifest is ONE object, its lines the object's files (names unique within
  it), its id the manifest's file name without `.checkm`;
- an mrt-batch-manifest line is an object whose files its object manifest (an
  mrt-ingest-manifest) lists: the item carries `objectManifest`, the URL that
  `reconciler.manifests.resolve` downloads at admission and replaces by `files`.
Object-level fields (mrt:primaryIdentifier, mrt:localIdentifier, mrt:title, mrt:creator,
mrt:date) become the item's `primaryId`, `localIds`, `title`, `creator`, `date`.

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
from reconciler.domain.objects import container_format, name_from_url, name_problem

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

FILE_URL = "nfo:fileUrl"
KNOWN_FIELDS = (
    FILE_URL, "nfo:hashAlgorithm", "nfo:hashValue", "nfo:fileSize", "nfo:fileLastModified",
    "nfo:fileName", "mrt:primaryIdentifier", "mrt:localIdentifier", "mrt:creator",
    "mrt:title", "mrt:date", "mrt:mimeType", "nie:mimeType",
)
_CANONICAL = {name.lower(): name for name in KNOWN_FIELDS}
# checkm field -> item metadata key (the object-level fields are the item's own)
METADATA = {
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
    name: str = ""  # the file's name within its object (object manifests)
    primary_id: str | None = None
    creator: str | None = None
    date: str | None = None

    def item(self, profile: str) -> dict[str, Any]:
        """The entry as a batch file's inline item: an object of one file, a container,
        or (mrt-batch-manifest) an object whose files `objectManifest` lists."""
        item: dict[str, Any] = {"id": self.id}
        where: dict[str, Any] = {"url": self.url}
        if self.digest:
            where["digest"] = dict(self.digest)
        if self.size is not None:
            where["size"] = self.size
        if profile == "mrt-container-batch-manifest":
            fmt = container_format(self.url) or container_format(
                self.metadata.get("fileName", ""))
            item["container"] = {**where, **({"format": fmt} if fmt else {})}
        elif profile == "mrt-batch-manifest":
            item["objectManifest"] = self.url
        else:
            item.update(where)
        item.update(self.object_fields())
        item["metadata"] = {**self.metadata, "profile": profile}
        return item

    def object_fields(self) -> dict[str, Any]:
        """The object-level fields this line gives (identifiers, title, creator, date)."""
        out: dict[str, Any] = {}
        for key, value in (("title", self.title), ("primaryId", self.primary_id),
                           ("creator", self.creator), ("date", self.date)):
            if value:
                out[key] = value
        if self.local_ids:
            out["localIds"] = list(self.local_ids)
        return out

    def file(self) -> dict[str, Any]:
        """The entry as one file of an object (an mrt-ingest-manifest line)."""
        out: dict[str, Any] = {"name": self.name, "url": self.url}
        if self.digest:
            out["digest"] = dict(self.digest)
        if self.size is not None:
            out["size"] = self.size
        if self.metadata.get("mimeType"):
            out["mime"] = self.metadata["mimeType"]
        return out


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
        self.name_lines: dict[str, int] = {}

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
        file_name = _decode(row.get("nfo:fileName", "")).strip()
        raw_id = local_ids[0] if local_ids else file_name
        item_id = sanitise_id(raw_id) or f"line-{n}"
        name = file_name or name_from_url(url) or item_id
        if self.profile == OBJECT_PROFILE:  # lines are files of one object: names unique
            self.object_file_name(n, name)
        elif item_id in self.id_lines:
            first, first_raw = self.id_lines[item_id]
            earlier = f" (from {first_raw!r})" if first_raw != raw_id else ""
            raise self.error(n, f"item id {item_id!r} (from {raw_id!r}) is already used on"
                                f" line {first}{earlier}")
        self.id_lines[item_id] = (n, raw_id)
        size = row.get("nfo:fileSize", "")
        if size and not re.fullmatch(r"[0-9]{1,19}", size):
            raise self.error(n, f"file size {size!r} is not a whole number")
        metadata = {key: _decode(row[f]) for f, key in METADATA.items() if row.get(f)}

        def text(f: str) -> str | None:
            return _decode(row[f]).strip() or None if row.get(f) else None

        return Entry(line=n, id=item_id, url=url, digest=self.digest(n, row),
                     size=int(size) if size else None, title=text("mrt:title"),
                     local_ids=local_ids, metadata=metadata, name=name,
                     primary_id=text("mrt:primaryIdentifier"), creator=text("mrt:creator"),
                     date=text("mrt:date"))

    def object_file_name(self, n: int, name: str) -> None:
        """An object's file name: safe as a path within the object, and unique in it."""
        problem = name_problem(name)
        if problem:
            raise self.error(n, f"file name {name!r} {problem}")
        if name in self.name_lines:
            raise self.error(n, f"file name {name!r} is already used on line"
                                f" {self.name_lines[name]} (names are unique within an"
                                " object)")
        self.name_lines[name] = n

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


def object_id_from_source(source: str) -> str:
    """An object manifest's item id: its file name without `.checkm` (`4blocks.checkm` ->
    `4blocks`), made safe; `object` when nothing usable is left."""
    stem = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    stem = re.sub(r"\.(checkm|txt)$", "", stem, flags=re.IGNORECASE)
    return sanitise_id(stem) or "object"


def object_item(manifest: CheckmManifest, item_id: str) -> dict[str, Any]:
    """An mrt-ingest-manifest as ONE item: an object whose files are its lines. Object-level
    fields, when its lines carry them, come from the first line that gives each."""
    item: dict[str, Any] = {"id": item_id, "files": [e.file() for e in manifest.entries]}
    for entry in manifest.entries:
        for key, value in entry.object_fields().items():
            item.setdefault(key, value)
    item["metadata"] = {"profile": OBJECT_PROFILE}
    return item


def parse_checkm(text: str, source: str, *, max_items: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """Items (shaped like a batch file's inline items) from a checkm manifest.

    One item per line of a batch manifest (an mrt-batch-manifest line's item has
    `objectManifest` instead of files: the caller fetches it); ONE item for an object
    manifest (mrt-ingest-manifest), whatever its number of lines. A container line whose
    format neither its URL nor its file name tells is refused at its line.
    """
    manifest = read_checkm(text, source, max_items=max_items)
    if manifest.profile == OBJECT_PROFILE:
        return [object_item(manifest, object_id_from_source(source))]
    return [entry.item(manifest.profile) for entry in manifest.entries]
