"""Issue 7 §1: URLs and files are confined, and credentials are never shown.

Every end-to-end case drives the real `batchq` command on real commits: `file:` URLs are
read from Git at the batch's commit (never the working tree or the host), absolute paths
only under an operator's root, allowed prefixes are matched part by part, a job gets a
minimal environment, storage stays under its root, and a Merritt-style `user:password@`
payload URL is used for the request and found nowhere it could be shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.local.sqlite import SqliteStore
from reconciler.support.redaction import redact_text, redact_url
from reconciler.support.urls import (
    UrlRefused,
    _parse_url_kept,
    check_url,
    parse_url,
    url_allowed,
)
from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq
from tests.ocfl_check import head_file
from web.app import create_app

SECRET = "Zq9-never-shown-7f3a"



def reconcile(repo: GitRepo, state: Path, smtp: SmtpServer, *extra: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = batchq("reconcile", "--repo", str(repo.path), "--state", str(state), "--smtp",
                  smtp.hostport, "--until-idle", "--timeout", "120", *extra, env=env)
    assert done.returncode == 0, done.stderr
    return done


def profile(*prefixes: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"allowedUrlPrefixes": list(prefixes),
                            "notification": {"from": "batchq@example.org"}}
    body.update(spec)
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "spec": body}


def item(item_id: str, url: str, body: bytes | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item_id, "url": url}
    if body is not None:
        out["size"] = len(body)
        out["digest"] = {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()}
    return out


def outcome(state: Path) -> dict[str, tuple[str, dict[str, tuple[str, str]], str]]:
    """batch -> (state, {item: (state, message)}, manifest error), as the store has it."""
    store = SqliteStore(state / "batchq.sqlite3")
    try:
        return {b.name: (str(b.status.state),
                         {s.item.id: (str(s.state), s.message)
                          for s in store.list_items(b.name)},
                         b.status.manifest_error)
                for b in store.list_batches()}
    finally:
        store.close()


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- file: URLs ------------------------------------------------------------------------


def test_file_urls_are_read_from_git_at_the_batch_commit_never_the_host(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    committed = b"the committed payload\n"
    git_repo.write("profiles/test.yaml", profile("file:"))
    git_repo.write("payloads/a.txt", committed)
    (git_repo.path / "payloads" / "link").symlink_to("/etc/passwd")  # committed as a link
    git_repo.write("batches/good.yaml", batch_doc([item("a", "file:payloads/a.txt",
                                                        committed)]))
    git_repo.write("batches/link.yaml", batch_doc([item("link", "file:payloads/link")]))
    git_repo.write("batches/late.yaml", batch_doc([item("late", "file:payloads/late.txt")]))
    git_repo.write("batches/dir.yaml", batch_doc([item("dir", "file:payloads")]))
    hostile = {"environ": "file:/proc/self/environ", "passwd": "file:///etc/passwd",
               "localhost": "file://localhost/etc/hostname"}
    for name, url in hostile.items():
        git_repo.write(f"batches/{name}.yaml", batch_doc([item(name, url)]))
    commit = git_repo.commit("submit")
    # The working tree moves on without a commit: none of it may be read.
    git_repo.write("payloads/a.txt", b"edited in the working tree, never committed\n")
    git_repo.write("payloads/late.txt", b"never committed\n")

    state = tmp_path / "state"
    reconcile(git_repo, state, smtp, env={"BATCHQ_TEST_SECRET": SECRET})
    found = outcome(state)
    assert found["good"] == ("Completed", {"a": ("Completed", "")}, "")
    assert found["link"][1] == {"link": ("Failed", "file:payloads/link is a symbolic link in"
                                         " the repository; links are not followed")}
    assert found["late"][1] == {"late": ("Failed", "cannot read file:payloads/late.txt: not"
                                         f" in the repository at commit {commit[:12]}")}
    assert found["dir"][1] == {"dir": ("Failed", "file:payloads is a directory in the"
                                       " repository, not a file")}
    for name, url in hostile.items():
        assert found[name] == ("Failed", {}, (
            f"item {name!r}: URL {url} is refused: it names a file on the host, outside the"
            " repository (only an operator can allow a host directory, with"
            " --allow-file-root)"))
    stored = stored_files(state / "storage")
    assert head_file(state / "storage" / "storage", "good/a", "a.txt") == committed
    for path in stored:
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"root:" not in data, path
    subjects = sorted(smtp.mailbox.subjects())
    assert subjects.count("Ingest: FAIL -- Manifest Invalid: environ") == 1


def test_an_operator_root_allows_absolute_file_urls_inside_it_only(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    root = tmp_path / "deposits"
    root.mkdir()
    body = b"deposited on the host\n"
    (root / "in.txt").write_bytes(body)
    (root / "out").symlink_to("/etc/passwd")  # inside the root, leading out of it
    sibling = tmp_path / "deposits-other"  # shares the root's name as a string prefix
    sibling.mkdir()
    (sibling / "x.txt").write_bytes(b"not under the root\n")
    git_repo.write("profiles/test.yaml", profile("file:"))
    git_repo.write("batches/inside.yaml", batch_doc([item("in", f"file://{root}/in.txt",
                                                          body)]))
    git_repo.write("batches/link.yaml", batch_doc([item("out", f"file://{root}/out")]))
    git_repo.write("batches/sibling.yaml", batch_doc([item("x", f"file:{sibling}/x.txt")]))
    git_repo.commit("host files")

    state = tmp_path / "state"
    reconcile(git_repo, state, smtp, "--allow-file-root", str(root))
    found = outcome(state)
    assert found["inside"] == ("Completed", {"in": ("Completed", "")}, "")
    assert found["link"][1] == {"out": ("Failed", f"URL file://{root}/out is refused: it"
                                        f" leads outside the allowed file roots ({root})"
                                        " through a symbolic link")}
    assert found["sibling"] == ("Failed", {}, (
        f"item 'x': URL file:{sibling}/x.txt is refused: it is outside the allowed file"
        f" roots ({root})"))
    for path in stored_files(state / "storage"):
        assert b"root:" not in path.read_bytes()


# --- allowed prefixes ------------------------------------------------------------------


def test_prefixes_match_host_port_and_whole_segments_in_reconcile_and_validate(
        git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer, tmp_path: Path) -> None:
    port = payloads.port
    short_port = str(port)[:-1]  # its digits begin the server's port: `:6000` vs `:60000`
    body = b"public payload\n"
    for name in ("pub/a.txt", "public/b.txt", "private/c.txt"):
        payloads.add(name, body)
    base = f"http://127.0.0.1:{port}"
    git_repo.write("profiles/test.yaml",
                   profile(f"{base}/pub", f"http://127.0.0.1:{short_port}"))
    urls = {
        "ok": f"{base}/pub/a.txt",
        "segment": f"{base}/public/b.txt",
        "port": f"{base}/private/c.txt",
        "dots": f"{base}/pub/../private/c.txt",
        "slash": f"{base}/pub/..%2Fprivate/c.txt",
        "backslash": f"{base}/pub/..%5Cprivate/c.txt",
    }
    for name, url in urls.items():
        git_repo.write(f"batches/{name}.yaml", batch_doc([item(name, url, body)]))
    git_repo.commit("prefixes")
    state = tmp_path / "state"
    reconcile(git_repo, state, smtp)
    found = outcome(state)
    allowed = f"(allowed prefixes: {base}/pub, http://127.0.0.1:{short_port})"
    assert found["ok"] == ("Completed", {"ok": ("Completed", "")}, "")
    assert found["segment"][2] == (f"item 'segment': URL {urls['segment']} is not allowed"
                                   f' by profile "test" {allowed}')
    assert found["port"][2] == (f"item 'port': URL {urls['port']} is not allowed by"
                                f' profile "test" {allowed}')
    assert found["dots"][2] == (f"item 'dots': URL {urls['dots']} is refused: it contains"
                                ' the dot segment ".."')
    assert found["slash"][2] == (f"item 'slash': URL {urls['slash']} is refused: it"
                                 " contains an encoded slash (%2F)")
    assert found["backslash"][2] == (f"item 'backslash': URL {urls['backslash']} is"
                                     " refused: it contains an encoded backslash (%5C)")
    assert payloads.requests == ["pub/a.txt"]  # nothing refused was ever requested

    # `batchq validate` says the same as the reconciler, at each URL's line
    checked = batchq("validate", str(git_repo.path))
    assert checked.returncode == 1
    refused = ("segment", "port", "dots", "slash", "backslash")
    assert checked.stdout.splitlines() == [
        f"{git_repo.path}/batches/{name}.yaml:11:12: spec.manifest.items[0].url:"
        f" {found[name][2].removeprefix(f'item {name!r}: ')}" for name in sorted(refused)]


@pytest.mark.parametrize(("url", "prefixes", "problem"), [
    ("http://127.0.0.1/x", ["http://127.0.0.1"], None),
    ("http://127.0.0.10/x", ["http://127.0.0.1"], "is not allowed"),
    ("http://127.0.0.1:60000/x", ["http://127.0.0.1:6000"], "is not allowed"),
    ("http://127.0.0.1:6000/x", ["http://127.0.0.1:6000"], None),
    ("http://127.0.0.1:80/x", ["http://127.0.0.1/"], None),  # the default port
    ("https://127.0.0.1/x", ["http://127.0.0.1/"], "is not allowed"),
    ("http://HOST.example/pub/x", ["http://host.example/pub/"], None),
    ("http://host.example/pub", ["http://host.example/pub/"], None),
    ("http://host.example/public", ["http://host.example/pub"], "is not allowed"),
    ("http://host.example/pub/x?a=../b", ["http://host.example/pub"], None),
    ("http://127.0.0.1@evil.example/x", ["http://127.0.0.1"], "is not allowed"),
    ("http://127.0.0.1:6000@evil.example/", ["http://127.0.0.1:6000"], "is not allowed"),
    ("http://u:p@host.example/pub/x", ["http://host.example/pub"], None),
    ("http://a@b@host.example/pub/x", ["http://host.example/pub"], 'more than one "@"'),
    ("http://evil.example\\@host.example/x", ["http://host.example"], "a backslash"),
    ("http://host.example/pub/%2e%2E/x", ["http://host.example/pub"], 'dot segment "%2e%2E"'),
    ("http://host.example/pub/./x", ["http://host.example/pub"], 'dot segment "."'),
    ("http://host.example/pub%2fx", ["http://host.example/pub"], "encoded slash (%2F)"),
    ("http://host.example/pub%5cx", ["http://host.example/pub"], "encoded backslash (%5C)"),
    ("http://host.example:0/x", ["http://host.example"], 'port "0"'),
    ("ftp://host.example/x", ["ftp://host.example"], 'unsupported scheme "ftp"'),
    ("file:payloads/x", ["file:"], None),
    ("file:payloads/x", ["file:payloads"], None),
    ("file:payloadsx/y", ["file:payloads"], "is not allowed"),
    ("file:payloads//x", ["file:"], "an empty path segment"),
    ("file:/etc/passwd", ["file:"], "names a file on the host"),
    ("file://example.org/x", ["file:"], 'cannot name a host ("example.org")'),
])
def test_the_one_url_check(url: str, prefixes: list[str], problem: str | None) -> None:
    assert url_allowed(url, prefixes) is (problem is None)
    if problem is None:
        check_url(url, prefixes)
        return
    with pytest.raises(UrlRefused) as info:
        check_url(url, prefixes)
    assert problem in str(info.value)


def test_a_url_read_again_is_read_the_same_as_a_prefix_or_not_and_credentials_not_kept(
) -> None:
    """parse_url keeps what it parsed (an item's URL is read two or three times): the same
    text still reads one way as a prefix and another as a URL, in either order, a refusal
    is made again each time, and a URL with credentials is never kept."""
    for _ in range(2):
        assert parse_url("file:", prefix=True).segments == ()
        with pytest.raises(UrlRefused, match="names no file"):
            parse_url("file:")
        assert parse_url("https://h.example/p?q=1").segments == ("p",)
        with pytest.raises(UrlRefused, match="no query or fragment"):
            parse_url("https://h.example/p?q=1", prefix=True)
    kept = _parse_url_kept.cache_info().currsize
    assert parse_url("https://u:s3cret@h.example/x").userinfo == "u:s3cret"
    assert _parse_url_kept.cache_info().currsize == kept


def test_absolute_file_urls_and_operator_roots(tmp_path: Path) -> None:
    roots = [tmp_path / "in"]
    assert url_allowed(f"file://{tmp_path}/in/a", ["file:"], file_roots=roots)
    assert url_allowed(f"file:{tmp_path}/in/sub/a", ["file:"], file_roots=roots)
    assert not url_allowed(f"file:{tmp_path}/inside/a", ["file:"], file_roots=roots)
    assert not url_allowed(f"file:{tmp_path}/in/../x", ["file:"], file_roots=roots)
    assert not url_allowed(f"file:{tmp_path}/in/a", ["file:payloads"], file_roots=roots)


def test_userinfo_is_hidden_in_every_form() -> None:
    assert redact_url("https://u:pw@h.example/x") == "https://***@h.example/x"
    assert redact_url("https://u:p@ss@h.example/x") == "https://***@h.example/x"
    assert redact_url("https://h.example/x@y") == "https://h.example/x@y"
    text = "HTTP 404 fetching http://u:p@w@h:1/x and https://t0k3n@g.example/r.git."
    assert redact_text(text) == ("HTTP 404 fetching http://***@h:1/x and"
                                 " https://***@g.example/r.git.")


# --- the worker's environment ----------------------------------------------------------


def test_a_job_gets_only_its_own_environment(git_repo: GitRepo, smtp: SmtpServer,
                                             tmp_path: Path) -> None:
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    git_repo.write("profiles/test.yaml", profile(
        "http://127.0.0.1:9/", job={"command": [sys.executable, "-c", dump]}))
    git_repo.write("batches/env.yaml", batch_doc([item("e", "http://127.0.0.1:9/e")]))
    git_repo.commit("a job that prints its environment")
    state = tmp_path / "state"
    reconcile(git_repo, state, smtp, env={
        "SMTP_PASSWORD": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET,
        "BATCHQ_WEBHOOK_SECRET": SECRET, "LC_ALL": "C.UTF-8"})
    assert outcome(state)["env"][0] == "Completed"
    (job_dir,) = (state / "jobs").iterdir()
    text = (job_dir / "stdout").read_text()
    assert SECRET not in text
    seen = json.loads(text)
    job_vars = {"BATCHQ_BATCH", "BATCHQ_ITEM_ID", "BATCHQ_ITEM_URL", "BATCHQ_ATTEMPT",
                "BATCHQ_STORAGE", "BATCHQ_ALLOWED_PREFIXES", "BATCHQ_GIT_DIR",
                "BATCHQ_GIT_COMMIT", "BATCHQ_TERMINATION_LOG", "BATCHQ_CREDENTIALS_FILE"}
    assert set(seen) - job_vars == {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"}
    assert seen["HOME"] == str(job_dir) and seen["LC_ALL"] == "C.UTF-8"
    assert Path(seen["TMPDIR"]).parent == job_dir and Path(seen["TMPDIR"]).is_dir()
    assert seen["BATCHQ_ITEM_URL"] == "http://127.0.0.1:9/e"


# --- storage ---------------------------------------------------------------------------


def test_storage_path_stays_inside_the_storage_root(
        git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer, tmp_path: Path) -> None:
    body = b"stored payload\n"
    payload = payloads.add("p", body)
    outside = Path("/srv/batchq-outside")  # short enough to show whole in the message
    for name, path in (("inside", "deposits/2026"), ("absolute", str(outside)),
                       ("climbing", "deposits/../../../escaped")):
        git_repo.write(f"profiles/{name}.yaml", profile(payloads.base, storage={"path": path}))
        doc = batch_doc([payload])
        doc["spec"]["profile"] = name
        git_repo.write(f"batches/{name}.yaml", doc)
    git_repo.commit("three profiles")
    state, root = tmp_path / "state", tmp_path / "storage-root"
    reconcile(git_repo, state, smtp, env={"BATCHQ_STORAGE_ROOT": str(root)})
    found = outcome(state)
    assert found["inside"][0] == "Completed"
    assert head_file(root / "deposits" / "2026", "inside/p", "p") == body
    assert not outside.exists() and not (tmp_path / "escaped").exists()
    # the other two profiles never loaded, so their batches wait and nothing ran
    assert found["absolute"] == found["climbing"] == ("Pending", {}, "")
    assert payloads.requests == ["p"]
    shown = batchq("status", "--state", str(state)).stderr.splitlines()
    assert [line for line in shown if line.startswith("error: profiles/")] == [
        f"error: profiles/absolute.yaml:9:11: spec.storage.path: {json.dumps(str(outside))}"
        " must be a relative path inside the storage root (set by the operator), not an"
        " absolute one",
        'error: profiles/climbing.yaml:9:11: spec.storage.path: "deposits/../../../escaped"'
        " must stay inside the storage root: remove the '..' segments",
    ]
    # the batch says why its profile cannot be used, at its spec.profile line
    assert ('error: batches/absolute.yaml:4:12: spec.profile: profile "absolute" is invalid,'
            " so no batch can use it; fix profiles/absolute.yaml:9:11: spec.storage.path:"
            f" {json.dumps(str(outside))} must be a relative path inside the storage root (set"
            " by the operator), not an absolute one") in shown


# --- credentials -----------------------------------------------------------------------


class AuthServer:
    """Payloads behind HTTP Basic auth on 127.0.0.1; records what each request carried."""

    def __init__(self, user: str, password: str) -> None:
        self.files: dict[str, bytes] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.redirects: dict[str, str] = {}
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                outer.seen.append((self.path, auth))
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.files.get(self.path)
                protected = self.path.endswith(".txt")
                if protected and auth != f"Basic {token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def merritt() -> Iterator[tuple[AuthServer, AuthServer]]:
    home = AuthServer("depositor", SECRET)
    elsewhere = AuthServer("depositor", SECRET)
    elsewhere.files["/c.bin"] = b"served elsewhere\n"
    yield home, elsewhere
    home.close()
    elsewhere.close()


def everything_shown(state: Path, name: str) -> str:
    """All a person can see of batch `name`: status (text and JSON), every page and API
    view of the site, and the rows of the store that are kept for display."""
    shown = [batchq("status", "--state", str(state)).stdout,
             batchq("status", "--state", str(state)).stderr,
             batchq("status", "--json", "--state", str(state)).stdout]
    app = create_app({"STATE_DIR": state, "TESTING": True})
    client = app.test_client()
    for path in ("/", f"/batches/{name}", "/api/batches", f"/api/batches/{name}",
                 f"/api/batches/{name}/jobs", f"/batches/{name}/reports/1.eml"):
        response = client.get(path)
        assert response.status_code == 200, path
        shown.append(response.get_data(as_text=True))
    with sqlite3.connect(state / "batchq.sqlite3") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t not in ("credentials", "sqlite_sequence")]
        for table in tables:
            shown += [repr(row) for row in db.execute(f"SELECT * FROM {table}")]
    return "\n".join(shown)


def test_credentials_in_payload_urls_are_used_and_never_shown(
        git_repo: GitRepo, smtp: SmtpServer, merritt: tuple[AuthServer, AuthServer],
        tmp_path: Path) -> None:
    home, elsewhere = merritt
    home.redirects["/hop.txt"] = f"http://{elsewhere.base}/c.bin"
    payload = b"protected payload\n"
    sha = hashlib.sha256(payload).hexdigest()
    creds = f"depositor:{SECRET}@"
    manifest = "\n".join([
        "#%checkm_0.7",
        "#%profile | http://uc3.cdlib.org/registry/ingest/manifest/"
        "mrt-single-file-batch-manifest",
        "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize"
        " | nfo:fileLastModified | nfo:fileName",
        f"http://{creds}{home.base}/a.txt | sha256 | {sha} | {len(payload)} | | a.txt",
        f"http://{creds}{home.base}/missing.txt | | | | | missing.txt",
        f"http://{creds}{home.base}/hop.txt | | | | | hop.txt",
        "#%eof", ""])
    home.files.update({"/a.txt": payload, "/batch.checkm": manifest.encode()})
    git_repo.write("profiles/test.yaml", profile(f"http://{home.base}/",
                                                 f"http://{elsewhere.base}/"))
    git_repo.write("batches/creds.yaml", batch_doc(url=f"http://{home.base}/batch.checkm"))
    git_repo.commit("a Merritt manifest with credentials in its file URLs")
    state = tmp_path / "state"
    done = reconcile(git_repo, state, smtp, "--verbose")

    found = outcome(state)["creds"]
    assert found[0] == "Failed"
    assert found[1] == {
        "a.txt": ("Completed", ""),
        "missing.txt": ("Failed", f"HTTP 404 fetching http://***@{home.base}/missing.txt"),
        "hop.txt": ("Completed", ""),
    }
    token = "Basic " + base64.b64encode(f"depositor:{SECRET}".encode()).decode()
    assert ("/a.txt", token) in home.seen  # the credentials were used for the request
    assert elsewhere.seen == [("/c.bin", None)]  # and not handed to another origin
    assert head_file(state / "storage" / "storage", "creds/a.txt", "a.txt") == payload

    shown = everything_shown(state, "creds")
    assert f"http://***@{home.base}/a.txt" in shown
    assert SECRET not in shown and SECRET not in done.stderr and SECRET not in done.stdout
    for message in smtp.mailbox.messages:
        raw = message.as_bytes()
        parsed = message_from_bytes(raw, policy=policy.default)
        parts = [raw.decode(errors="replace")]
        parts += [str(p.get_content()) for p in parsed.walk() if not p.is_multipart()]
        assert SECRET not in "\n".join(parts)
        assert f"http://***@{home.base}/a.txt" in "\n".join(parts)
    for path in stored_files(state / "jobs") + stored_files(state / "storage"):
        assert SECRET.encode() not in path.read_bytes(), path
    # kept for the jobs only, in a table nothing shows
    with sqlite3.connect(state / "batchq.sqlite3") as db:
        kept = db.execute("SELECT COUNT(*) FROM credentials WHERE batch='creds'").fetchone()
    assert kept == (3,)



def test_credentials_committed_to_git_are_refused_at_their_line(
        git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer, tmp_path: Path) -> None:
    with_creds = payloads.base.replace("http://", f"http://depositor:{SECRET}@")
    git_repo.write("profiles/test.yaml", profile(payloads.base))
    git_repo.write("batches/inline.yaml", batch_doc([item("a", with_creds + "a")]))
    git_repo.write("batches/remote.yaml", batch_doc(url=with_creds + "m.checkm"))
    git_repo.commit("credentials committed by mistake")
    state = tmp_path / "state"
    reconcile(git_repo, state, smtp)
    shown = payloads.base.replace("http://", "http://***@")
    errors = [line for line in batchq("status", "--state", str(state)).stderr.splitlines()
              if "carries credentials" in line]
    assert errors == [
        f'error: batches/inline.yaml:11:12: spec.manifest.items[0].url: "{shown}a" carries'
        " credentials, which must not be committed to Git; remove the user:password@ part"
        " (a remote manifest's file URLs may carry them)",
        f'error: batches/remote.yaml:9:10: spec.manifest.url: "{shown}m.checkm" carries'
        " credentials, which must not be committed to Git; remove the user:password@ part"
        " (a remote manifest's file URLs may carry them)",
    ]
    assert {name: got[0] for name, got in outcome(state).items()} == {
        "inline": "Pending", "remote": "Pending"}  # never applied, nothing ran
    assert payloads.requests == []
    assert SECRET.encode() not in (state / "batchq.sqlite3").read_bytes()
    checked = batchq("validate", str(git_repo.path))
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"{git_repo.path}/{line.removeprefix('error: ')}" for line in errors]
