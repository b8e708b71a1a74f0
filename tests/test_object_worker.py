"""The worker's object job (`reconciler.worker.objectjob`) as a real process: real HTTP on
loopback, real files. What the end-to-end tests (`test_objects_end_to_end`) do not reach:
versions, malformed configuration, refusals before any request, SIGTERM, tar hard links
and the member bound."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.storage import FilesystemTarget, staging_dir
from tests.fixtures import wait_for
from tests.ocfl_check import Head, content_files, head, validate_root
from tests.test_fetch import LoopbackServer
from tests.test_worker import REPO, assert_failed, run, worker_env


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


def obj(files: list[dict[str, Any]] | None = None, container: dict[str, Any] | None = None,
        **extra: str) -> dict[str, str]:
    body = {"files": files} if files is not None else {"container": container}
    return {"BATCHQ_OBJECT": json.dumps(body), "BATCHQ_OBJECT_ID": "ark:/99999/x", **extra}


def entry(server: LoopbackServer, name: str, body: bytes) -> dict[str, Any]:
    url = server.add(name.replace("/", "_"), body)
    return {"name": name, "url": url, "size": len(body),
            "digest": {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()}}


def stored(tmp: Path) -> Head:
    """The object's head version, read through its inventory; the storage root validated
    with ocfl-py (every object, every digest)."""
    found = head(tmp / "store", "ark:/99999/x")
    assert found is not None, "ark:/99999/x is not in the storage root"
    assert validate_root(tmp / "store")[0] == 1
    return found


def test_a_rerun_adds_no_version_and_a_changed_file_adds_one(
        tmp_path: Path, server: LoopbackServer) -> None:
    files = [entry(server, "a.txt", b"alpha\n"), entry(server, "dir/b.txt", b"beta\n")]
    first = run(tmp_path, files[0]["url"], **obj(files))
    assert (first.code, first.stderr) == (0, "")
    assert first.stdout.splitlines()[-1] == (
        "done: stored ark:/99999/x v1 (2 files, 2 copied, 0 reused)")
    again = run(tmp_path, files[0]["url"], **obj(files))
    assert again.stdout.splitlines()[-1] == "already stored: ark:/99999/x v1"
    assert sorted(server.requests) == ["a.txt", "dir_b.txt"]  # nothing fetched again

    files[1] = entry(server, "dir/b2.txt", b"beta, corrected\n")
    files[1]["name"] = "dir/b.txt"
    third = run(tmp_path, files[0]["url"], **obj(files))
    assert third.stdout.splitlines()[-1] == (
        "done: stored ark:/99999/x v2 (2 files, 1 copied, 1 reused)")
    assert server.requests[2:] == ["dir_b2.txt"]  # only the file whose digest changed
    now = stored(tmp_path)
    assert (now.version, now.versions) == ("v2", ("v1", "v2"))
    assert now.digests["dir/b.txt"]["sha256"] == hashlib.sha256(
        b"beta, corrected\n").hexdigest()
    assert now.content == {"a.txt": b"alpha\n", "dir/b.txt": b"beta, corrected\n"}
    # v2 stored only the changed file's bytes: a.txt is v1's content, not copied again
    assert content_files(tmp_path / "store", "ark:/99999/x") == [
        "v1/content/a.txt", "v1/content/dir/b.txt", "v2/content/dir/b.txt"]


@pytest.mark.parametrize(("env", "reason"), [
    ({"BATCHQ_OBJECT": "{not json"}, "BATCHQ_OBJECT is not an object's files or container:"
     " Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ({"BATCHQ_OBJECT": "{}"}, "BATCHQ_OBJECT must give files or a container"),
    ({"BATCHQ_OBJECT": json.dumps({"files": [{"name": "../x", "url": "http://127.0.0.1:9/x"}]})},
     "BATCHQ_OBJECT: file name '../x' has an empty, '.' or '..' path segment; a name stays"
     " inside its object"),
])
def test_a_malformed_object_exits_2(tmp_path: Path, env: dict[str, str], reason: str) -> None:
    assert_failed(run(tmp_path, "http://127.0.0.1:9/x", **env), 2, reason)


def test_a_file_url_outside_the_prefixes_is_refused_before_any_request(
        tmp_path: Path, server: LoopbackServer) -> None:
    files = [entry(server, "a.txt", b"alpha\n"),
             {"name": "b.txt", "url": "http://elsewhere.invalid/b.txt"}]
    r = run(tmp_path, files[0]["url"], BATCHQ_ALLOWED_PREFIXES=server.base, **obj(files))
    assert_failed(r, 2, f"URL http://elsewhere.invalid/b.txt is not allowed (allowed"
                        f" prefixes: {server.base})")
    assert server.requests == []


def test_sigterm_during_an_object_leaves_no_temp_file_and_logs_a_reason(
        tmp_path: Path, server: LoopbackServer) -> None:
    files = [{"name": "slow.bin", "url": server.base + "trickle"}]
    env = worker_env(tmp_path, server.base + "trickle", **obj(files))
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.worker"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = staging_dir(FilesystemTarget(tmp_path / "store"), {})
    try:
        wait_for(lambda: "trickle" in server.requests and list(staging.rglob(".incoming-*")),
                 timeout=20, what="the worker to be part-way through the file")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    reason = "terminated by SIGTERM (deadline exceeded or job deleted)"
    assert proc.returncode == 1 and stderr == f"batchq-worker: {reason}\n"
    assert list(staging.rglob(".incoming-*")) == []


def tar_with(members: list[tarfile.TarInfo], bodies: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for info in members:
            body = bodies.get(info.name)
            if body is not None:
                info.size = len(body)
            archive.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def test_a_hard_link_to_an_earlier_member_is_a_copy_and_one_out_is_refused(
        tmp_path: Path, server: LoopbackServer) -> None:
    link = tarfile.TarInfo("copy.txt")
    link.type, link.linkname = tarfile.LNKTYPE, "a.txt"
    data = tar_with([tarfile.TarInfo("a.txt"), link], {"a.txt": b"alpha\n"})
    url = server.add("ok.tar", data)
    r = run(tmp_path, url, **obj(container={"url": url, "format": "tar"}))
    assert r.code == 0, r
    assert stored(tmp_path).content == {"a.txt": b"alpha\n", "copy.txt": b"alpha\n"}

    out = tarfile.TarInfo("passwd")
    out.type, out.linkname = tarfile.LNKTYPE, "/etc/passwd"
    url = server.add("out.tar", tar_with([out], {}))
    r = run(tmp_path, url, **obj(container={"url": url}))  # the format told by content
    assert_failed(r, 2, "container member 'passwd' is a hard link to '/etc/passwd', which is"
                        " not a file before it in the container")


def test_a_container_of_too_many_members_is_refused(
        tmp_path: Path, server: LoopbackServer) -> None:
    members = [tarfile.TarInfo(f"f{n}") for n in range(10_001)]
    url = server.add("many.tar", tar_with(members, {}))
    r = run(tmp_path, url, **obj(container={"url": url, "format": "tar"}))
    assert_failed(r, 2, "the container has more than 10000 files")


def test_a_container_that_does_not_verify_says_so_with_both_digests(
        tmp_path: Path, server: LoopbackServer) -> None:
    data = tar_with([tarfile.TarInfo("a.txt")], {"a.txt": b"alpha\n"})
    url = server.add("box.tar", data)
    wanted = hashlib.sha256(b"another container").hexdigest()
    r = run(tmp_path, url, **obj(container={"url": url, "digest": {
        "algorithm": "sha256", "value": wanted}}))
    assert_failed(r, 1, f"container: digest mismatch: expected sha256 {wanted}, got"
                        f" {hashlib.sha256(data).hexdigest()}")
    assert head(tmp_path / "store", "ark:/99999/x") is None  # nothing deposited
    assert list((tmp_path / "store").rglob("inventory.json")) == []
