"""Bounded downloads for manifests and payloads: http, https and file URLs.

Everything fetched here comes from a depositor's manifest, so nothing is trusted:

- `timeout` is a DEADLINE for the whole transfer (connect, headers, body), not a per-read
  socket timeout, so a server that hangs or trickles a byte a second fails on time. A
  watchdog shuts the socket down at the deadline, which wakes a read blocked in the
  kernel; the socket timeout is set as well, as a second line of defence.
- the size limit is checked against Content-Length (or a file's size) up front and again
  while streaming, and a body shorter than its Content-Length is an error, not a payload;
- a URL is parsed by `reconciler.support.urls` first, so what it refuses (dot segments,
  `%2F`, backslashes, ambiguous userinfo) is never fetched;
- a relative `file:` URL is read from Git at the batch's commit
  (`reconciler.manifests.repofiles`), never from a work tree; an absolute one only under
  an operator's `file_roots`, checked again with links resolved, and only regular files
  (no FIFOs or devices, which could block forever);
- userinfo (or `credentials` given beside a URL shown as `***@`) becomes an HTTP Basic
  `Authorization` header that is never sent to another origin, and every message shows
  the URL with its userinfo hidden;
- redirects stay on http/https, at most `MAX_REDIRECTS`, and each target must pass the
  caller's `allowed` check, so a redirect cannot lead out of a profile's allowed prefixes.

Errors are `FetchError` with a one-line message a person can act on; `FetchRefused` (a
subclass) marks input refused by policy rather than a transfer that failed.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote, urljoin

from reconciler.manifests.repofiles import RepoFileError, RepoSnapshot
from reconciler.support.deadline import SocketDeadline
from reconciler.support.redaction import HIDDEN, redact_text, redact_url
from reconciler.support.urls import (
    Location,
    UrlRefused,
    check_file_root,
    parse_url,
    without_userinfo,
)

CHUNK = 256 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "batchq"

Allowed = Callable[[str], bool]


class FetchError(RuntimeError):
    """A download failed; the message is one line a person can act on."""


class FetchRefused(FetchError):
    """The URL was refused before anything was transferred (scheme, path escape, redirect)."""


class FetchTooLarge(FetchError):
    """The body is over the size limit: announced up front (`announced`), or seen while
    streaming (`announced` is None: more than `limit` bytes arrived)."""

    def __init__(self, message: str, *, limit: int, announced: int | None) -> None:
        super().__init__(message)
        self.limit = limit
        self.announced = announced


def _scheme(url: str) -> str:
    head, sep, _ = url.partition(":")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else ""


@cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once per process."""
    return ssl.create_default_context()


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        where = parse_url(url)
    except UrlRefused:
        return None
    return where.scheme, where.host, where.port


def _opener(watchdog: SocketDeadline, url: str, allowed: Allowed | None,
            authorization: str | None) -> urllib.request.OpenerDirector:
    """An opener for http/https only, whose sockets the watchdog can reach. The
    `authorization` header follows a redirect only to the same origin (as curl does), so
    credentials never reach a server they were not written for."""
    origin = _origin(url)

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.attach(self.sock)

    class TLSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            # As HTTPSConnection.connect, but the socket is watched during the handshake.
            http.client.HTTPConnection.connect(self)
            watchdog.attach(self.sock)
            hostname = getattr(self, "_tunnel_host", None) or self.host
            tls = _tls_context().wrap_socket(self.sock, server_hostname=hostname,
                                             do_handshake_on_connect=False)
            self.sock = tls
            watchdog.attach(tls)
            tls.do_handshake()

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Connection, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(TLSConnection, req)

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                           msg: str, headers: Any) -> Any:
            location = headers.get("Location") or headers.get("URI")
            if location:
                target = urljoin(req.full_url, location)
                problem = ("is not http or https" if _scheme(target) not in ("http", "https")
                           else "is not allowed" if allowed is not None and not allowed(target)
                           else None)
                if problem:
                    fp.close()
                    raise FetchRefused(f"{redact_url(url)} redirects to {redact_url(target)},"
                                       f" which {problem}")
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

        def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                             msg: str, headers: Any,
                             newurl: str) -> urllib.request.Request | None:
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and authorization and _origin(newurl) == origin:
                new.add_unredirected_header("Authorization", authorization)
            return new

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HTTP(),
                    HTTPS(), urllib.request.HTTPDefaultErrorHandler(), Redirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class Download:
    """One open transfer. Use as a context manager and read it with `chunks()`.

    `length` is the size announced up front (Content-Length, or a file's size), if any.
    The deadline set by `open_url` covers everything up to the last chunk.
    """

    def __init__(self, url: str, stream: Any, length: int | None, deadline: float,
                 timeout: float, watchdog: SocketDeadline | None) -> None:
        self.url = url
        self.length = length
        self._stream = stream
        self._deadline = deadline
        self._timeout = timeout
        self._watchdog = watchdog

    def timed_out(self) -> FetchError:
        return FetchError(f"timed out after {self._timeout:.1f} s fetching {self.url}")

    def _expired(self) -> bool:
        return (self._watchdog is not None and self._watchdog.expired) or (
            time.monotonic() > self._deadline)

    def chunks(self, *, max_bytes: int | None = None) -> Iterator[bytes]:
        """The body, chunk by chunk; raise FetchError past the deadline or the limit."""
        if max_bytes is not None and self.length is not None and self.length > max_bytes:
            raise FetchTooLarge(f"{self.url} is larger than the {max_bytes}-byte limit"
                                f" ({self.length} bytes)", limit=max_bytes,
                                announced=self.length)
        total = 0
        while True:
            if self._expired():
                raise self.timed_out()
            try:
                chunk: bytes = self._stream.read1(CHUNK)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._expired():
                    raise self.timed_out() from exc
                raise FetchError(f"error reading {self.url}: {_reason(exc)}") from exc
            if not chunk:
                if self._expired():
                    raise self.timed_out()
                if self.length is not None and total < self.length:
                    raise FetchError(f"{self.url} ended after {total} of {self.length} bytes")
                return
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise FetchTooLarge(f"{self.url} is larger than the {max_bytes}-byte limit",
                                    limit=max_bytes, announced=None)
            yield chunk

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._stream.close()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for an exception from the socket or HTTP layer."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    elif isinstance(exc, urllib.error.URLError):
        return " ".join(str(exc.reason).split())
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _basic_auth(userinfo: str) -> str:
    user, _, password = userinfo.partition(":")
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _open_repo_file(where: Location, shown: str, repo: RepoSnapshot | None, deadline: float,
                    timeout: float) -> Download:
    if repo is None:
        raise FetchRefused(f"relative file URL {shown} needs the repository to read it from")
    try:
        stream, size = repo.open(where.path(), shown)
    except RepoFileError as exc:
        raise (FetchRefused if exc.refused else FetchError)(str(exc)) from exc
    return Download(shown, stream, size, deadline, timeout, None)


def _open_host_file(url: str, where: Location, shown: str, file_roots: Sequence[str | Path],
                    deadline: float, timeout: float) -> Download:
    """A host file under an operator's root, checked again with every link resolved."""
    try:
        check_file_root(url, where, file_roots)
    except UrlRefused as exc:
        raise FetchRefused(str(exc)) from None
    real = Path(os.path.realpath(where.path()))
    roots = [Path(os.path.realpath(r)) for r in file_roots]
    if not any(real == r or r in real.parents for r in roots):
        listed = ", ".join(str(r) for r in file_roots)
        raise FetchRefused(f"URL {shown} is refused: it leads outside the allowed file roots"
                           f" ({listed}) through a symbolic link")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise FetchError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FetchRefused(f"{shown} is not a regular file")
    return Download(shown, os.fdopen(fd, "rb"), info.st_size, deadline, timeout, None)


def open_url(url: str, *, timeout: float, repo: RepoSnapshot | None = None,
             file_roots: Sequence[str | Path] = (), credentials: str | None = None,
             allowed: Allowed | None = None) -> Download:
    """Open `url` for reading within `timeout` seconds in all; raise FetchError.

    A relative `file:` URL is read from `repo`, an absolute one only under `file_roots`.
    `credentials` (`user:password`) stand in for userinfo the URL shows as `***`.
    `allowed` (optional) is checked for every redirect target.
    """
    deadline = time.monotonic() + timeout
    shown = redact_url(url)
    try:
        where = parse_url(url)
    except UrlRefused as exc:
        raise FetchRefused(str(exc)) from None
    if where.scheme == "file":
        if where.absolute:
            return _open_host_file(url, where, shown, file_roots, deadline, timeout)
        return _open_repo_file(where, shown, repo, deadline, timeout)
    userinfo = credentials if where.userinfo == HIDDEN else where.userinfo
    if where.userinfo == HIDDEN and not credentials:
        raise FetchRefused(f"URL {shown} needs credentials, and none were given")
    target = without_userinfo(url)
    authorization = _basic_auth(userinfo) if userinfo is not None else None
    watchdog = SocketDeadline(timeout)
    try:
        req = urllib.request.Request(target, headers={"User-Agent": USER_AGENT,
                                                      "Accept-Encoding": "identity"})
        if authorization:
            req.add_unredirected_header("Authorization", authorization)
        resp = _opener(watchdog, target, allowed, authorization).open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        watchdog.cancel()
        exc.close()
        raise FetchError(f"HTTP {exc.code} fetching {shown}") from exc
    except FetchError:
        watchdog.cancel()
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        watchdog.cancel()
        if watchdog.expired or isinstance(getattr(exc, "reason", exc), TimeoutError):
            raise FetchError(f"timed out after {timeout:.1f} s fetching {shown}") from exc
        raise FetchError(f"cannot fetch {shown}: {redact_text(_reason(exc))}") from exc
    except BaseException:
        watchdog.cancel()
        raise
    length_text = (resp.headers.get("Content-Length") or "").strip()
    length = int(length_text) if re.fullmatch(r"[0-9]{1,20}", length_text) else None
    return Download(shown, resp, length, deadline, timeout, watchdog)


def fetch_bytes(url: str, *, max_bytes: int, timeout: float, repo: RepoSnapshot | None = None,
                file_roots: Sequence[str | Path] = (), allowed: Allowed | None = None) -> bytes:
    """The whole body of `url` (at most `max_bytes`), e.g. a manifest."""
    with open_url(url, timeout=timeout, repo=repo, file_roots=file_roots,
                  allowed=allowed) as download:
        return b"".join(download.chunks(max_bytes=max_bytes))


def fetch_to_file(url: str, dest: Path, *, max_bytes: int | None, timeout: float,
                  repo: RepoSnapshot | None = None, file_roots: Sequence[str | Path] = (),
                  credentials: str | None = None,
                  on_chunk: Callable[[bytes], None] | None = None,
                  allowed: Allowed | None = None) -> int:
    """Stream `url` into `dest` (created or truncated), flushed and fsynced; return the
    byte count. On failure `dest` is removed, so no partial payload is left behind.

    `on_chunk` sees every chunk as it is written (hashing while streaming).
    """
    total = 0
    try:
        with open_url(url, timeout=timeout, repo=repo, file_roots=file_roots,
                      credentials=credentials, allowed=allowed) as download, \
                dest.open("wb") as out:
            for chunk in download.chunks(max_bytes=max_bytes):
                out.write(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                total += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return total
