"""Bounded downloads against a real HTTP server on loopback and real files.

`LoopbackServer` is also used by test_manifests and test_worker: it serves payloads,
counts requests, and has paths that hang, trickle, lie about their length or redirect.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from reconciler.manifests.fetch import (
    FetchError,
    FetchRefused,
    FetchTooLarge,
    fetch_bytes,
    fetch_to_file,
    open_url,
)
from reconciler.manifests.repofiles import RepoSnapshot
from tests.fixtures import GitRepo


class LoopbackServer:
    """A real HTTP server on 127.0.0.1, in a thread, shut down cleanly by `close()`.

    /<name>            a payload added with `add()` (Content-Length set), else 404
    /stream/<name>     the payload without Content-Length (size known only by streaming)
    /hang              accepts, then sends nothing until the server closes
    /trickle           announces 1000 bytes, sends one every 0.2 s
    /lie               announces 100 bytes, sends 10 and closes
    /redirect?to=URL   302 to URL
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.lstrip("/")
                outer.requests.append(path)
                # OSError: the client gave up (deadline, size limit); nothing to answer.
                with contextlib.suppress(OSError):
                    self.route(path)

            def route(self, path: str) -> None:
                if path == "hang":
                    outer.stop.wait(30)
                elif path == "trickle":
                    self.head(200, length=1000)
                    for _ in range(150):
                        if outer.stop.wait(0.2):
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()
                elif path == "lie":
                    self.head(200, length=100)
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                elif path == "redirect":
                    target = parse_qs(urlsplit(self.path).query)["to"][0]
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path.startswith("stream/") and path[7:] in outer.files:
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(outer.files[path[7:]])
                    self.close_connection = True
                elif path in outer.files:
                    self.head(200, length=len(outer.files[path]))
                    self.wfile.write(outer.files[path])
                else:
                    self.head(404, length=0)

            def head(self, code: int, *, length: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(length))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = False  # server_close() joins every handler thread
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, body: bytes) -> str:
        self.files[name] = body
        return self.base + name

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    started = time.monotonic()
    s.close()
    assert time.monotonic() - started < 5, "the server did not shut down promptly"


def test_fetches_bytes_and_counts_requests(server: LoopbackServer) -> None:
    url = server.add("a.txt", b"hello\n")
    assert fetch_bytes(url, max_bytes=6, timeout=5) == b"hello\n"
    assert fetch_bytes(server.base + "stream/a.txt", max_bytes=6, timeout=5) == b"hello\n"
    assert server.requests == ["a.txt", "stream/a.txt"]


def test_size_limit_from_content_length_and_while_streaming(server: LoopbackServer) -> None:
    url = server.add("big", b"x" * 2000)
    with pytest.raises(FetchTooLarge) as info:
        fetch_bytes(url, max_bytes=1999, timeout=5)
    assert str(info.value) == f"{url} is larger than the 1999-byte limit (2000 bytes)"
    assert info.value.announced == 2000
    stream = server.base + "stream/big"
    with pytest.raises(FetchTooLarge) as info:
        fetch_bytes(stream, max_bytes=1000, timeout=5)
    assert str(info.value) == f"{stream} is larger than the 1000-byte limit"
    assert info.value.announced is None and info.value.limit == 1000


def test_http_errors_are_one_line(server: LoopbackServer) -> None:
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.base + "missing", max_bytes=10, timeout=5)
    assert str(info.value) == f"HTTP 404 fetching {server.base}missing"
    with pytest.raises(FetchError, match=r"^http://127\.0\.0\.1:\d+/lie ended after 10 of 100"
                                         r" bytes$"):
        fetch_bytes(server.base + "lie", max_bytes=1000, timeout=5)


def test_connection_refused() -> None:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port now
    with pytest.raises(FetchError, match=rf"^cannot fetch http://127\.0\.0\.1:{port}/x: "):
        fetch_bytes(f"http://127.0.0.1:{port}/x", max_bytes=10, timeout=5)


@pytest.mark.parametrize("path", ["hang", "trickle"])
def test_the_timeout_is_a_deadline_for_the_whole_transfer(server: LoopbackServer,
                                                          path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.base + path, max_bytes=10_000, timeout=1.0)
    elapsed = time.monotonic() - started
    assert str(info.value) == f"timed out after 1.0 s fetching {server.base}{path}"
    assert 0.9 <= elapsed < 2.0


def test_relative_file_urls_are_read_from_git_at_one_commit(git_repo: GitRepo) -> None:
    git_repo.write("payloads/x y.txt", b"x\n")
    first = git_repo.commit("x")
    git_repo.write("payloads/x y.txt", b"changed\n")
    git_repo.commit("changed")
    (git_repo.path / "payloads" / "x y.txt").write_bytes(b"work tree, not committed\n")
    repo = RepoSnapshot(git_repo.path / ".git", first)
    assert fetch_bytes("file:payloads/x%20y.txt", max_bytes=2, timeout=5, repo=repo) == b"x\n"
    with pytest.raises(FetchTooLarge, match=r"is larger than the 1-byte limit \(2 bytes\)"):
        fetch_bytes("file:payloads/x%20y.txt", max_bytes=1, timeout=5, repo=repo)
    with pytest.raises(FetchError) as info:
        fetch_bytes("file:nope", max_bytes=1, timeout=5, repo=repo)
    assert str(info.value) == f"cannot read file:nope: not in the repository at commit {first[:12]}"
    with pytest.raises(FetchRefused, match="needs the repository to read it from"):
        fetch_bytes("file:payloads/x%20y.txt", max_bytes=2, timeout=5)


def test_absolute_file_urls_need_an_operator_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "payloads").mkdir(parents=True)
    absolute = root / "payloads" / "x y.txt"
    absolute.write_bytes(b"x\n")
    encoded = str(absolute).replace(" ", "%20")
    for url in (f"file://{encoded}", f"file://localhost{encoded}", f"file:{encoded}"):
        assert fetch_bytes(url, max_bytes=2, timeout=5, file_roots=[root]) == b"x\n"
        with pytest.raises(FetchRefused, match="names a file on the host, outside the"
                                               " repository"):
            fetch_bytes(url, max_bytes=2, timeout=5)
    with pytest.raises(FetchRefused, match=r"is outside the allowed file roots"):
        fetch_bytes(f"file://{encoded}", max_bytes=2, timeout=5, file_roots=[root / "other"])


def test_file_urls_cannot_escape(git_repo: GitRepo, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (git_repo.path / "link").symlink_to(tmp_path / "secret")
    head = git_repo.commit("a link")
    repo = RepoSnapshot(git_repo.path / ".git", head)
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path / "secret")
    refused = {
        "file:../secret": 'URL file:../secret is refused: it contains the dot segment ".."',
        "file:%2e%2e/secret": "URL file:%2e%2e/secret is refused: it contains the dot"
                              ' segment "%2e%2e"',
        "file:link": "file:link is a symbolic link in the repository; links are not followed",
        f"file://{root}/../secret": f"URL file://{root}/../secret is refused: it contains"
                                    ' the dot segment ".."',
        f"file://{root}/out": f"URL file://{root}/out is refused: it leads outside the"
                              f" allowed file roots ({root}) through a symbolic link",
        "file://example.org/etc/passwd": "URL file://example.org/etc/passwd is refused: a"
                                         ' file: URL cannot name a host ("example.org")',
        "ftp://example.org/x": 'URL ftp://example.org/x is refused: unsupported scheme "ftp"'
                               " (http, https or file)",
        "/etc/passwd": "URL /etc/passwd is refused: it is not a URL (no scheme such as"
                       " https:)",
    }
    for url, message in refused.items():
        with pytest.raises(FetchRefused) as info:
            fetch_bytes(url, max_bytes=100, timeout=5, repo=repo, file_roots=[root])
        assert str(info.value) == message


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    started = time.monotonic()
    with pytest.raises(FetchRefused, match="is not a regular file"):
        fetch_bytes(f"file://{fifo}", max_bytes=100, timeout=5, file_roots=[tmp_path])
    with pytest.raises(FetchRefused, match="is not a regular file"):
        fetch_bytes(f"file://{tmp_path}", max_bytes=100, timeout=5, file_roots=[tmp_path])
    assert time.monotonic() - started < 1


def test_fetch_to_file_streams_and_cleans_up(server: LoopbackServer, tmp_path: Path) -> None:
    body = os.urandom(700_000)
    url = server.add("p.bin", body)
    dest = tmp_path / "p.bin"
    seen: list[int] = []
    assert fetch_to_file(url, dest, max_bytes=None, timeout=5,
                         on_chunk=lambda c: seen.append(len(c))) == len(body)
    assert dest.read_bytes() == body and sum(seen) == len(body) and len(seen) > 1
    partial = tmp_path / "partial"
    with pytest.raises(FetchError, match="timed out"):
        fetch_to_file(server.base + "trickle", partial, max_bytes=None, timeout=0.5)
    with pytest.raises(FetchTooLarge):
        fetch_to_file(server.base + "stream/p.bin", partial, max_bytes=1000, timeout=5)
    assert not partial.exists()


def test_redirects_are_followed_only_where_allowed(server: LoopbackServer) -> None:
    target = server.add("t", b"target")
    hop = f"{server.base}redirect?to={target}"
    assert fetch_bytes(hop, max_bytes=10, timeout=5) == b"target"
    assert fetch_bytes(hop, max_bytes=10, timeout=5,
                       allowed=lambda u: u.startswith(server.base)) == b"target"
    with pytest.raises(FetchRefused, match=f"redirects to {target}, which is not allowed"):
        fetch_bytes(hop, max_bytes=10, timeout=5, allowed=lambda u: "redirect" in u)
    with pytest.raises(FetchRefused, match="which is not http or https"):
        fetch_bytes(f"{server.base}redirect?to=file:///etc/passwd", max_bytes=10_000,
                    timeout=5)


def test_open_url_announces_the_length(server: LoopbackServer) -> None:
    url = server.add("n", b"12345")
    with open_url(url, timeout=5) as download:
        assert download.length == 5
        assert b"".join(download.chunks()) == b"12345"
    with open_url(server.base + "stream/n", timeout=5) as download:
        assert download.length is None


@pytest.mark.parametrize("url", [
    "http://h/ok/../secret", "http://h/ok/%2E%2e/secret", "http://h/ok/./a/",
    "file:///data/../etc/passwd", "file:payloads/../../x", "file://localhost/data/a/../x",
])
def test_dot_segments_are_refused_before_any_request(server: LoopbackServer,
                                                     url: str) -> None:
    with pytest.raises(FetchRefused, match="is refused: it contains the dot segment"):
        fetch_bytes(url.replace("http://h", server.base.rstrip("/")), max_bytes=10,
                    timeout=5, file_roots=["/data"])
    assert server.requests == []
