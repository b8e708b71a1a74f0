"""The parts of an object (DESIGN §10, issue 8 §2): its files and, for a container, the
archive they come in.

An item is one object: one or more files, each with its own URL, digest, size, name within
the object and mime type. A file's name becomes a path in storage (and, for a container,
a path the worker unpacks to), so it is checked here, once, for everyone: a relative POSIX
path with no empty, `.` or `..` segment, no backslash, no control character, at most
`MAX_NAME` characters; names are unique within an object. This is what Merritt's
`nfo:fileName` allows (folders such as `producer/a.txt`) without letting a name leave the
object.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_NAME = 1024
MAX_OBJECT_BYTES = 64 * 1024  # an object as its job is given it (object_json)
CONTAINER_FORMATS = ("zip", "tar")
# Bad characters in a name: C0, DEL, C1, line separators and bidi controls (as
# `support.controlchars` escapes them), and the backslash, a separator on Windows.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e"
                        "\u2066-\u2069\\\\]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file's name within an object, or None when it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if name.startswith("/"):
        return "is an absolute path; give a path relative to the object"
    bad = _BAD_CHARS.search(name)
    if bad:
        return f"contains the character {bad.group()!r}; use '/' between folders"
    segments = name.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "has an empty, '.' or '..' path segment; a name stays inside its object"
    return None


def name_from_url(url: str) -> str:
    """A file's default name: its URL's last path segment, %-decoded, or "" when that is
    not a usable name (the caller then uses the item id)."""
    name = unquote(posixpath.basename(urlsplit(url).path))
    return name if name_problem(name) is None else ""


@dataclass(frozen=True)
class ObjectFile:
    """One file of an object: where it comes from and what it must be."""

    name: str  # path within the object (name_problem is None)
    url: str
    digest: tuple[str, str] | None = None  # (algorithm, lowercase hex)
    size: int | None = None
    mime: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectFile:
        digest = data.get("digest")
        return cls(
            name=str(data["name"]),
            url=str(data["url"]),
            digest=(str(digest["algorithm"]), str(digest["value"])) if digest else None,
            size=int(data["size"]) if data.get("size") is not None else None,
            mime=str(data["mime"]) if data.get("mime") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "url": self.url}
        if self.digest:
            out["digest"] = {"algorithm": self.digest[0], "value": self.digest[1]}
        if self.size is not None:
            out["size"] = self.size
        if self.mime is not None:
            out["mime"] = self.mime
        return out


@dataclass(frozen=True)
class Container:
    """A zip or tar file whose members are the object's files (Merritt's container batch)."""

    url: str
    format: str | None = None  # one of CONTAINER_FORMATS; None: the job tells by content
    digest: tuple[str, str] | None = None
    size: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Container:
        digest = data.get("digest")
        return cls(
            url=str(data["url"]),
            format=str(data["format"]) if data.get("format") else None,
            digest=(str(digest["algorithm"]), str(digest["value"])) if digest else None,
            size=int(data["size"]) if data.get("size") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.format:
            out["format"] = self.format
        if self.digest:
            out["digest"] = {"algorithm": self.digest[0], "value": self.digest[1]}
        if self.size is not None:
            out["size"] = self.size
        return out


def container_format(name: str) -> str | None:
    """`zip` or `tar` from a file name or URL (`.zip`, `.tar`, `.tar.gz`, `.tgz`,
    `.tar.bz2`, `.tar.xz`), or None when the name does not say."""
    lowered = name.lower().split("?", 1)[0]
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    return None


def object_json(files: Any, container: Any) -> str:
    """The object as its job is given it (`BATCHQ_OBJECT`): compact JSON of its files (as
    `ObjectFile.to_dict` shapes them) or of its container."""
    body = {"files": files} if files else {"container": container}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
