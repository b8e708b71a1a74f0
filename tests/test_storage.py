"""Preservation storage (issue 8 §3): OCFL objects written by batchq, checked by ocfl-py's
validator; versions, deduplication, idempotence, crash safety and concurrent deposits, in
real processes (killed with SIGKILL at fail points), on a real filesystem root."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ocfl.storage_root import StorageRoot

from reconciler.storage import FilesystemTarget, ObjectInfo, StagedFile, StorageError
from reconciler.storage.layout import object_key
from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq
from tests.ocfl_check import content_files, head_file, validate_root

REPO = Path(__file__).resolve().parent.parent
ODD_ID = "ark:/13030/m5 ü/../x?y"  # every character that could break a path


def write(tmp: Path, name: str, body: bytes) -> Path:
    path = tmp / "staged" / hashlib.sha256(name.encode() + body).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def staged(tmp: Path, name: str, body: bytes) -> StagedFile:
    return StagedFile(name, write(tmp, name, body), len(body),
                      {a: hashlib.new(a, body).hexdigest() for a in ("sha512", "sha256", "md5")})


FIRST = {"a.tif": b"page one\n", "sub dir/b.xml": b"<mets/>\n", "c.txt": b"notes\n"}
SECOND = {**FIRST, "sub dir/b.xml": b"<mets>edited</mets>\n", "d.bin": b"\x00added\n"}


def deposit_process(tmp: Path, env: dict[str, str], object_id: str, files: dict[str, bytes],
                    *, failpoint: str = "", owner: str = "b/i") -> subprocess.CompletedProcess[str]:
    args = [f"{name}={write(tmp, name, body)}" for name, body in files.items()]
    full = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    full.update(env, PYTHONPATH=str(REPO), BATCHQ_FAILPOINTS=failpoint, DEPOSIT_OWNER=owner)
    return subprocess.run([sys.executable, "-m", "tests.deposit_files", object_id, *args],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


def result(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def test_object_paths_follow_extension_0003_as_ocfl_py_computes_them() -> None:
    sr = StorageRoot(layout_name="0003-hash-and-id-n-tuple-storage-layout")
    for object_id in (ODD_ID, "maps/map-001", "x" * 150, "日本/資料"):
        assert object_key(object_id) == sr.object_path(object_id)


def test_several_files_become_one_valid_ocfl_object(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = FilesystemTarget(root)
    got = target.deposit(ObjectInfo(ODD_ID, "maps", "m1"),
                         [staged(tmp_path, n, b) for n, b in FIRST.items()], message="first")
    assert (got.version, got.created, got.copied, got.reused) == ("v1", True, 3, 0)
    assert validate_root(root)[0] == 1
    for name, body in FIRST.items():
        assert head_file(root, ODD_ID, name) == body
    stored = target.stored_files(ODD_ID)
    assert stored["c.txt"] == {a: hashlib.new(a, b"notes\n").hexdigest()
                               for a in ("sha512", "sha256", "md5")}
    assert target.stored_files("never deposited") == {}


def test_an_objects_descriptive_metadata_is_kept_in_its_version(tmp_path: Path) -> None:
    root = tmp_path / "root"
    info = ObjectInfo("ark:/99999/fk4map", "maps", "m1", title="Map of the Bay",
                      creator="Ann Surveyor", date="1906", local_ids=("map-1", "shelf 9"))
    FilesystemTarget(root).deposit(info, [staged(tmp_path, "a.tif", b"page\n")],
                                   message="batchq: batch maps, item m1")
    assert validate_root(root)[0] == 1
    inv = json.loads((root / object_key(info.object_id) / "inventory.json").read_text())
    assert inv["versions"]["v1"]["message"].splitlines() == [
        "batchq: batch maps, item m1", "what: Map of the Bay", "who: Ann Surveyor",
        "when: 1906", "local identifiers: map-1; shelf 9"]


def test_a_changed_file_adds_v2_and_unchanged_files_are_not_copied_again(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = FilesystemTarget(root)
    info = ObjectInfo(ODD_ID, "maps", "m1")
    target.deposit(info, [staged(tmp_path, n, b) for n, b in FIRST.items()], message="1")
    got = target.deposit(info, [staged(tmp_path, n, b) for n, b in SECOND.items()],
                         message="2")
    assert (got.version, got.created, got.copied, got.reused) == ("v2", True, 2, 2)
    assert content_files(root, ODD_ID) == ["v1/content/a.tif", "v1/content/c.txt",
                                           "v1/content/sub dir/b.xml", "v2/content/d.bin",
                                           "v2/content/sub dir/b.xml"]
    assert head_file(root, ODD_ID, "sub dir/b.xml") == b"<mets>edited</mets>\n"
    again = target.deposit(info, [staged(tmp_path, n, b) for n, b in SECOND.items()],
                           message="3")
    assert (again.version, again.created, again.copied) == ("v2", False, 0)
    assert len(content_files(root, ODD_ID)) == 5
    assert validate_root(root)[0] == 1


def test_bad_file_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = FilesystemTarget(tmp_path / "root")
    info = ObjectInfo("o", "b", "i")
    cases = {
        "../escape": "file name '../escape' is not a clean relative path",
        "/abs": "file name '/abs' is not a clean relative path",
    }
    for name, message in cases.items():
        with pytest.raises(StorageError) as exc:
            target.deposit(info, [staged(tmp_path, name, b"x")], message="m")
        assert str(exc.value) == message
    with pytest.raises(StorageError) as exc:
        target.deposit(info, [staged(tmp_path, "a", b"x"), staged(tmp_path, "a/b", b"y")],
                       message="m")
    assert str(exc.value) == "file name 'a/b' lies inside the file 'a'"
    assert not (tmp_path / "root" / object_key("o")).exists()


# Kill points in deposit order; the ones after the new version is placed leave the object
# momentarily ahead of its root inventory (readers still see a consistent head).
BEFORE_PLACED = ["storage-file-placed:1", "storage-file-placed:2", "storage-version-staged:1"]
AFTER_PLACED = ["storage-version-placed:1", "storage-root-inventory-replaced:1"]


@pytest.mark.parametrize("failpoint", BEFORE_PLACED + AFTER_PLACED)
def test_a_deposit_killed_anywhere_keeps_v1_and_the_retry_makes_v2(
        tmp_path: Path, failpoint: str) -> None:
    root = tmp_path / "root"
    env = {"BATCHQ_STORAGE": str(root)}
    assert result(deposit_process(tmp_path, env, ODD_ID, FIRST))["version"] == "v1"
    killed = deposit_process(tmp_path, env, ODD_ID, SECOND, failpoint=failpoint)
    assert killed.returncode == -9, killed.stderr
    target = FilesystemTarget(root)
    if failpoint in BEFORE_PLACED:
        validate_root(root)
        assert head_file(root, ODD_ID, "sub dir/b.xml") == FIRST["sub dir/b.xml"]
    seen = target.stored_files(ODD_ID)["sub dir/b.xml"]["sha256"]
    assert seen in {hashlib.sha256(FIRST["sub dir/b.xml"]).hexdigest(),
                    hashlib.sha256(SECOND["sub dir/b.xml"]).hexdigest()}
    retry = result(deposit_process(tmp_path, env, ODD_ID, SECOND))
    assert retry["version"] == "v2"
    validate_root(root)
    assert head_file(root, ODD_ID, "sub dir/b.xml") == SECOND["sub dir/b.xml"]
    assert len(content_files(root, ODD_ID)) == 5  # nothing stored twice
    assert not list((root / "extensions" / "batchq-deposits" / "staging").iterdir())


def test_concurrent_deposits_of_one_object_take_turns(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {"BATCHQ_STORAGE": str(root)}
    bodies = [{f"f{n}.txt": f"{who} {n}\n".encode() for n in range(20)} for who in range(4)]
    args = [[f"{name}={write(tmp_path, name, body)}" for name, body in files.items()]
            for files in bodies]
    full = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    full.update(env, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.deposit_files", "shared", *a],
                              cwd=REPO, env={**full, "DEPOSIT_OWNER": f"batch{i}/item"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, a in enumerate(args)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    versions = sorted(json.loads(out)["version"] for out, _err in outs)
    assert versions == ["v1", "v2", "v3", "v4"]
    validate_root(root)
    assert len(content_files(root, "shared")) == 80


def test_a_profile_storage_is_checked_and_never_holds_credentials(tmp_path: Path) -> None:
    good = tmp_path / "profiles" / "good.yaml"
    good.parent.mkdir()
    good.write_text("apiVersion: batchq.dev/v1\nkind: Profile\nspec:\n  storage:\n"
                    "    type: s3\n    bucket: preservation\n    prefix: ocfl/maps\n"
                    "    endpoint: https://s3.example.org\n    region: us-west-2\n")
    bad = tmp_path / "profiles" / "bad.yaml"
    bad.write_text("apiVersion: batchq.dev/v1\nkind: Profile\nspec:\n  storage:\n"
                   "    type: s3\n    bucket: x\n    path: maps\n"
                   "    secretAccessKey: do-not-commit-me\n")
    mixed = tmp_path / "profiles" / "mixed.yaml"
    mixed.write_text("apiVersion: batchq.dev/v1\nkind: Profile\nspec:\n  storage:\n"
                     "    path: maps\n    bucket: preservation\n")
    ok = batchq("validate", str(good))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "1 file valid\n", "")
    found = batchq("validate", str(bad), str(mixed))
    assert found.returncode == 1
    assert found.stderr == "5 errors in 2 of 2 files\n"  # the summary; problems on stdout
    lines = found.stdout.splitlines()
    assert lines == [
        f"{bad}:6:13: spec.storage.bucket: \"x\" is not an S3 bucket name (3 to 63 lowercase"
        " letters, digits, '.' and '-'; starting and ending with a letter or digit)",
        f"{bad}:7:11: spec.storage.path: is for type filesystem; an s3 storage names a bucket"
        " and a prefix instead",
        f"{bad}:8:5: spec.storage.secretAccessKey: unknown field \"secretAccessKey\" (allowed:"
        " type, path, bucket, prefix, endpoint, region)",
        f"{bad}:8:22: spec.storage.secretAccessKey: credentials never go in a profile (it is"
        " in Git): the operator gives them to the reconciler (AWS_ACCESS_KEY_ID and"
        " AWS_SECRET_ACCESS_KEY, or on Kubernetes the Secret named by --s3-secret); remove"
        " this field",
        f"{mixed}:6:13: spec.storage.bucket: is for type s3: add `type: s3`, or remove it",
    ]
    assert "do-not-commit-me" not in found.stdout + found.stderr


def test_a_batch_is_deposited_to_a_filesystem_root_end_to_end(
        git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer, tmp_path: Path) -> None:
    items = [payloads.add(f"scan-{n}.tif", f"scan {n}\n".encode() * (n + 1)) for n in range(3)]
    git_repo.write("profiles/test.yaml", {
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"allowedUrlPrefixes": [payloads.base],
                 "notification": {"from": "batchq@example.org"},
                 "storage": {"type": "filesystem", "path": "ocfl"}}})
    git_repo.write("batches/scans.yaml", batch_doc(items))
    git_repo.commit("three scans")
    state, root = tmp_path / "state", tmp_path / "storage-root"
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "120",
                  env={"BATCHQ_STORAGE_ROOT": str(root)})
    assert done.returncode == 0, done.stderr
    [batch] = json.loads(batchq("status", "scans", "--json", "--state", str(state)).stdout
                         )["batches"]
    assert batch["state"] == "Completed", batch
    assert validate_root(root / "ocfl")[0] == 3
    for n, item in enumerate(items):
        assert head_file(root / "ocfl", f"scans/{item['id']}", f"scan-{n}.tif") == (
            f"scan {n}\n".encode() * (n + 1))


def test_a_directory_holding_other_files_is_not_made_a_storage_root(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sha256" / "ab").mkdir(parents=True)  # payloads of the layout before OCFL
    (root / "items").mkdir()
    with pytest.raises(StorageError) as exc:
        FilesystemTarget(root).deposit(ObjectInfo("o", "b", "i"),
                                       [staged(tmp_path, "a", b"x")], message="m")
    assert str(exc.value) == (
        f"{root} is not an OCFL storage root and is not empty (it holds items, sha256): give"
        " the profile a storage.path of its own, or move those files away")
    assert sorted(p.name for p in root.iterdir()) == ["items", "sha256"]
