"""Checkm and list manifests, and bounded fetching, without the reconciler around them."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests.checkm import parse_checkm
from reconciler.manifests.fetch import FetchError, fetch_bytes
from reconciler.manifests.resolve import ManifestError, check_items

HEAD = ("#%checkm_0.7\n#%profile | http://uc3.cdlib.org/registry/ingest/manifest/{p}\n"
        "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | "
        "nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier | mrt:localIdentifier | "
        "mrt:creator | mrt:title | mrt:date\n")


@pytest.mark.parametrize("profile", ["mrt-single-file-batch-manifest",
                                     "mrt-container-batch-manifest"])
def test_checkm_profiles(profile: str) -> None:
    text = HEAD.format(p=profile) + (
        "http://h/a.zip | MD5 | " + "a" * 32 + " | 12 | | a.zip | | | Ann | A | 2001\n"
        "http://h/b.checkm | | | | | b.checkm | ark:/1/b | local b! | | B | \n#%eof\n")
    items = parse_checkm(text, "m.checkm")
    assert [i["id"] for i in items] == ["a.zip", "local_b_"]
    # a single file's url, digest and size are the item's; a container's are its own
    where = items if profile == "mrt-single-file-batch-manifest" else [
        i["container"] for i in items]
    assert where[0]["digest"] == {"algorithm": "md5", "value": "a" * 32}
    assert where[0]["size"] == 12 and items[0]["title"] == "A"
    assert items[0]["creator"] == "Ann"
    assert where[1]["url"] == "http://h/b.checkm"
    assert items[1]["primaryId"] == "ark:/1/b"
    assert check_items(items, "m.checkm")[1].id == "local_b_"


@pytest.mark.parametrize(("body", "message"), [
    ("nothing here\n", "m:1: not a checkm manifest"),
    ("#%checkm_0.7\n#%profile | http://x/other\n", "m:2: unknown manifest profile"),
    (HEAD.format(p="mrt-batch-manifest") + " | | | | | a | | | | | \n", "m:4: missing"),
    (HEAD.format(p="mrt-batch-manifest") + "http://h/a | crc32 | 1 | | | a | | | | | \n",
     "m:4: hash algorithm 'crc32' is one Merritt accepts, but batchq cannot verify it"),
    (HEAD.format(p="mrt-batch-manifest") + "http://h/a | | | big | | a | | | | | \n",
     "m:4: file size 'big' is not a whole number"),
    (HEAD.format(p="mrt-batch-manifest") + "http://h/a | | | | | a | | | | | \n"
     "http://h/b | | | | | a | | | | | \n", "m:5: item id 'a' (from 'a') is already used on"
     " line 4"),
])
def test_checkm_errors_name_the_line(body: str, message: str) -> None:
    with pytest.raises(ManifestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_checkm(body, "m")


def test_list_items_are_checked_like_inline_ones() -> None:
    with pytest.raises(ManifestError, match=r"item \[1\] has id 'a', already used by item"):
        check_items([{"id": "a", "url": "http://h/1"}, {"id": "a", "url": "http://h/2"}], "m")
    with pytest.raises(ManifestError, match=r"item \[0\]: Additional properties"):
        check_items([{"id": "a", "url": "http://h/1", "colour": "red"}], "m")
    with pytest.raises(ManifestError, match=r"item \[0\]\.id"):
        check_items([{"id": "../../etc", "url": "http://h/1"}], "m")
    with pytest.raises(ManifestError, match="lists no items"):
        check_items([], "m")


class Trickle:
    def __init__(self) -> None:
        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                for _ in range(30):
                    if stop.wait(0.2):
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_trickling_server_fails_at_the_deadline() -> None:
    t = Trickle()
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"timed out after 1\.0 s"):
            fetch_bytes(t.url, max_bytes=1000, timeout=1.0)
        assert time.monotonic() - started < 3
    finally:
        t.close()


def test_size_limit_and_schemes(tmp_path: Path) -> None:
    f = tmp_path / "m.txt"
    f.write_bytes(b"y" * 100)
    roots = [tmp_path]  # an absolute file: URL needs an operator's root
    assert fetch_bytes(f"file://{f}", max_bytes=100, timeout=5, file_roots=roots) == b"y" * 100
    with pytest.raises(FetchError, match="larger than the 99-byte limit"):
        fetch_bytes(f"file://{f}", max_bytes=99, timeout=5, file_roots=roots)
    with pytest.raises(FetchError, match='unsupported scheme "ftp"'):
        fetch_bytes("ftp://h/x", max_bytes=99, timeout=5)
