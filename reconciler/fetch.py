"""Bounded downloads for manifests and payloads: http, https and file URLs.

The timeout is a deadline for the whole transfer, not per read, so a server that hangs or
trickles a byte a second fails on time; the size limit is enforced while streaming.
Relative `file:` URLs resolve against a base directory and may not climb out of it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

CHUNK = 256 * 1024


class FetchError(RuntimeError):
    """A download failed; the message is one line a person can act on."""


def _file_path(url: str, base_dir: Path | None) -> Path:
    rest = url[len("file:"):]
    if rest.startswith("//"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise FetchError(f"file URL with a host is not supported: {url}")
        return Path(unquote(parsed.path))
    if rest.startswith("/"):
        return Path(unquote(rest))
    if base_dir is None:
        raise FetchError(f"relative file URL {url} has no base directory to resolve against")
    base = base_dir.resolve()
    path = (base / unquote(rest)).resolve()
    if base != path and base not in path.parents:
        raise FetchError(f"file URL {url} points outside {base}")
    return path


def _chunks(url: str, *, timeout: float, base_dir: Path | None,
            max_bytes: int | None) -> Iterator[bytes]:
    deadline = time.monotonic() + timeout
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    stream: BinaryIO
    if scheme == "file":
        path = _file_path(url, base_dir)
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise FetchError(f"cannot read {url}: {exc.strerror or exc}") from exc
    elif scheme in ("http", "https"):
        req = urllib.request.Request(url, headers={"User-Agent": "batchq"})
        try:
            resp = urllib.request.urlopen(req, timeout=min(timeout, 30.0))
        except urllib.error.HTTPError as exc:
            raise FetchError(f"HTTP {exc.code} fetching {url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise FetchError(f"timed out after {timeout:.1f} s fetching {url}") from exc
            raise FetchError(f"cannot fetch {url}: {reason}") from exc
        length = resp.headers.get("Content-Length")
        if max_bytes is not None and length and length.isdigit() and int(length) > max_bytes:
            resp.close()
            raise FetchError(f"{url} is larger than the {max_bytes}-byte limit")
        stream = resp
    else:
        raise FetchError(f'unsupported URL scheme "{scheme}" in {url}')
    total = 0
    with stream:
        while True:
            if time.monotonic() > deadline:
                raise FetchError(f"timed out after {timeout:.1f} s fetching {url}")
            try:
                chunk = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK)
            except TimeoutError as exc:
                raise FetchError(f"timed out after {timeout:.1f} s fetching {url}") from exc
            except OSError as exc:
                raise FetchError(f"error reading {url}: {exc}") from exc
            if not chunk:
                return
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise FetchError(f"{url} is larger than the {max_bytes}-byte limit")
            yield chunk


def fetch_bytes(url: str, *, max_bytes: int, timeout: float,
                base_dir: Path | None = None) -> bytes:
    return b"".join(_chunks(url, timeout=timeout, base_dir=base_dir, max_bytes=max_bytes))


def fetch_to_file(url: str, dest: BinaryIO, *, max_bytes: int | None, timeout: float,
                  base_dir: Path | None = None,
                  on_chunk: Callable[[bytes], None] | None = None) -> int:
    """Stream `url` into the open file `dest`; return the byte count."""
    total = 0
    for chunk in _chunks(url, timeout=timeout, base_dir=base_dir, max_bytes=max_bytes):
        dest.write(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
        total += len(chunk)
    return total
