"""Validation of the Git repository's files: schema, then what a schema cannot say.

The schemas in `schemas/` are the single source of truth for each kind's shape (a
Kubernetes CRD is generated from them), so nothing here restates a shape. This module
turns jsonschema's findings into `file:line:col: message` lines a depositor can act on —
at the node that is wrong, in plain words — and adds the checks that need more than one
value or more than one file: unique item ids, restarts naming real items, digest lengths,
names, a profile's URL prefixes and storage path, a batch's profile existing, every batch
URL passing the profile's prefixes (the same check the reconciler makes,
`reconciler.support.urls`), and two batch files claiming one name; and that each email
field is exactly one address, which no pattern can say (addresses.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend

from reconciler.domain.model import DIGEST_HEX_DIGITS, DNS_LABEL
from reconciler.spec.addresses import address_problem, display_name_problem
from reconciler.spec.fastcheck import Check, compile_schema, ecma_regex
from reconciler.spec.objectrules import object_problems
from reconciler.spec.yamlsafe import DocumentError, LoadedDocument, load_document, read_document
from reconciler.support.controlchars import escape_controls
from reconciler.support.redaction import redact_text, redact_url
from reconciler.support.urls import UrlRefused, check_url, parse_url

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
KINDS = ("Batch", "Profile", "Queue")
_KIND_WORDS = "Batch, Profile or Queue"
FILE_SUFFIXES = (".yaml", ".yml", ".json")

JsonPath = tuple[str | int, ...]

_DNS_WORDS = (
    "a DNS-1123 label: lowercase letters, digits and '-', up to 63, "
    "starting and ending with a letter or digit"
)
# What each pattern used in schemas/ means, keyed by the pattern itself so the schema stays
# the source of truth (a test checks that every pattern has an entry).
PATTERN_HINTS = {
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$": "is not a valid item id (letters, digits, '.', '_',"
    " '-'; up to 128; must start with a letter or digit)",
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$": f"is not a valid name ({_DNS_WORDS})",
    "^[^@\\s<>]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*"
    "[A-Za-z0-9])?)*$": "is not a valid email address",
    "^(https?://[^\\s]+|file:[^\\s]+)$": "is not an http://, https:// or file: URL"
    " (without spaces)",
    "^[0-9a-f]+$": "is not lowercase hexadecimal",
    "^([0-9]+(\\.[0-9]+)?|\\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$": "is not a"
    " Kubernetes quantity (for example 500m, 2, 256Mi, 1Gi)",
    "^[A-Za-z0-9._%+@-]{1,254}$": "is not a valid principal (an email address or a name of"
    " letters, digits and . _ % + @ -)",
    "^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|"
    "sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/]+={0,2}"
    "( [^\\r\\n]*)?$": "is not an SSH public key line (paste the whole .pub file: type,"
    " base64 key, optional comment)",
    "^[0-9a-f]{40}$": "is not a full commit id (40 lowercase hexadecimal digits)",
    "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$": "is not an S3 bucket name (3 to 63 lowercase"
    " letters, digits, '.' and '-'; starting and ending with a letter or digit)",
    "^[^/](.*[^/])?$": "is not a key prefix (no leading or trailing '/')",
    "^https?://[^/@?#\\s]+/?$": "is not a service URL (http:// or https:// and a host, with"
    " no path, credentials, query or spaces)",
    "^[a-z0-9-]{1,32}$": "is not a region name (for example us-east-1)",
}
_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, order=True)
class Problem:
    """One finding, ordered by file and position so output reads top to bottom. Its
    message may quote a URL from the file: any credentials in it are hidden."""

    path: str
    line: int
    col: int
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", redact_text(self.message))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    @classmethod
    def at(cls, doc: LoadedDocument, where: tuple[int, int], message: str) -> Problem:
        return cls(doc.path, where[0], where[1], message)

    @classmethod
    def from_error(cls, error: DocumentError) -> Problem:
        return cls(error.path, error.line, error.col, error.message)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = extend(Draft202012Validator, {"pattern": _pattern})


@cache
def item_validator() -> Any:
    """A validator for one manifest item, for items that come from a remote manifest."""
    spec = load_schema("Batch")["properties"]["spec"]["properties"]
    return _Validator(spec["manifest"]["properties"]["items"]["items"])


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema for a kind ("Batch" or "batch"), read once; do not mutate it."""
    return _read_schema(kind.lower())


@cache
def _read_schema(name: str) -> dict[str, Any]:
    with (SCHEMA_DIR / f"{name}.schema.json").open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


@cache
def _validator(kind: str) -> Any:
    return _Validator(load_schema(kind))


@cache
def item_certainly_valid() -> Check:
    """The quick yes (`fastcheck`) before `item_validator`, compiled once, not for each
    manifest."""
    return compile_schema(item_validator().schema) or (lambda _: False)


@cache
def _certainly_valid(kind: str) -> Check:
    """The quick yes before jsonschema (`fastcheck`): a first sync of 10,000 files pays
    jsonschema's ~1 ms a file only for the files it has something to say about."""
    return compile_schema(load_schema(kind)) or (lambda _: False)


def _schema_errors(kind: str, data: Any) -> Iterator[Any]:
    """jsonschema's errors for `data` as a `kind`: none when the quick check passes it."""
    if not _certainly_valid(kind)(data):
        yield from _validator(kind).iter_errors(data)


def format_path(json_path: JsonPath) -> str:
    """`spec.manifest.items[2].id`, the way a reader finds a node in the file."""
    out = ""
    for part in json_path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _show(value: Any) -> str:
    """A value as the reader wrote it, shortened."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _items(n: int) -> str:
    return "1 item" if n == 1 else f"{n} items"


def _explain(error: Any, doc: LoadedDocument) -> Iterator[Problem]:
    """Plain-words problems for one jsonschema error, each at the node to fix."""
    path: JsonPath = tuple(error.absolute_path)
    kind = error.validator
    value = error.validator_value
    instance = error.instance

    def problem(message: str, at: JsonPath = path, key: bool = False) -> Problem:
        label = format_path(at)
        position = doc.key_position(at) if key else doc.position(at)
        return Problem.at(doc, position, f"{label}: {message}" if label else message)

    if kind == "additionalProperties" and value is False:
        allowed = ", ".join(error.schema.get("properties", {}))
        for extra in instance:
            if extra not in error.schema.get("properties", {}):
                yield problem(
                    f'unknown field "{extra}" (allowed: {allowed})', (*path, extra), key=True
                )
    elif kind == "required":
        for name in value:
            if name not in instance:
                yield problem(f'missing required field "{name}"', key=True)
    elif kind == "type":
        expected = _TYPE_WORDS.get(value, value)
        actual = _json_type(instance)
        message = f"must be {expected}, not {_TYPE_WORDS[actual]}"
        if actual not in ("object", "array", "null"):
            message += f" ({_show(instance)})"
        if value == "string" and actual in ("integer", "number", "boolean"):
            message += "; put it in quotes"
        yield problem(message)
    elif kind == "enum":
        choices = ", ".join(_show(v) for v in value)
        if len(value) == 1:
            yield problem(f"must be {choices}, not {_show(instance)}")
        else:
            yield problem(f"{_show(instance)} is not one of {choices}")
    elif kind == "pattern":
        hint = PATTERN_HINTS.get(value, f"does not match the pattern {value}")
        yield problem(f"{_show(instance)} {hint}")
    elif kind == "oneOf" and all(set(s) == {"required"} for s in value):
        names = [json.dumps(n) for s in value for n in s["required"]]
        yield problem(f"must have exactly one of {', '.join(names[:-1])} or {names[-1]}", key=True)
    elif kind == "anyOf" and all(set(s) == {"required"} for s in value):
        names = [json.dumps(n) for s in value for n in s["required"]]
        yield problem(f"must have one of {', '.join(names[:-1])} or {names[-1]}", key=True)
    elif kind == "minimum":
        yield problem(f"must be at least {value}, not {_show(instance)}")
    elif kind == "maximum":
        yield problem(f"must be at most {value}, not {_show(instance)}")
    elif kind == "minLength":
        yield problem(
            "must not be empty" if value == 1 else f"must be at least {value} characters long"
        )
    elif kind == "maxLength":
        yield problem(f"is {len(instance)} characters long; at most {value} are allowed")
    elif kind == "minItems":
        yield problem(f"must have at least {_items(value)}", key=True)
    elif kind == "maxItems":
        yield problem(f"has {_items(len(instance))}; at most {value} are allowed", key=True)
    else:
        yield problem(error.message)


def _check_kind(doc: LoadedDocument, expected_kind: str | None) -> tuple[str | None, list[Problem]]:
    """The document's kind, or why it has none we can validate."""
    data = doc.data
    expected = f"a mapping with apiVersion, kind and spec (a {_KIND_WORDS})"
    if not isinstance(data, dict):
        found = "an empty file" if data is None else _TYPE_WORDS[_json_type(data)]
        return None, [Problem.at(doc, doc.position(), f"expected {expected}, found {found}")]
    kind = data.get("kind")
    if "kind" not in data:
        wanted = expected_kind or _KIND_WORDS
        return None, [Problem.at(doc, doc.position(), f'missing required field "kind" ({wanted})')]
    at = doc.position(("kind",))
    if kind not in KINDS:
        message = f"kind: unknown kind {_show(kind)} (expected {_KIND_WORDS})"
        return None, [Problem.at(doc, at, message)]
    if expected_kind is not None and kind != expected_kind:
        return None, [
            Problem.at(doc, at, f"kind: this file must be a {expected_kind}, not a {kind}")
        ]
    return str(kind), []


def _check_name(doc: LoadedDocument, kind: str) -> list[Problem]:
    """A Batch or Profile without metadata.name is named by its file's stem, which must
    then be a valid name itself; a Profile is found by its file name, so the two agree."""
    data = doc.data
    stem = PurePath(doc.path).stem
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if name is None:
        if DNS_LABEL.fullmatch(stem):
            return []
        return [
            Problem.at(
                doc,
                (1, 1),
                f'the file name "{stem}" is not a valid {kind.lower()} name ({_DNS_WORDS}); '
                "add metadata.name",
            )
        ]
    if kind == "Profile" and isinstance(name, str) and name != stem:
        return [
            Problem.at(
                doc,
                doc.position(("metadata", "name")),
                f'metadata.name: "{name}" differs from the file name "{stem}"; batches find '
                f"a profile by its file name (profiles/{name}.yaml)",
            )
        ]
    return []


def _check_batch(doc: LoadedDocument) -> list[Problem]:
    """Batch rules that span several values: unique ids, restarts, digest lengths."""
    problems: list[Problem] = []
    spec = doc.data.get("spec")
    if not isinstance(spec, dict):
        return problems
    manifest = spec.get("manifest")
    items = manifest.get("items") if isinstance(manifest, dict) else None
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        at: JsonPath = ("spec", "manifest", "items", index)
        item_id = item.get("id")
        if isinstance(item_id, str):
            if item_id in first_seen:
                first_line = doc.position((*at[:-1], first_seen[item_id], "id"))[0]
                problems.append(
                    Problem.at(
                        doc,
                        doc.position((*at, "id")),
                        f"{format_path((*at, 'id'))}: duplicate item id {_show(item_id)} "
                        f"(first at line {first_line})",
                    )
                )
            else:
                first_seen[item_id] = index
        for where, message in object_problems(item):
            node = (*at, *where)
            problems.append(Problem.at(doc, doc.position(node),
                                       f"{format_path(node)}: {message}"))
        digest = item.get("digest")
        if isinstance(digest, dict):
            algorithm, hex_value = digest.get("algorithm"), digest.get("value")
            digits = DIGEST_HEX_DIGITS.get(algorithm) if isinstance(algorithm, str) else None
            if (
                digits is not None
                and isinstance(hex_value, str)
                and len(hex_value) != digits
                and len(hex_value) <= max(DIGEST_HEX_DIGITS.values())  # else the schema says
            ):
                value_at = (*at, "digest", "value")
                problems.append(
                    Problem.at(
                        doc,
                        doc.position(value_at),
                        f"{format_path(value_at)}: {algorithm} digests have {digits} hex "
                        f"digits, not {len(hex_value)}",
                    )
                )
    restarts = spec.get("restarts")
    if isinstance(restarts, dict) and isinstance(items, list):
        for item_id in restarts:
            if item_id not in first_seen:
                at = ("spec", "restarts", item_id)
                problems.append(
                    Problem.at(
                        doc,
                        doc.key_position(at),
                        f"{format_path(at)}: no item {_show(item_id)} in the manifest",
                    )
                )
    return problems


def _check_no_credentials(doc: LoadedDocument) -> list[Problem]:
    """No URL in a batch file carries `user:password@`: whoever reads the repository (and
    its history, for good) could use them (DESIGN §10: never from Git). A remote manifest
    may carry them; the reconciler uses them and shows them nowhere."""
    problems: list[Problem] = []
    for at, url in _batch_urls(doc):
        if "@" not in url:  # userinfo ends at an "@": this URL has none (no parse needed)
            continue
        try:
            userinfo = parse_url(url).userinfo
        except UrlRefused:
            continue  # reported by the URL check against the profile
        if userinfo is not None:
            problems.append(Problem.at(
                doc, doc.position(at),
                f"{format_path(at)}: {_show(redact_url(url))} carries credentials, which must"
                " not be committed to Git; remove the user:password@ part (a remote"
                " manifest's file URLs may carry them)"))
    return problems


def storage_path_problem(path: str) -> str | None:
    """Why a profile's storage.path could leave the storage root (the operator's, or the
    state dir's `storage/`), or None."""
    parts = PurePosixPath(path.replace("\\", "/"))
    if parts.is_absolute():
        return ("must be a relative path inside the storage root (set by the operator), not"
                " an absolute one")
    if ".." in parts.parts:
        return "must stay inside the storage root: remove the '..' segments"
    return None


def _check_profile(doc: LoadedDocument) -> list[Problem]:
    """Profile rules beyond shape: every URL prefix usable, storage inside its root."""
    problems: list[Problem] = []
    spec = doc.data.get("spec")
    if not isinstance(spec, dict):
        return problems
    prefixes = spec.get("allowedUrlPrefixes")
    for index, prefix in enumerate(prefixes if isinstance(prefixes, list) else ()):
        if not isinstance(prefix, str):
            continue
        at: JsonPath = ("spec", "allowedUrlPrefixes", index)
        try:
            parse_url(prefix, prefix=True)
        except UrlRefused as exc:
            problems.append(Problem.at(doc, doc.position(at), f"{format_path(at)}:"
                                       f" {_show(prefix)} is not a usable prefix: {exc.reason}"))
    storage = spec.get("storage")
    path = storage.get("path") if isinstance(storage, dict) else None
    problem = storage_path_problem(path) if isinstance(path, str) else None
    if problem is not None:
        at = ("spec", "storage", "path")
        problems.append(Problem.at(doc, doc.position(at),
                                   f"{format_path(at)}: {_show(path)} {problem}"))
    if isinstance(storage, dict):
        for key, why in storage_field_problems(storage):
            at = ("spec", "storage", key)
            problems.append(Problem.at(doc, doc.position(at), f"{format_path(at)}: {why}"))
    return problems


S3_FIELDS = ("bucket", "prefix", "endpoint", "region")
_CREDENTIAL_WORDS = re.compile(r"secret|access.?key|password|token|credential", re.IGNORECASE)


def storage_field_problems(storage: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, why) for storage fields that belong to the other type, and for any field
    that looks like a credential (they never go in Git)."""
    out = []
    s3 = storage.get("type") == "s3"
    for key in storage:
        if isinstance(key, str) and _CREDENTIAL_WORDS.search(key):
            out.append((key, "credentials never go in a profile (it is in Git): the operator"
                             " gives them to the reconciler (AWS_ACCESS_KEY_ID and"
                             " AWS_SECRET_ACCESS_KEY, or on Kubernetes the Secret named by"
                             " --s3-secret); remove this field"))
        elif s3 and key == "path":
            out.append((key, "is for type filesystem; an s3 storage names a bucket and a"
                             " prefix instead"))
        elif not s3 and key in S3_FIELDS:
            out.append((key, "is for type s3: add `type: s3`, or remove it"))
    return out


# Where each kind keeps email addresses (a list's entries are each one address).
ADDRESS_FIELDS: dict[str, tuple[JsonPath, ...]] = {
    "Batch": (("spec", "depositor", "email"),),
    "Profile": tuple(("spec", "notification", key) for key in (
        "recipients", "bccAdmins", "from", "replyTo", "suppressedAddresses")),
}


def _check_addresses(doc: LoadedDocument, kind: str) -> list[Problem]:
    """Each address field holds one bare address. Values that the schema's pattern already
    refused are left to its message."""
    depositor = load_schema("Batch")["properties"]["spec"]["properties"]["depositor"]
    schema_pattern = ecma_regex(depositor["properties"]["email"]["pattern"])
    problems: list[Problem] = []
    for field in ADDRESS_FIELDS.get(kind, ()):
        node: Any = doc.data
        for key in field:
            node = node.get(key) if isinstance(node, dict) else None
        found = list(enumerate(node)) if isinstance(node, list) else [(None, node)]
        for index, value in found:
            if not isinstance(value, str) or not schema_pattern.search(value):
                continue
            why = address_problem(value)
            if why is not None:
                at: JsonPath = field if index is None else (*field, index)
                problems.append(Problem.at(doc, doc.position(at),
                                           f"{format_path(at)}: {_show(value)} {why}"))
    return problems


NAME_FIELDS: tuple[JsonPath, ...] = tuple(
    ("spec", "notification", key) for key in ("fromName", "replyToName"))


def _check_display_names(doc: LoadedDocument) -> list[Problem]:
    """A profile's display names are plain text that batchq quotes itself."""
    problems: list[Problem] = []
    for field in NAME_FIELDS:
        node: Any = doc.data
        for key in field:
            node = node.get(key) if isinstance(node, dict) else None
        why = display_name_problem(node) if isinstance(node, str) else None
        if why is not None:
            problems.append(Problem.at(doc, doc.position(field),
                                       f"{format_path(field)}: {_show(node)} {why}"))
    return problems


def check_document(doc: LoadedDocument, expected_kind: str | None = None) -> list[Problem]:
    """Every problem of one loaded document, in file order."""
    kind, problems = _check_kind(doc, expected_kind)
    if kind is None:
        return problems
    seen: set[Problem] = set()
    for error in _schema_errors(kind, doc.data):
        for problem in _explain(error, doc):
            if problem not in seen:  # "required" lists all names on each error
                seen.add(problem)
                problems.append(problem)
    if kind in ("Batch", "Profile"):
        problems += _check_name(doc, kind)
        problems += _check_addresses(doc, kind)
    if kind == "Batch":
        problems += _check_batch(doc)
        problems += _check_no_credentials(doc)
    if kind == "Profile":
        problems += _check_profile(doc)
        problems += _check_display_names(doc)
    return sorted(problems)


def schema_problems(doc: LoadedDocument, kind: str) -> list[Problem]:
    """Every schema problem of a file read outside the repository (the access policy),
    in plain words at its line, as for the repository's files."""
    seen: set[Problem] = set()
    for error in _schema_errors(kind, doc.data):
        seen.update(_explain(error, doc))
    return sorted(seen)


def validate_text(
    data: bytes | str, path: str, expected_kind: str | None = None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Validate one file's content; `path` names it in messages and gives its stem.

    Returns the loaded mapping (None if it did not load as one) and the problems, which are
    empty exactly when the file is valid.
    """
    try:
        doc = load_document(data, path)
    except DocumentError as exc:
        return None, [Problem.from_error(exc)]
    loaded = doc.data if isinstance(doc.data, dict) else None
    return loaded, check_document(doc, expected_kind)


def batch_name(path: str, data: dict[str, Any]) -> str:
    """A batch's name: metadata.name, else the file's stem (DESIGN §3)."""
    meta = data.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        return str(meta["name"])
    return PurePath(path).stem


def _expected_kind(file: Path) -> str | None:
    """What a file must be, by where it sits in the repository layout."""
    if file.parent.name == "batches":
        return "Batch"
    if file.parent.name == "profiles":
        return "Profile"
    if file.name in ("queue.yaml", "queue.yml"):
        return "Queue"
    return None


def _repository_root(file: Path) -> Path | None:
    """The directory holding `profiles/` for a batch file: the parent of its `batches/`
    directory, else the nearest directory beside or above it that has `profiles/`."""
    absolute = file.absolute()
    for parent in absolute.parents:
        if parent.name == "batches":
            return parent.parent
    for parent in absolute.parents:
        if (parent / "profiles").is_dir():
            return parent
    return None


def _walk(directory: Path) -> list[Path]:
    """YAML and JSON files under a directory, skipping hidden ones (.git, .batchq)."""
    found: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(root) / n
            for n in sorted(names)
            if n.endswith(FILE_SUFFIXES) and not n.startswith(".")
        ]
    return found


def _files(paths: list[str]) -> list[Path]:
    """The paths named by the CLI arguments, directories walked, each path once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for arg in paths:
        path = Path(arg)
        for file in _walk(path) if path.is_dir() else [path]:
            key = file.absolute().resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _read(file: Path) -> LoadedDocument | Problem:
    """A file's document, or why there is none (opening a FIFO would block: refused)."""
    if not file.is_file():
        reason = "not a regular file or directory" if file.exists() else "no such file or directory"
        return Problem(str(file), 1, 1, reason)
    try:
        return read_document(file, str(file))
    except DocumentError as exc:
        return Problem.from_error(exc)
    except OSError as exc:
        return Problem(str(file), 1, 1, f"cannot read: {exc.strerror or exc}")


def _profile_prefixes(file: Path) -> list[str] | None:
    """A profile file's allowedUrlPrefixes (None when it does not load as a profile; its
    own problems are reported where it is validated)."""
    loaded = _read(file)
    if isinstance(loaded, Problem) or not isinstance(loaded.data, dict):
        return None
    spec = loaded.data.get("spec")
    prefixes = spec.get("allowedUrlPrefixes") if isinstance(spec, dict) else None
    return [p for p in prefixes if isinstance(p, str)] if isinstance(prefixes, list) else []


def _profile_error(root: Path, file: Path) -> str | None:
    """A profile file's first problem, named as the reconciler names it (repo-relative)."""
    doc = _read(file)
    found = [doc] if isinstance(doc, Problem) else check_document(doc, "Profile")
    if not found:
        return None
    first = found[0]
    return str(Problem(file.relative_to(root).as_posix(), first.line, first.col, first.message))


def unusable_profile(doc: LoadedDocument, profile: str, error: str | None) -> Problem:
    """Why a batch's profile cannot be used, at the batch's `spec.profile` line: the same
    words from `batchq validate` and the reconciler (`error`: the profile file's first
    problem, None when there is no such file)."""
    at: JsonPath = ("spec", "profile")
    if error is None:
        why = (f'profile "{profile}" not found (expected profiles/{profile}.yaml); add the'
               " profile or fix spec.profile")
    else:
        why = f'profile "{profile}" is invalid, so no batch can use it; fix {error}'
    return Problem.at(doc, doc.position(at), f"{format_path(at)}: {why}")


def batch_profile_refusal(data: bytes | str, path: str, profile: str,
                          error: str | None) -> str:
    """`unusable_profile` for the reconciler, which holds the file's bytes, not its doc."""
    doc = load_document(data, path)  # it loaded already: this cannot fail
    return str(unusable_profile(doc, profile, error))


def _batch_urls(doc: LoadedDocument) -> Iterator[tuple[JsonPath, str]]:
    """Every URL a batch file names, with where it is: inline items and manifest.url."""
    spec = doc.data.get("spec")
    manifest = spec.get("manifest") if isinstance(spec, dict) else None
    if not isinstance(manifest, dict):
        return
    if isinstance(manifest.get("url"), str):
        yield ("spec", "manifest", "url"), manifest["url"]
    items = manifest.get("items")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        at: JsonPath = ("spec", "manifest", "items", index)
        if isinstance(item.get("url"), str):
            yield (*at, "url"), item["url"]
        files = item.get("files")
        for n, entry in enumerate(files if isinstance(files, list) else ()):
            if isinstance(entry, dict) and isinstance(entry.get("url"), str):
                yield (*at, "files", n, "url"), entry["url"]
        container = item.get("container")
        if isinstance(container, dict) and isinstance(container.get("url"), str):
            yield (*at, "container", "url"), container["url"]


def _check_urls(doc: LoadedDocument, profile: str, prefixes: list[str],
                file_roots: Sequence[str | Path]) -> list[Problem]:
    """The reconciler's own URL check (`check_url`), reported at each URL's line."""
    problems: list[Problem] = []
    for at, url in _batch_urls(doc):
        try:
            check_url(url, prefixes, file_roots=file_roots, by=f' by profile "{profile}"')
        except UrlRefused as exc:
            problems.append(Problem.at(doc, doc.position(at), f"{format_path(at)}: {exc}"))
    return problems


def validate_repo_paths(paths: list[str], *,
                        file_roots: Sequence[str | Path] = ()) -> list[Problem]:
    """Validate files and directories as `batchq validate` does, across files too: each
    batch's profile must exist, every URL of a batch must pass its profile's prefixes (and
    the operator's `file_roots` for a host path), and no two batch files in a repository
    may share a name."""
    problems: list[Problem] = []
    claims: dict[tuple[Path, str], list[tuple[LoadedDocument, str]]] = {}
    prefixes_of: dict[Path, list[str] | None] = {}  # each profile file read once
    profile_errors: dict[Path, str | None] = {}
    for file in _files(paths):
        doc = _read(file)
        if isinstance(doc, Problem):
            problems.append(doc)
            continue
        expected = _expected_kind(file)
        problems += check_document(doc, expected)
        data = doc.data
        if expected not in (None, "Batch") or not (
            isinstance(data, dict) and data.get("kind") == "Batch"
        ):
            continue
        root = _repository_root(file)
        spec = data.get("spec")
        profile = spec.get("profile") if isinstance(spec, dict) else None
        if (
            isinstance(profile, str)
            and DNS_LABEL.fullmatch(profile)
            and (root is None or not (root / "profiles" / f"{profile}.yaml").is_file())
        ):
            problems.append(unusable_profile(doc, profile, None))
        elif isinstance(profile, str) and root is not None and DNS_LABEL.fullmatch(profile):
            profile_file = root / "profiles" / f"{profile}.yaml"
            if profile_file not in prefixes_of:
                prefixes_of[profile_file] = _profile_prefixes(profile_file)
                profile_errors[profile_file] = _profile_error(root, profile_file)
            prefixes = prefixes_of[profile_file]
            if profile_errors[profile_file]:
                problems.append(unusable_profile(doc, profile, profile_errors[profile_file]))
            elif prefixes is not None:
                problems += _check_urls(doc, profile, prefixes, file_roots)
        name = batch_name(str(file), data)
        claims.setdefault((root or file.absolute().parent, name), []).append((doc, name))
    for claimants in claims.values():
        if len(claimants) < 2:
            continue
        for doc, name in claimants:
            others = ", ".join(other.path for other, _ in claimants if other is not doc)
            meta = doc.data.get("metadata")
            named = isinstance(meta, dict) and "name" in meta
            at = doc.position(("metadata", "name")) if named else (1, 1)
            problems.append(Problem.at(doc, at, f'batch name "{name}" is also used by {others}'))
    return sorted(problems)


def validate_main(paths: list[str], file_roots: Sequence[str | Path] = ()) -> int:
    """`batchq validate PATH...`: one `file:line:col: message` line per problem; exit 1 if
    there is any (DESIGN §7). `file_roots` are the operator's, as for the reconciler."""
    problems = validate_repo_paths(paths, file_roots=file_roots)
    for problem in problems:
        print(escape_controls(str(problem)))  # a file name can hold a terminal escape too
    return 1 if problems else 0
