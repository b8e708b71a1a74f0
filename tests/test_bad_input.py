"""Hostile and broken input through the whole reconciler: each costs only its own batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness

BOMB = """apiVersion: batchq.dev/v1
kind: Batch
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
spec: *i
"""


@pytest.fixture
def h(git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(git_repo, tmp_path / "state", smtp.hostport)
    yield harness
    harness.close()


class Hanging:
    """An HTTP server that accepts and then says nothing (bounded: closes at shutdown)."""

    def __init__(self) -> None:
        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stop.wait(20)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/manifest.yaml"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_broken_files_cost_only_themselves(h: Harness, payloads: PayloadServer,
                                           smtp: SmtpServer) -> None:
    good = [payloads.add("g1", b"good\n")]
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/good.yaml", batch_doc(good))
    h.repo.write("batches/malformed.yaml", "kind: Batch\nspec: {profile: test\n")
    dup = batch_doc([payloads.add("d1", b"1\n"), payloads.add("d1", b"1\n")])
    h.repo.write("batches/dupes.yaml", dup)
    unknown = batch_doc(good)
    unknown["spec"]["colour"] = "blue"
    h.repo.write("batches/unknown.yaml", unknown)
    h.repo.write("batches/traversal.yaml",
                 batch_doc([{"id": "../../etc", "url": payloads.base + "g1"}]))
    h.repo.write("batches/bomb.yaml", BOMB)
    h.repo.write("batches/huge.yaml", b"# " + b"x" * (100 * 1024 * 1024) + b"\n")
    h.repo.commit("one good batch and many bad ones")
    started = time.monotonic()
    h.until_idle()
    assert time.monotonic() - started < 60
    assert h.state("good") == "Completed"
    # the good batch's report, and one note to the depositor of each file that never parsed
    # but names its depositor's address (issue 10 §5)
    assert sorted(smtp.mailbox.subjects()) == [
        "Ingest: FAIL -- Batch File Invalid: dupes", "Ingest: FAIL -- Batch File Invalid:"
        " traversal", "Ingest: FAIL -- Batch File Invalid: unknown",
        "Ingest: OK -- Submission Processed: good"]
    errors = {b.name: b.spec_error for b in h.store.list_batches() if b.name != "good"}
    assert set(errors) == {"malformed", "dupes", "unknown", "traversal", "bomb", "huge"}
    assert errors["malformed"].startswith("batches/malformed.yaml:3:1: invalid YAML")
    assert "line 2, column 7" in errors["malformed"]
    assert "d1" in errors["dupes"] and "batches/dupes.yaml:" in errors["dupes"]
    assert 'unknown field "colour"' in errors["unknown"]
    assert "../../etc" in errors["traversal"]
    assert errors["bomb"].startswith("batches/bomb.yaml:")
    assert "104857" in errors["huge"] and "limit" in errors["huge"]
    for name in errors:
        assert h.batch(name).spec is None
        assert h.job_names(name) == []


def test_payload_url_refused_by_profile_fails_the_batch_with_a_report(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/evil.yaml", batch_doc([
        payloads.add("ok", b"ok\n"),
        {"id": "x", "url": "http://192.0.2.1/secret"},
    ]))
    h.repo.commit("a URL outside the allowed prefixes")
    h.until_idle()
    b = h.batch("evil")
    assert b.status.state == "Failed"
    assert "item 'x': URL http://192.0.2.1/secret is not allowed" in b.status.message
    assert h.job_names("evil") == []
    assert payloads.requests == []
    [msg] = smtp.mailbox.messages
    assert msg["Subject"] == "Ingest: FAIL -- Manifest Invalid: evil"
    assert "is not allowed by profile" in str(msg.get_payload(0))


def test_manifest_url_that_hangs_fails_at_the_deadline(h: Harness, payloads: PayloadServer,
                                                       smtp: SmtpServer) -> None:
    hanging = Hanging()
    try:
        profile = profile_doc(payloads.base)
        profile["spec"]["allowedUrlPrefixes"].append(hanging.url)
        profile["spec"]["manifest"] = {"timeoutSeconds": 1.5}
        h.repo.write("profiles/test.yaml", profile)
        h.repo.write("batches/slow.yaml", batch_doc(url=hanging.url))
        h.repo.write("batches/fine.yaml", batch_doc([payloads.add("f1", b"f\n")]))
        h.repo.commit("a manifest on a server that never answers")
        started = time.monotonic()
        h.until_idle()
        assert time.monotonic() - started < 20
        b = h.batch("slow")
        assert b.status.state == "Failed"
        assert "timed out after 1.5 s" in b.status.message
        assert h.state("fine") == "Completed"
        subjects = sorted(m["Subject"] for m in smtp.mailbox.messages)
        assert subjects == ["Ingest: FAIL -- Manifest Invalid: slow",
                            "Ingest: OK -- Submission Processed: fine"]
    finally:
        hanging.close()


def test_remote_manifests_checkm_and_yaml(h: Harness, payloads: PayloadServer,
                                          smtp: SmtpServer) -> None:
    a = payloads.add("a.tif", b"aaaa\n")
    b = payloads.add("b.tif", b"bbbb\n")
    checkm = (
        "#%checkm_0.7\n"
        "#%profile | http://uc3.cdlib.org/registry/ingest/manifest/"
        "mrt-single-file-batch-manifest\n"
        "#%prefix | mrt: | http://merritt.cdlib.org/terms#\n"
        "#%prefix | nfo: | http://www.semanticdesktop.org/ontologies/2007/03/22/nfo#\n"
        "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | "
        "nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier | mrt:localIdentifier | "
        "mrt:creator | mrt:title | mrt:date\n"
        f"{a['url']} | sha256 | {a['digest']['value']} | 5 | | a.tif | | ark-a | Ann | "
        "Map A | 1912\n"
        f"{b['url']} | SHA-256 | {b['digest']['value']} | 5 | | b.tif | | ark-b | Bo | "
        "Map B | 1915\n"
        "#%eof\n"
    )
    payloads.add("batch.checkm", checkm.encode())
    payloads.add("list.yaml", (f"- id: y1\n  url: {a['url']}\n"
                               f"- id: y2\n  url: {b['url']}\n  title: Second\n").encode())
    payloads.add("list.json", b'{"items": [{"id": "j1", "url": "' + a["url"].encode()
                 + b'"}]}')
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/ck.yaml", batch_doc(url=payloads.base + "batch.checkm"))
    h.repo.write("batches/yl.yaml", batch_doc(url=payloads.base + "list.yaml"))
    h.repo.write("batches/js.yaml", batch_doc(url=payloads.base + "list.json"))
    h.repo.commit("three remote manifests")
    h.until_idle()
    assert h.jobs("ck") == {"ark-a": "Completed", "ark-b": "Completed"}
    titles = [s.item.title for s in h.store.list_items("ck")]
    assert titles == ["Map A", "Map B"]
    assert h.store.list_items("ck")[0].item.creator == "Ann"
    assert h.jobs("yl") == {"y1": "Completed", "y2": "Completed"}
    assert h.jobs("js") == {"j1": "Completed"}
    assert len(smtp.mailbox.messages) == 3
