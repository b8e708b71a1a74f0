"""The one URL check: may this payload or manifest URL be fetched under these prefixes?

A string prefix test is not a check: `http://127.0.0.1` would allow `http://127.0.0.10`,
`:6000` would allow `:60000`, `/pub` would allow `/public`, and `http://127.0.0.1@evil/`
would pass while going to `evil`. So the URL and each prefix are parsed and compared part
by part: scheme, host (without case), port (the scheme's default when none is written)
and whole path segments. The query takes no part.

What makes parsers disagree about where a URL goes is refused before any comparison:
a backslash (browsers read it as `/`), `%2F` / `%5C` (a server may decode them into
separators), dot segments (`.`, `..`, also `%2e`), spaces and control characters, and
userinfo that is not plain `user[:password]` (more than one `@`). Plain userinfo is the
credentials of the request (Merritt puts HTTP Basic credentials in `fileUrl`): it is
split off and never compared, and `reconciler.support.redaction` hides it wherever a URL
is shown.

`file:` URLs: a relative one (`file:payloads/a.tif`) names a file of the repository,
read from Git; an absolute one (`file:/x`, `file:///x`, `file://localhost/x`) names a file
on the host, refused unless it lies under one of the `file_roots` an operator configured
outside the repository (the reader checks again with links resolved).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from reconciler.support.redaction import HIDDEN, redact_url

DEFAULT_PORTS = {"http": 80, "https": 443}
SCHEMES = ("http", "https", "file")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_USERINFO = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:%-]*")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


class UrlRefused(ValueError):
    """The URL may not be fetched; the message says which URL (credentials hidden) and why,
    `reason` says only why."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class Location:
    """Where a URL points, as the allow-check compares it."""

    scheme: str  # http | https | file
    host: str  # lowercase; "" for file:
    port: int | None  # the explicit or default port; None for file:
    segments: tuple[str, ...]  # path segments as written (percent-encoding kept)
    absolute: bool  # file: a host path (True) or a repository path (False)
    userinfo: str | None = None  # `user[:password]`, credentials of the request

    def path(self) -> str:
        """The decoded path: repository-relative, or absolute on the host."""
        text = "/".join(unquote(s) for s in self.segments)
        return "/" + text if self.absolute else text

    def within(self, prefix: Location) -> bool:
        """Is this location inside `prefix` (same origin, the prefix's whole segments)?"""
        if (self.scheme, self.host, self.port) != (prefix.scheme, prefix.host, prefix.port):
            return False
        wanted = prefix.segments[:-1] if prefix.segments[-1:] == ("",) else prefix.segments
        if self.scheme == "file" and not wanted and not prefix.absolute:
            return True  # `file:` alone: every file URL (host paths still need a root)
        if self.absolute != prefix.absolute:
            return False
        return self.segments[:len(wanted)] == wanted


def _refuse(url: str, reason: str) -> UrlRefused:
    return UrlRefused(f"URL {redact_url(url)} is refused: {reason}", reason)


def _segments(url: str, path: str, *, file: bool) -> tuple[str, ...]:
    """The path's segments, refusing what would be read differently by another parser."""
    if re.search("%2f", path, re.IGNORECASE):
        raise _refuse(url, "it contains an encoded slash (%2F)")
    if re.search("%5c", path, re.IGNORECASE):
        raise _refuse(url, "it contains an encoded backslash (%5C)")
    if re.search("%00", path):
        raise _refuse(url, "it contains an encoded NUL (%00)")
    parts = tuple(path.split("/"))
    for segment in parts:
        if unquote(segment) in (".", ".."):
            raise _refuse(url, f'it contains the dot segment "{segment}"')
    if file and "" in parts[:-1]:
        raise _refuse(url, "it contains an empty path segment")
    return parts


def _host_and_port(url: str, scheme: str, authority: str) -> tuple[str, int]:
    if authority.startswith("["):
        host, bracket, after = authority.partition("]")
        host += bracket
    else:
        host, colon, port_text = authority.partition(":")
        after = colon + port_text
    host = host.lower()
    if not host:
        raise _refuse(url, "it has no host")
    if not (_HOST.fullmatch(host) or _IPV6.fullmatch(host)) or (after and after[0] != ":"):
        raise _refuse(url, f'its host "{host}" is not a valid host name or address')
    if not after:
        return host, DEFAULT_PORTS[scheme]
    port_text = after[1:]
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise _refuse(url, f'its port "{port_text}" is not a number from 1 to 65535')
    return host, int(port_text)


def _parse_http(url: str, scheme: str, rest: str) -> Location:
    if not rest.startswith("//"):
        raise _refuse(url, f"a {scheme} URL starts with {scheme}://")
    body = rest[2:]
    cut = min((i for i in (body.find(c) for c in "/?#") if i >= 0), default=len(body))
    authority, remainder = body[:cut], body[cut:]
    userinfo = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if "@" in userinfo:
            raise _refuse(url, 'its userinfo is ambiguous: more than one "@"')
        if not _USERINFO.fullmatch(userinfo):
            raise _refuse(url, "its userinfo has characters a URL does not allow there")
    host, port = _host_and_port(url, scheme, authority)
    path = remainder.split("#", 1)[0].split("?", 1)[0]
    segments = _segments(url, path[1:], file=False) if path else ()
    return Location(scheme, host, port, segments, absolute=True, userinfo=userinfo)


def _parse_file(url: str, rest: str, *, prefix: bool) -> Location:
    if "?" in rest or "#" in rest:
        raise _refuse(url, "a file: URL has no query or fragment")
    if rest.startswith("//"):
        host, slash, rest = rest[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            raise _refuse(url, f'a file: URL cannot name a host ("{host}")')
        rest = slash + rest
        if not rest:
            raise _refuse(url, "it names no file")
    absolute = rest.startswith("/")
    path = rest[1:] if absolute else rest
    if not path and not prefix:
        raise _refuse(url, "it names no file")
    segments = _segments(url, path, file=True) if path else ()
    return Location("file", "", None, segments, absolute=absolute)


def parse_url(url: str, *, prefix: bool = False) -> Location:
    """Where `url` points; raise UrlRefused for anything ambiguous or unsupported.

    With `prefix`, `url` is an allowed prefix: `file:` alone is allowed, and userinfo,
    a query or a fragment are refused (a prefix names a place, never credentials).

    An item's URL is read two or three times on its way to a Job (its object's name, its
    credentials, its allow-check): the last few thousand parsed are kept (a Location
    does not change), except those with credentials, which nothing keeps longer than
    their item."""
    if "@" in url:
        return _parse_url(url, prefix)
    return _parse_url_kept(url, prefix)


@lru_cache(maxsize=4096)
def _parse_url_kept(url: str, prefix: bool) -> Location:
    return _parse_url(url, prefix)


def _parse_url(url: str, prefix: bool) -> Location:
    match = _SCHEME.match(url)
    if match is None:
        raise _refuse(url, "it is not a URL (no scheme such as https:)")
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise _refuse(url, f'unsupported scheme "{scheme}" (http, https or file)')
    if _UNSAFE.search(url):
        raise _refuse(url, "it contains a space or a control character")
    if "\\" in url:
        raise _refuse(url, "it contains a backslash")
    rest = url[match.end():]
    if scheme == "file":
        return _parse_file(url, rest, prefix=prefix)
    location = _parse_http(url, scheme, rest)
    if prefix and location.userinfo is not None:
        raise _refuse(url, "a prefix cannot carry userinfo (credentials)")
    if prefix and re.search(r"[?#]", rest):
        raise _refuse(url, "a prefix has no query or fragment")
    return location


@lru_cache(maxsize=256)
def _prefix(text: str) -> Location | None:
    """A prefix parsed once (a 100,000-item manifest checks the same few each time); None
    for an invalid one, which allows nothing (`batchq validate` reports it)."""
    try:
        return parse_url(text, prefix=True)
    except UrlRefused:
        return None


def check_file_root(url: str, location: Location, file_roots: Sequence[str | Path]) -> None:
    """Raise UrlRefused unless the host path of an absolute `file:` URL lies under one of
    the operator's `file_roots` (as written: a reader resolves links and checks again)."""
    roots = [PurePosixPath(str(r)) for r in file_roots]
    if not roots:
        raise _refuse(url, "it names a file on the host, outside the repository (only an"
                           " operator can allow a host directory, with --allow-file-root)")
    path = PurePosixPath(location.path())
    if not any(path == r or r in path.parents for r in roots):
        raise _refuse(url, "it is outside the allowed file roots"
                           f" ({', '.join(str(r) for r in roots)})")


def check_url(url: str, prefixes: Sequence[str], *, file_roots: Sequence[str | Path] = (),
              by: str = "") -> Location:
    """The URL's location when it is inside one of `prefixes`; else raise UrlRefused.

    `by` names who set the prefixes in the message (`' by profile "demo"'`). An absolute
    `file:` URL must also lie under one of `file_roots` (the operator's setting).
    """
    location = parse_url(url)
    allowed = [p for p in (_prefix(text) for text in prefixes) if p is not None]
    if not any(location.within(p) for p in allowed):
        listed = ", ".join(redact_url(p) for p in prefixes) or "none"
        raise UrlRefused(f"URL {redact_url(url)} is not allowed{by} (allowed prefixes: {listed})")
    if location.scheme == "file" and location.absolute:
        check_file_root(url, location, file_roots)
    return location


def url_allowed(url: str, prefixes: Sequence[str], *,
                file_roots: Sequence[str | Path] = ()) -> bool:
    """True when `check_url` would let `url` through (redirect targets, quick tests)."""
    try:
        check_url(url, prefixes, file_roots=file_roots)
    except UrlRefused:
        return False
    return True


def without_userinfo(url: str) -> str:
    """`url` as it goes on the wire: its userinfo (if any) taken out."""
    if parse_url(url).userinfo is None:
        return url
    head, _, tail = url.partition("://")
    return f"{head}://{tail.partition('@')[2]}"  # a parsed userinfo holds no other "@"


def split_userinfo(url: str) -> tuple[str, str | None]:
    """(the URL with its userinfo shown as ***, the userinfo) — or (url, None) without any.

    The first is what may be stored and shown; the second travels only to the request.
    """
    userinfo = parse_url(url).userinfo
    if userinfo is None:
        return url, None
    return without_userinfo(url).replace("://", f"://{HIDDEN}@", 1), userinfo
