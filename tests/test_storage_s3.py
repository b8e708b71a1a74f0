"""Preservation storage on a real S3 server (SeaweedFS on loopback, tests/s3/server.py):
OCFL objects written through boto3 and validated by ocfl-py reading the bucket through
s3fs; versions, deduplication (counted in keys written), idempotence, a deposit killed at
fail points, concurrent deposits of one object, and the whole path through
`python -m reconciler reconcile` with a real Git commit and a loopback payload server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.storage import ObjectInfo, StagedFile, StorageError, open_target
from reconciler.storage.layout import object_key
from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq
from tests.ocfl_check import s3_root, validate_root

REPO = Path(__file__).resolve().parent.parent
OBJECT = "ark:/13030/m5 ü"
FIRST = {"a.tif": b"page one\n", "sub dir/b.xml": b"<mets/>\n", "c.txt": b"notes\n"}
SECOND = {**FIRST, "sub dir/b.xml": b"<mets>edited</mets>\n", "d.bin": b"\x00added\n"}


def write(tmp: Path, name: str, body: bytes) -> Path:
    path = tmp / "staged" / hashlib.sha256(name.encode() + body).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def staged(tmp: Path, files: dict[str, bytes]) -> list[StagedFile]:
    return [StagedFile(n, write(tmp, n, b), len(b),
                       {a: hashlib.new(a, b).hexdigest() for a in ("sha512", "sha256", "md5")})
            for n, b in files.items()]


def content_keys(server: Any, bucket: str, object_id: str) -> list[str]:
    prefix = f"ocfl/{object_key(object_id)}/"
    return [k[len(prefix):] for k in server.keys(bucket, prefix) if "/content/" in k]


def deposit_process(tmp: Path, env: dict[str, str], object_id: str, files: dict[str, bytes],
                    *, failpoint: str = "", owner: str = "b/i") -> subprocess.Popen[str]:
    args = [f"{name}={write(tmp, name, body)}" for name, body in files.items()]
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHQ_", "AWS_"))}
    full.update(env, PYTHONPATH=str(REPO), BATCHQ_FAILPOINTS=failpoint, DEPOSIT_OWNER=owner)
    return subprocess.Popen([sys.executable, "-m", "tests.deposit_files", object_id, *args],
                            cwd=REPO, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen[str]) -> tuple[int, dict[str, Any] | None, str]:
    out, err = p.communicate(timeout=180)
    return p.returncode, (json.loads(out) if p.returncode == 0 else None), err


def test_objects_in_a_bucket_are_valid_versioned_and_deduplicated(
        s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    target = open_target(s3_server.env(bucket))
    info = ObjectInfo(OBJECT, "maps", "m1")
    got = target.deposit(info, staged(tmp_path, FIRST), message="first")
    assert (got.version, got.created, got.copied, got.reused) == ("v1", True, 3, 0)
    assert validate_root(s3_root(s3_server, bucket))[0] == 1
    assert target.stored_files(OBJECT)["c.txt"]["md5"] == hashlib.md5(b"notes\n").hexdigest()

    got = target.deposit(info, staged(tmp_path, SECOND), message="second")
    assert (got.version, got.created, got.copied, got.reused) == ("v2", True, 2, 2)
    assert content_keys(s3_server, bucket, OBJECT) == [
        "v1/content/a.tif", "v1/content/c.txt", "v1/content/sub dir/b.xml",
        "v2/content/d.bin", "v2/content/sub dir/b.xml"]
    before = s3_server.keys(bucket)
    again = target.deposit(info, staged(tmp_path, SECOND), message="third")
    assert (again.version, again.created, again.copied) == ("v2", False, 0)
    assert s3_server.keys(bucket) == before  # not one key written
    assert validate_root(s3_root(s3_server, bucket))[0] == 1
    assert target.stored_files("never deposited") == {}


@pytest.mark.parametrize("failpoint", ["storage-file-placed:1", "storage-version-placed:1",
                                       "storage-root-inventory-replaced:1"])
def test_a_deposit_killed_anywhere_keeps_v1_and_the_retry_makes_v2(
        s3_server: Any, tmp_path: Path, failpoint: str) -> None:
    bucket = s3_server.bucket()
    env = s3_server.env(bucket)
    assert finished(deposit_process(tmp_path, env, OBJECT, FIRST))[1] == {
        "version": "v1", "created": True, "copied": 3, "reused": 0}
    code, _, err = finished(deposit_process(tmp_path, env, OBJECT, SECOND,
                                            failpoint=failpoint))
    assert code == -9, err
    seen = open_target(env).stored_files(OBJECT)  # readers: a whole v1, or a whole v2
    assert {n: d["sha512"] for n, d in seen.items()} in (
        {n: hashlib.sha512(b).hexdigest() for n, b in FIRST.items()},
        {n: hashlib.sha512(b).hexdigest() for n, b in SECOND.items()})
    code, result, err = finished(deposit_process(tmp_path, env, OBJECT, SECOND))
    assert code == 0, err
    assert result is not None and result["version"] == "v2"
    assert validate_root(s3_root(s3_server, bucket))[0] == 1
    assert len(content_keys(s3_server, bucket, OBJECT)) == 5  # nothing stored twice
    assert not s3_server.keys(bucket, "ocfl/extensions/batchq-deposits/claims/")


def test_concurrent_deposits_of_one_object_take_turns(s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    env = s3_server.env(bucket)
    procs = [deposit_process(tmp_path, env, "shared",
                             {f"f{n}.txt": f"{who} {n}\n".encode() for n in range(5)},
                             owner=f"batch{who}/item")
             for who in range(3)]
    results = [finished(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(r["version"] for _, r, _ in results if r) == ["v1", "v2", "v3"]
    assert validate_root(s3_root(s3_server, bucket))[0] == 1
    assert len(content_keys(s3_server, bucket, "shared")) == 15


def test_a_batch_is_deposited_to_s3_end_to_end(
        s3_server: Any, git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer,
        tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    items = [payloads.add(f"scan-{n}.tif", f"scan {n}\n".encode() * (n + 1)) for n in range(3)]
    git_repo.write("profiles/test.yaml", {
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"allowedUrlPrefixes": [payloads.base],
                 "notification": {"from": "batchq@example.org"},
                 "storage": {"type": "s3", "bucket": bucket, "prefix": "ocfl",
                             "endpoint": s3_server.endpoint, "region": "us-east-1"}}})
    git_repo.write("batches/scans.yaml", batch_doc(items))
    git_repo.commit("three scans to S3")
    creds = {k: v for k, v in s3_server.env(bucket).items() if k.startswith("AWS_")}
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "st"),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "120", env=creds)
    assert done.returncode == 0, done.stderr
    status = batchq("status", "scans", "--json", "--state", str(tmp_path / "st"))
    [batch] = json.loads(status.stdout)["batches"]
    assert batch["state"] == "Completed", batch
    assert validate_root(s3_root(s3_server, bucket))[0] == 3
    target = open_target(s3_server.env(bucket))
    for n, item in enumerate(items):
        stored = target.stored_files(f"scans/{item['id']}")
        assert stored[f"scan-{n}.tif"]["sha256"] == item["digest"]["value"]
    # the credentials went to the job by environment only: not into the store or a file
    for path in (tmp_path / "st").rglob("*"):
        if path.is_file():
            assert creds["AWS_SECRET_ACCESS_KEY"].encode() not in path.read_bytes(), path


def test_a_prefix_holding_other_keys_is_not_made_a_storage_root(
        s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    s3_server.client.put_object(Bucket=bucket, Key="ocfl/sha256/ab/abcd", Body=b"old")
    with pytest.raises(StorageError) as exc:
        open_target(s3_server.env(bucket)).deposit(
            ObjectInfo("o", "b", "i"), staged(tmp_path, {"a": b"x"}), message="m")
    assert str(exc.value) == (
        f"s3://{bucket}/ocfl/ is not an OCFL storage root and is not empty (it holds sha256):"
        " give the profile a prefix of its own, or move those keys away")
    assert s3_server.keys(bucket) == ["ocfl/sha256/ab/abcd"]


def test_credentials_may_come_from_a_mounted_file_instead_of_the_environment(
        s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    env = s3_server.env(bucket)
    secret = tmp_path / "s3-credentials"
    secret.write_text(f"AWS_ACCESS_KEY_ID={env.pop('AWS_ACCESS_KEY_ID')}\n"
                      f"AWS_SECRET_ACCESS_KEY={env.pop('AWS_SECRET_ACCESS_KEY')}\n")
    secret.chmod(0o600)
    env["BATCHQ_S3_CREDENTIALS_FILE"] = str(secret)
    got = open_target(env).deposit(ObjectInfo("o", "b", "i"), staged(tmp_path, {"a": b"x"}),
                                   message="m")
    assert (got.version, got.created) == ("v1", True)
    wrong = tmp_path / "wrong"
    wrong.write_text("AWS_ACCESS_KEY_ID=batchq-test\nAWS_SECRET_ACCESS_KEY=not-the-key\n")
    env["BATCHQ_S3_CREDENTIALS_FILE"] = str(wrong)
    with pytest.raises(StorageError) as exc:
        open_target(env).stored_files("o")
    assert str(exc.value).startswith(f"S3 get s3://{bucket}/ocfl/")
    assert "not-the-key" not in str(exc.value)
