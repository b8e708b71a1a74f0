"""Issue 8 §2: an item is an object, end to end through the real `batchq reconcile` on the
embedded default: real Git commits, a real loopback HTTP payload server, real worker
processes, real OCFL storage on disk, read back through
its inventories and validated with ocfl-py.

Objects of several files (a Merritt mrt-ingest-manifest, an mrt-batch-manifest of object
manifests, inline `files:`), zip and tar containers built here with the standard library,
hostile containers (path escape, a symbolic link out, a decompression bomb), a restart
that fetches only what is missing, and a wrong digest on one file of several; and objects
of several files and a container's members deposited on a real S3 server (SeaweedFS).
"""

from __future__ import annotations

import email
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from reconciler.storage import FilesystemTarget, staging_dir
from reconciler.storage.layout import OBJECT_DECLARATION, object_key
from tests.fixtures import GitRepo, PayloadServer, batch_doc, batchq, profile_doc
from tests.ocfl_check import Head, head, s3_root, validate_root
from tests.test_web import make_app

CHECKM_HEAD = [
    "#%checkm_0.7",
    "#%profile | http://uc3.cdlib.org/registry/ingest/manifest/{profile}",
    "#%prefix | mrt: | http://merritt.cdlib.org/terms#",
    "#%prefix | nfo: | http://www.semanticdesktop.org/ontologies/2007/03/22/nfo#",
    "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize |"
    " nfo:fileLastModified | nfo:fileName | {last}",
]


def checkm(profile: str, lines: list[str], last: str = "mrt:mimeType") -> bytes:
    head = [h.format(profile=profile, last=last) for h in CHECKM_HEAD]
    return ("\n".join([*head, *lines, "#%eof"]) + "\n").encode()


def file_line(base: str, path: str, body: bytes, name: str, *, sha: str | None = None) -> str:
    digest = sha or hashlib.sha256(body).hexdigest()
    return f"{base}{path} | sha256 | {digest} | {len(body)} | | {name}"


def reconcile(repo: GitRepo, state: Path, env: dict[str, str] | None = None) -> None:
    done = batchq("reconcile", "--repo", str(repo.path), "--state", str(state),
                  "--until-idle", "--timeout", "120", env=env)
    assert done.returncode == 0, done.stderr


def jobs(state: Path, batch: str) -> dict[str, dict[str, Any]]:
    status = json.loads(batchq("status", batch, "--json", "--state", str(state)).stdout)
    (found,) = status["batches"]
    return {job["item"]: job for job in found["jobs"]}


def storage_root(state: Path) -> Path:
    """The embedded backend's OCFL storage root for the test profile (no `storage:`)."""
    return state / "storage" / "storage"


def stored_object(state: Path, object_id: str) -> Head:
    """The object's head version, read through its inventory as an OCFL client would."""
    found = head(storage_root(state), object_id)
    assert found is not None, f"object {object_id!r} is not in the storage root"
    return found


def assert_nothing_deposited(state: Path) -> None:
    """No object at all in the storage root: no inventory, no object declaration."""
    root = storage_root(state)
    assert [p for p in root.rglob("*") if p.name in ("inventory.json", OBJECT_DECLARATION[0])
            ] == []


def submit(repo: GitRepo, payloads: PayloadServer, name: str, **manifest: Any) -> None:
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    repo.write(f"batches/{name}.yaml", batch_doc(**manifest))
    repo.commit(f"submit {name}")


BODIES = {"page-1.tif": b"the first page\n", "page-2.tif": b"the second page\n" * 50,
          "notes/readme.txt": b"a note about the object\n"}


def serve_files(payloads: PayloadServer, prefix: str = "obj/") -> list[str]:
    """Serve BODIES; return their checkm lines (nfo:fileName = the name within the object)."""
    lines = []
    for name, body in BODIES.items():
        payloads.files[prefix + name.replace("/", "_")] = body
        lines.append(file_line(payloads.base, prefix + name.replace("/", "_"), body, name))
    return lines


def assert_object_stored(state: Path, object_id: str, bodies: dict[str, bytes]) -> None:
    """The object holds exactly `bodies` in one version, and ocfl-py finds the whole
    storage root valid (every object, every digest)."""
    assert_head(stored_object(state, object_id), bodies)
    validate_root(storage_root(state))


def assert_head(stored: Head, bodies: dict[str, bytes]) -> None:
    assert sorted(stored.digests) == sorted(bodies)
    for name, body in bodies.items():
        digests = stored.digests[name]
        assert digests["sha256"] == hashlib.sha256(body).hexdigest()
        assert digests["sha512"] == hashlib.sha512(body).hexdigest()
        assert stored.content[name] == body
    assert (stored.version, stored.versions) == ("v1", ("v1",))


def test_a_merritt_object_manifest_of_several_files_is_one_object(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    payloads.files["atlas.checkm"] = checkm("mrt-ingest-manifest", serve_files(payloads))
    submit(git_repo, payloads, "atlas", url=payloads.base + "atlas.checkm")
    state = tmp_path / "state"
    reconcile(git_repo, state)
    job = jobs(state, "atlas")["atlas"]
    assert (job["state"], job["message"]) == ("Completed", "")
    assert_object_stored(state, "atlas/atlas", BODIES)
    assert sorted(payloads.requests) == sorted(
        ["atlas.checkm", "obj/page-1.tif", "obj/page-2.tif", "obj/notes_readme.txt"])
    staging = staging_dir(FilesystemTarget(storage_root(state)), {})
    assert list(staging.iterdir()) == []  # what was staged went into storage


def test_a_batch_of_object_manifests_fetches_each_objects_files(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    one = {"a.txt": b"object one, file a\n", "b.txt": b"object one, file b\n"}
    two = {"c.txt": b"object two, file c\n", "sub/d.txt": b"object two, file d\n",
           "e.txt": b"object two, file e\n"}
    for label, files in (("one", one), ("two", two)):
        lines = []
        for name, body in files.items():
            path = f"{label}/{name.replace('/', '_')}"
            payloads.files[path] = body
            lines.append(file_line(payloads.base, path, body, name))
        payloads.files[f"{label}.checkm"] = checkm("mrt-ingest-manifest", lines)
    payloads.files["batch.checkm"] = checkm("mrt-batch-manifest", [
        f"{payloads.base}one.checkm | | | | | one.checkm | ark:/99999/one | one-1;shelf-1 |"
        " Ann | Object one | 2001",
        f"{payloads.base}two.checkm | | | | | two.checkm | | two-1 | Bob | Object two",
    ], last="mrt:primaryIdentifier | mrt:localIdentifier | mrt:creator | mrt:title | mrt:date")
    submit(git_repo, payloads, "objects", url=payloads.base + "batch.checkm")
    state = tmp_path / "state"
    reconcile(git_repo, state)
    found = jobs(state, "objects")
    assert {k: v["state"] for k, v in found.items()} == {"one-1": "Completed",
                                                         "two-1": "Completed"}
    assert_object_stored(state, "ark:/99999/one", one)  # the primary identifier
    assert_object_stored(state, "two-1", two)  # no primary: the first local identifier

    # every surface shows the objects: status --json, the report and its JSON, the page
    shown = {k: (v["files"], v["primaryId"], v["localIds"]) for k, v in found.items()}
    assert shown == {"one-1": (2, "ark:/99999/one", ["one-1", "shelf-1"]),
                     "two-1": (3, None, ["two-1"])}
    [eml] = (state / "outbox").glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes())
    parts = {p.get_filename() or p.get_content_type(): p.get_payload(decode=True)
             for p in message.walk()}
    text = parts["text/plain"]
    assert isinstance(text, bytes)
    words = " ".join(text.decode().split())  # the title column wraps between words
    assert "Object one 2 files; ark:/99999/one; local: one-1, shelf-1" in words
    assert "Object two 3 files; local: two-1" in words
    rows = json.loads(parts["completed.json"])  # type: ignore[arg-type]
    assert {r["id"]: (r["files"], r["primaryId"], r["localIds"]) for r in rows} == shown
    page = make_app(state).test_client().get("/batches/objects").get_data(as_text=True)
    assert "2 files" in page and "3 files" in page
    assert "ark:/99999/one; local: one-1, shelf-1" in page


def zip_bytes(members: dict[str, bytes], *, link: tuple[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in members.items():
            archive.writestr(name, body)
        if link is not None:
            info = zipfile.ZipInfo(link[0])
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, link[1])
    return out.getvalue()


def tar_bytes(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
        if symlink is not None:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            archive.addfile(info)
    return out.getvalue()


def container_item(payloads: PayloadServer, item_id: str, path: str, data: bytes,
                   fmt: str | None) -> dict[str, Any]:
    payloads.files[path] = data
    container: dict[str, Any] = {"url": payloads.base + path, "size": len(data),
                                 "digest": {"algorithm": "sha256",
                                            "value": hashlib.sha256(data).hexdigest()}}
    if fmt:
        container["format"] = fmt
    return {"id": item_id, "title": f"the {item_id} container", "container": container}


def test_zip_and_tar_containers_are_unpacked_into_their_objects(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    members = {"scan/p1.tif": b"page one of the scan\n", "scan/p2.tif": b"page two\n",
               "mets.xml": b"<mets/>\n"}
    zipped = zip_bytes(members)
    tarred = tar_bytes({f"./{k}": v for k, v in members.items()})  # `tar -C dir .` style
    payloads.files["box.checkm"] = checkm("mrt-container-batch-manifest", [
        f"{payloads.base}c/letters.zip | sha256 | {hashlib.sha256(zipped).hexdigest()} |"
        f" {len(zipped)} | | letters.zip"])
    payloads.files["c/letters.zip"] = zipped
    submit(git_repo, payloads, "box", url=payloads.base + "box.checkm")
    state = tmp_path / "state"
    reconcile(git_repo, state)
    assert jobs(state, "box")["letters.zip"]["state"] == "Completed"
    assert_object_stored(state, "box/letters.zip", members)

    # an inline container whose format is left out: the job tells a tar by its content
    submit(git_repo, payloads, "tarred",
           items=[container_item(payloads, "diaries", "c/download?id=7", tarred, None)])
    reconcile(git_repo, state)
    assert jobs(state, "tarred")["diaries"]["state"] == "Completed"
    assert_object_stored(state, "tarred/diaries", members)


def test_hostile_containers_are_refused_and_write_nothing_outside(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(100 * 1024**2))  # 100 MiB of zeros, ~100 KB
    items = [
        container_item(payloads, "escape", "h/escape.zip",
                       zip_bytes({"ok.txt": b"fine\n", "../../escaped.txt": b"gotcha\n"}),
                       "zip"),
        container_item(payloads, "abs", "h/abs.tar",
                       tar_bytes({"/tmp/batchq-absolute.txt": b"gotcha\n"}), "tar"),
        container_item(payloads, "tarlink", "h/link.tar",
                       tar_bytes({"a.txt": b"fine\n"}, symlink=("passwd", "/etc/passwd")),
                       "tar"),
        container_item(payloads, "ziplink", "h/link.zip",
                       zip_bytes({"a.txt": b"fine\n"}, link=("up", "../../..")), "zip"),
        container_item(payloads, "bomb", "h/bomb.zip", bomb.getvalue(), "zip"),
    ]
    submit(git_repo, payloads, "hostile", items=items)
    state = tmp_path / "state"
    reconcile(git_repo, state)
    found = jobs(state, "hostile")
    size = len(bomb.getvalue())
    assert {k: (v["state"], v["message"]) for k, v in found.items()} == {
        "escape": ("Failed", "container member '../../escaped.txt' has an empty, '.' or '..'"
                             " path segment; a name stays inside its object"),
        "abs": ("Failed", "container member '/tmp/batchq-absolute.txt' is an absolute path;"
                          " give a path relative to the object"),
        "tarlink": ("Failed", "container member 'passwd' is a symbolic link (to"
                              " '/etc/passwd'); a container's files must be regular files"),
        "ziplink": ("Failed", "container member 'up' is a symbolic link; a container's files"
                              " must be regular files"),
        "bomb": ("Failed", f"the container unpacks to more than {64 * 1024**2} bytes (at most"
                           f" 200 times its {size} bytes, or 64 MiB); refused as a"
                           " decompression bomb"),
    }
    assert not Path("/tmp/batchq-absolute.txt").exists()
    written = [p for p in tmp_path.rglob("*") if p.name in ("escaped.txt", "up", "passwd")]
    assert written == []
    assert_nothing_deposited(state)
    root = storage_root(state)
    members = [p for p in root.rglob("members") if any(p.iterdir())]
    assert members == []  # what a refused container unpacked is removed


def test_a_restart_fetches_only_the_file_that_was_missing(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    lines = serve_files(payloads)
    missing = payloads.files.pop("obj/page-2.tif")  # not uploaded yet
    payloads.files["atlas.checkm"] = checkm("mrt-ingest-manifest", lines)
    submit(git_repo, payloads, "atlas", url=payloads.base + "atlas.checkm")
    state = tmp_path / "state"
    reconcile(git_repo, state)
    job = jobs(state, "atlas")["atlas"]
    assert (job["state"], job["message"]) == (
        "Failed", f"file 'page-2.tif': HTTP 404 fetching {payloads.base}obj/page-2.tif")
    first = sorted(payloads.requests)
    assert_nothing_deposited(state)  # no version of an object missing a file

    payloads.files["obj/page-2.tif"] = missing
    git_repo.edit_batch("batches/atlas.yaml", restarts={"atlas": 1})
    reconcile(git_repo, state)
    assert jobs(state, "atlas")["atlas"]["state"] == "Completed"
    again = list(payloads.requests[len(first):])
    assert again == ["obj/page-2.tif"]  # the verified files were not fetched again
    assert_object_stored(state, "atlas/atlas", BODIES)


def test_a_wrong_digest_on_one_file_of_several_names_the_file_and_both_digests(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    wanted = hashlib.sha256(b"what the depositor meant\n").hexdigest()
    items = [{"id": "atlas", "primaryId": "ark:/99999/atlas", "files": [
        {"name": name, "url": payloads.base + "obj/" + name.replace("/", "_"),
         "size": len(body), "digest": {"algorithm": "sha256", "value": (
             wanted if name == "page-2.tif" else hashlib.sha256(body).hexdigest())}}
        for name, body in BODIES.items()]}]
    serve_files(payloads)
    submit(git_repo, payloads, "atlas", items=items)
    state = tmp_path / "state"
    reconcile(git_repo, state)
    got = hashlib.sha256(BODIES["page-2.tif"]).hexdigest()
    job = jobs(state, "atlas")["atlas"]
    assert (job["state"], job["message"]) == (
        "Failed", f"file 'page-2.tif': digest mismatch: expected sha256 {wanted}, got {got}")
    assert_nothing_deposited(state)


def submit_to_s3(repo: GitRepo, payloads: PayloadServer, s3_server: Any, bucket: str,
                 name: str, **manifest: Any) -> dict[str, str]:
    """Commit a batch whose profile stores to s3://bucket/ocfl; return what the reconciler's
    environment must hold for its jobs (the operator's S3 credentials, nothing else)."""
    profile = profile_doc(payloads.base)
    profile["spec"]["storage"] = {"type": "s3", "bucket": bucket, "prefix": "ocfl",
                                  "endpoint": s3_server.endpoint, "region": "us-east-1"}
    repo.write("profiles/test.yaml", profile)
    repo.write(f"batches/{name}.yaml", batch_doc(**manifest))
    repo.commit(f"submit {name} to S3")
    return {k: v for k, v in s3_server.env(bucket).items() if k.startswith("AWS_")}


def test_an_object_of_several_files_is_deposited_on_s3_and_valid_there(
        git_repo: GitRepo, payloads: PayloadServer, s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    payloads.files["atlas.checkm"] = checkm("mrt-ingest-manifest", serve_files(payloads))
    creds = submit_to_s3(git_repo, payloads, s3_server, bucket, "atlas",
                         url=payloads.base + "atlas.checkm")
    state = tmp_path / "state"
    reconcile(git_repo, state, env=creds)
    job = jobs(state, "atlas")["atlas"]
    assert (job["state"], job["message"]) == ("Completed", "")
    root = s3_root(s3_server, bucket)
    assert validate_root(root)[0] == 1  # ocfl-py, reading the bucket through s3fs
    stored = head(root, "atlas/atlas")
    assert stored is not None
    assert_head(stored, BODIES)
    assert sorted(payloads.requests) == sorted(
        ["atlas.checkm", "obj/page-1.tif", "obj/page-2.tif", "obj/notes_readme.txt"])
    assert_nothing_deposited(state)  # the bucket, not the local storage root

    # the same object from another batch (inline `files:`): storage already holds every
    # file under its name with the manifest's digest, so nothing is fetched or written
    keys = s3_server.keys(bucket)
    items = [{"id": "again", "primaryId": "atlas/atlas", "files": [
        {"name": name, "url": payloads.base + "obj/" + name.replace("/", "_"),
         "size": len(body), "digest": {"algorithm": "sha256",
                                       "value": hashlib.sha256(body).hexdigest()}}
        for name, body in BODIES.items()]}]
    submit_to_s3(git_repo, payloads, s3_server, bucket, "again", items=items)
    reconcile(git_repo, state, env=creds)
    assert jobs(state, "again")["again"]["state"] == "Completed"
    assert len(payloads.requests) == 4  # not one file fetched again
    assert s3_server.keys(bucket) == keys  # not one key written: no new version
    again = head(root, "atlas/atlas")
    assert again is not None and (again.version, again.versions) == ("v1", ("v1",))


def test_a_containers_members_land_in_the_ocfl_object_on_s3(
        git_repo: GitRepo, payloads: PayloadServer, s3_server: Any, tmp_path: Path) -> None:
    bucket = s3_server.bucket()
    members = {"scan/p1.tif": b"page one of the scan\n" * 100, "scan/p2.tif": b"page two\n",
               "mets.xml": b"<mets/>\n", "same-as-p2.tif": b"page two\n"}
    item = container_item(payloads, "letters", "c/letters.zip", zip_bytes(members), "zip")
    creds = submit_to_s3(git_repo, payloads, s3_server, bucket, "box", items=[item])
    state = tmp_path / "state"
    reconcile(git_repo, state, env=creds)
    job = jobs(state, "box")["letters"]
    assert (job["state"], job["message"]) == ("Completed", "")
    root = s3_root(s3_server, bucket)
    assert validate_root(root)[0] == 1
    stored = head(root, "box/letters")
    assert stored is not None
    assert_head(stored, members)
    # two members of the same bytes are one content file; the container itself is not kept
    content = s3_server.keys(bucket, f"ocfl/{object_key('box/letters')}/v1/content/")
    assert len(content) == len(set(members.values())) == 3
    assert not [k for k in s3_server.keys(bucket) if k.endswith(".zip")]
