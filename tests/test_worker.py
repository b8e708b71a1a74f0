"""The worker as a real program: a subprocess configured by environment only, real HTTP on
loopback, real files; exit code, stderr line, termination log, stored file and record."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.storage.layout import object_key
from tests.fixtures import GitRepo, wait_for
from tests.ocfl_check import content_files, head_file, inventory, validate_root
from tests.test_fetch import LoopbackServer

REPO = Path(__file__).resolve().parent.parent
BODY = b"a map of oakland\n"
SHA = hashlib.sha256(BODY).hexdigest()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    log: str  # the termination log ("" when not written)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


def worker_env(tmp: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHQ_", "AWS_"))}
    env.update(PYTHONPATH=str(REPO), BATCHQ_BATCH="maps", BATCHQ_ITEM_ID="map-001",
               BATCHQ_ITEM_URL=url, BATCHQ_STORAGE=str(tmp / "store"),
               BATCHQ_TERMINATION_LOG=str(tmp / "termination-log"))
    env.update(extra)
    return env


def run(tmp: Path, url: str, **extra: str) -> Run:
    log = tmp / "termination-log"
    log.unlink(missing_ok=True)
    p = subprocess.run([sys.executable, "-m", "reconciler.worker"], cwd=REPO,
                       env=worker_env(tmp, url, **extra), capture_output=True, text=True,
                       timeout=60)
    return Run(p.returncode, p.stdout, p.stderr, log.read_text() if log.exists() else "")


def expect(sha256: bytes, size: int | None = None, alg: str = "sha256") -> dict[str, str]:
    env = {"BATCHQ_DIGEST_ALGORITHM": alg, "BATCHQ_DIGEST_VALUE": hashlib.new(alg, sha256)
           .hexdigest()}
    if size is not None:
        env["BATCHQ_ITEM_SIZE"] = str(size)
    return env


def leftovers(tmp: Path) -> list[str]:
    """Temp files anywhere under the storage root."""
    store = tmp / "store"
    return [str(p) for p in store.rglob(".*")] if store.exists() else []


def assert_failed(r: Run, code: int, reason: str) -> None:
    assert r.code == code, r
    assert r.stderr == f"batchq-worker: {reason}\n"
    assert r.log == reason + "\n"


def test_stores_an_ocfl_object_then_resumes_without_downloading(
        tmp_path: Path, server: LoopbackServer) -> None:
    url = server.add("map-001.tif", BODY)
    r = run(tmp_path, url, **expect(BODY, len(BODY), "md5"))
    assert (r.code, r.stderr, r.log) == (0, "", "")
    assert r.stdout.splitlines()[0] == f"start: batch maps item map-001 from {url}"
    assert f"fetched: {len(BODY)} bytes, sha256 {SHA}" in r.stdout
    assert r.stdout.splitlines()[-1] == ("done: stored maps/map-001 v1 (17 bytes, 1 file(s)"
                                         " written, 0 reused)")
    store = tmp_path / "store"
    assert validate_root(store)[0] == 1
    assert head_file(store, "maps/map-001", "map-001.tif") == BODY
    fixity = inventory(store, "maps/map-001")["fixity"]
    assert fixity["md5"] == {hashlib.md5(BODY).hexdigest(): ["v1/content/map-001.tif"]}
    assert fixity["sha256"] == {SHA: ["v1/content/map-001.tif"]}
    assert leftovers(tmp_path) == []

    again = run(tmp_path, url, **expect(BODY, len(BODY), "md5"))
    assert (again.code, again.stderr, again.log) == (0, "", "")
    assert again.stdout.splitlines()[-1] == "already stored: maps/map-001 v1"
    assert server.requests == ["map-001.tif"]  # the second run made no request
    assert inventory(store, "maps/map-001")["head"] == "v1"


def test_without_a_manifest_digest_a_restart_fetches_but_adds_no_version(
        tmp_path: Path, server: LoopbackServer) -> None:
    url = server.add("p", BODY)
    assert run(tmp_path, url).code == 0
    again = run(tmp_path, url)
    assert again.code == 0 and again.stdout.splitlines()[-1] == "already stored: maps/map-001 v1"
    assert server.requests == ["p", "p"]  # nothing to compare with but the bytes
    server.add("p", b"the depositor replaced the file\n")
    changed = run(tmp_path, url)
    assert changed.stdout.splitlines()[-1].startswith("done: stored maps/map-001 v2 ")
    assert head_file(tmp_path / "store", "maps/map-001", "p") == (
        b"the depositor replaced the file\n")
    assert content_files(tmp_path / "store", "maps/map-001") == ["v1/content/p", "v2/content/p"]
    validate_root(tmp_path / "store")


def test_temp_files_of_a_killed_attempt_are_removed(tmp_path: Path,
                                                    server: LoopbackServer) -> None:
    staging = tmp_path / "store" / "extensions" / "batchq-deposits" / "incoming"
    staging.mkdir(parents=True)
    key = hashlib.sha256(b"maps/map-001").hexdigest()[:16]
    stale, fresh = staging / f".incoming-{key}-stale", staging / f".incoming-{key}-live"
    for f in (stale, fresh):
        f.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert run(tmp_path, server.add("p", BODY), BATCHQ_TIMEOUT="60").code == 0
    assert not stale.exists() and fresh.exists()  # a live attempt's file is not touched


def test_digest_mismatch(tmp_path: Path, server: LoopbackServer) -> None:
    url = server.add("p", b"other bytes, same size!")
    want = hashlib.sha256(b"the expected payload!!\n").hexdigest()
    got = hashlib.sha256(b"other bytes, same size!").hexdigest()
    r = run(tmp_path, url, BATCHQ_ITEM_SIZE="23", BATCHQ_DIGEST_ALGORITHM="sha256",
            BATCHQ_DIGEST_VALUE=want)
    assert_failed(r, 1, f"digest mismatch: expected sha256 {want}, got {got}")
    assert not (tmp_path / "store" / object_key("maps/map-001")).exists()
    assert leftovers(tmp_path) == []


def test_size_mismatch(tmp_path: Path, server: LoopbackServer) -> None:
    short = server.add("short", b"short")
    assert_failed(run(tmp_path, short, BATCHQ_ITEM_SIZE="23"), 1,
                  "size mismatch: expected 23 bytes, got 5")
    long = server.add("long", b"twelve bytes")
    assert_failed(run(tmp_path, long, BATCHQ_ITEM_SIZE="10"), 1,
                  "size mismatch: expected 10 bytes, got 12")
    assert_failed(run(tmp_path, server.base + "stream/long", BATCHQ_ITEM_SIZE="10"), 1,
                  "size mismatch: expected 10 bytes, got more than 10")
    assert leftovers(tmp_path) == []


def test_http_404_and_size_limit(tmp_path: Path, server: LoopbackServer) -> None:
    assert_failed(run(tmp_path, server.base + "missing"), 1,
                  f"HTTP 404 fetching {server.base}missing")
    url = server.add("big", b"x" * 100)
    assert_failed(run(tmp_path, url, BATCHQ_MAX_BYTES="99"), 1,
                  f"{url} is larger than the 99-byte limit (100 bytes)")
    assert leftovers(tmp_path) == []


def test_refused_urls_exit_2_without_a_request(tmp_path: Path, server: LoopbackServer) -> None:
    prefixes = f"{server.base}pub/\nfile:"
    assert_failed(run(tmp_path, "http://evil.example/x", BATCHQ_ALLOWED_PREFIXES=prefixes), 2,
                  f"URL http://evil.example/x is not allowed (allowed prefixes:"
                  f" {server.base}pub/, file:)")
    climbing = f"{server.base}pub/../private"
    assert_failed(run(tmp_path, climbing, BATCHQ_ALLOWED_PREFIXES=prefixes), 2,
                  f'URL {climbing} is refused: it contains the dot segment ".."')
    assert_failed(run(tmp_path, climbing), 2,  # refused without any prefix too
                  f'URL {climbing} is refused: it contains the dot segment ".."')
    assert_failed(run(tmp_path, server.base + "pub/x", BATCHQ_ALLOWED_PREFIXES=""), 2,
                  f"URL {server.base}pub/x is not allowed (allowed prefixes: none)")
    assert_failed(run(tmp_path, "ftp://example.org/x"), 2,
                  'URL ftp://example.org/x is refused: unsupported scheme "ftp" (http, https'
                  " or file)")
    assert server.requests == []
    # A redirect is checked against the prefixes too.
    hop = f"{server.base}redirect?to=http://evil.example/"
    r = run(tmp_path, hop, BATCHQ_ALLOWED_PREFIXES=f"{server.base}redirect")
    assert_failed(r, 2, f"{hop} redirects to http://evil.example/, which is not allowed")


def test_relative_file_urls_are_read_from_the_git_mirror_at_the_commit(
        tmp_path: Path, git_repo: GitRepo) -> None:
    git_repo.write("payloads/x.txt", BODY)
    head = git_repo.commit("a payload")
    git_repo.write("payloads/x.txt", b"edited, never committed\n")
    (tmp_path / "secret").write_text("s")
    repo = {"BATCHQ_GIT_DIR": str(git_repo.path / ".git"), "BATCHQ_GIT_COMMIT": head}
    r = run(tmp_path, "file:payloads/x.txt", BATCHQ_ALLOWED_PREFIXES="file:", **repo,
            **expect(BODY, len(BODY)))
    assert r.code == 0 and head_file(tmp_path / "store", "maps/map-001", "x.txt") == BODY
    assert_failed(run(tmp_path, "file:../secret", BATCHQ_ITEM_ID="j", **repo), 2,
                  'URL file:../secret is refused: it contains the dot segment ".."')
    assert_failed(run(tmp_path, f"file://{tmp_path}/secret", BATCHQ_ITEM_ID="h", **repo), 2,
                  f"URL file://{tmp_path}/secret is refused: it names a file on the host,"
                  " outside the repository (only an operator can allow a host directory,"
                  " with --allow-file-root)")
    assert_failed(run(tmp_path, "file:payloads/x.txt", BATCHQ_ITEM_ID="k"), 2,
                  "relative file URL file:payloads/x.txt needs the repository to read it from")


def test_credentials_come_from_the_credentials_file_and_are_never_shown(
        tmp_path: Path, server: LoopbackServer) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("depositor:pa55word")
    url = server.base.replace("http://", "http://***@") + "missing"
    r = run(tmp_path, url, BATCHQ_CREDENTIALS_FILE=str(creds))
    assert_failed(r, 1, f"HTTP 404 fetching {url}")
    assert "pa55word" not in r.stdout + r.stderr
    assert_failed(run(tmp_path, url, BATCHQ_ITEM_ID="nocreds"), 2,
                  f"URL {url} needs credentials, and none were given")
    plain = server.base.replace("http://", "http://depositor:pa55word@") + "missing"
    r = run(tmp_path, plain, BATCHQ_ITEM_ID="inline")
    assert_failed(r, 1, f"HTTP 404 fetching {url}")
    assert "pa55word" not in r.stdout + r.stderr


def test_a_hanging_server_fails_at_the_deadline(tmp_path: Path, server: LoopbackServer) -> None:
    started = time.monotonic()
    r = run(tmp_path, server.base + "trickle", BATCHQ_TIMEOUT="1")
    assert_failed(r, 1, f"timed out after 1.0 s fetching {server.base}trickle")
    r = run(tmp_path, server.base + "hang", BATCHQ_TIMEOUT="1")
    assert_failed(r, 1, f"timed out after 1.0 s fetching {server.base}hang")
    assert time.monotonic() - started < 15  # two runs, interpreter start-up included
    assert leftovers(tmp_path) == []


def test_sigterm_removes_the_temp_file_and_logs_a_reason(
        tmp_path: Path, server: LoopbackServer) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.worker"], cwd=REPO,
                            env=worker_env(tmp_path, server.base + "trickle"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "trickle" in server.requests and len(leftovers(tmp_path)) == 1,
                 timeout=20, what="the worker to be part-way through a download (temp file)")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    reason = "terminated by SIGTERM (deadline exceeded or job deleted)"
    assert proc.returncode == 1 and stderr == f"batchq-worker: {reason}\n"
    assert (tmp_path / "termination-log").read_text() == reason + "\n"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("extra", "reason"), [
    ({"BATCHQ_BATCH": ""}, "BATCHQ_BATCH is not set"),
    ({"BATCHQ_STORAGE": ""},
     "BATCHQ_STORAGE (a directory) or BATCHQ_STORAGE_URL (s3://...) is not set"),
    ({"BATCHQ_STORAGE_URL": "s3://bucket/ocfl"},
     "set BATCHQ_STORAGE or BATCHQ_STORAGE_URL, not both"),
    ({"BATCHQ_STORAGE": "", "BATCHQ_STORAGE_URL": "http://bucket/ocfl"},
     "BATCHQ_STORAGE_URL 'http://bucket/ocfl' is not s3://bucket/prefix"),
    ({"BATCHQ_STORAGE": "", "BATCHQ_STORAGE_URL": "s3://bucket/ocfl"},
     "S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (on"
     " Kubernetes from a Secret) or in BATCHQ_S3_CREDENTIALS_FILE"),
    ({"BATCHQ_ITEM_SIZE": "12kB"}, "BATCHQ_ITEM_SIZE must be a whole number of bytes, not"
     " '12kB'"),
    ({"BATCHQ_TIMEOUT": "0"}, "BATCHQ_TIMEOUT must be a positive number of seconds, not '0'"),
    ({"BATCHQ_DIGEST_ALGORITHM": "crc32", "BATCHQ_DIGEST_VALUE": "ab"},
     "BATCHQ_DIGEST_ALGORITHM must be one of md5, sha1, sha224, sha256, sha384, sha512,"
     " sha3_224, sha3_256, sha3_384, sha3_512, not 'crc32'"),
    ({"BATCHQ_DIGEST_ALGORITHM": "md5", "BATCHQ_DIGEST_VALUE": "abc"},
     "BATCHQ_DIGEST_VALUE 'abc' is not a md5 digest (32 hex digits)"),
])
def test_bad_configuration_exits_2(tmp_path: Path, extra: dict[str, str], reason: str) -> None:
    assert_failed(run(tmp_path, "http://127.0.0.1:9/x", **extra), 2, reason)


def test_the_reason_is_one_bounded_line(tmp_path: Path, server: LoopbackServer) -> None:
    url = server.base + "missing/" + "a" * 3000
    r = run(tmp_path, url)
    assert r.code == 1 and len(r.log) <= 1025 and r.log.endswith("…\n")
    assert r.log.startswith("HTTP 404 fetching ") and r.log.count("\n") == 1
    assert r.stderr == f"batchq-worker: {r.log}"


def test_no_termination_log_is_invented(tmp_path: Path) -> None:
    default = Path("/dev/termination-log")
    if default.exists():
        pytest.skip("this machine has a /dev/termination-log")
    r = run(tmp_path, "ftp://example.org/x", BATCHQ_TERMINATION_LOG="")
    assert r.code == 2 and r.stderr and not default.exists()


def test_help_and_arguments() -> None:
    p = subprocess.run([sys.executable, "-m", "reconciler.worker", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "BATCHQ_ITEM_URL" in p.stdout and "Exit codes" in p.stdout
    p = subprocess.run([sys.executable, "-m", "reconciler.worker", "extra"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("batchq-worker: batchq-worker takes no")
