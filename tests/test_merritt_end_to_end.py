"""A real Merritt single-file batch manifest (mrt-dashboard's sampleBatchOfFiles.checkm)
through the real `batchq reconcile --until-idle`, its URLs moved to a loopback payload
server and its digests made sha1 and sha384: the worker verifies both algorithms. What is stored is
read back through the OCFL inventories and validated with ocfl-py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.fixtures import GitRepo, PayloadServer, batch_doc, batchq, profile_doc
from tests.ocfl_check import head, validate_root

SAMPLE = (Path(__file__).parent / "data" / "merritt" / "mrt-dashboard"
          / "sampleBatchOfFiles.checkm")
PREFIX = "http://merritt.cdlib.org/samples/"


def with_digest(line: str, algorithm: str, hex_value: str) -> str:
    """The manifest line with its nfo:hashAlgorithm and nfo:hashValue replaced."""
    parts = line.split("|")
    parts[1], parts[2] = f" {algorithm} ", f" {hex_value} "
    return "|".join(parts)


def test_a_merritt_manifest_with_sha1_and_sha384_digests_runs_end_to_end(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    bodies = {name: f"the bytes of {name}\n".encode()
              for name in ("goldenDragon.jpg", "tumbleBug.jpg", "generalDrapery.jpg")}
    for name, body in bodies.items():
        payloads.files[name] = body
    wanted = {
        "goldenDragon.jpg": ("sha1", hashlib.sha1(bodies["goldenDragon.jpg"]).hexdigest()),
        "tumbleBug.jpg": ("SHA-384", hashlib.sha384(bodies["tumbleBug.jpg"]).hexdigest()),
        # a digest of other bytes: the worker must compute sha384 to refuse it
        "generalDrapery.jpg": ("sha384", hashlib.sha384(b"other bytes").hexdigest()),
    }
    lines = []
    for line in SAMPLE.read_text().splitlines():
        if line.startswith(PREFIX):
            name = line.split("|")[0].strip().removeprefix(PREFIX)
            line = with_digest(line.replace(PREFIX, payloads.base, 1), *wanted[name])
        lines.append(line)
    payloads.files["batch.checkm"] = ("\n".join(lines) + "\n").encode()

    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/signs.yaml", batch_doc(url=payloads.base + "batch.checkm"))
    git_repo.commit("submit Merritt's sample batch")
    state = tmp_path / "state"
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--until-idle", "--timeout", "120")
    assert done.returncode == 0, done.stderr

    status = json.loads(batchq("status", "signs", "--json", "--state", str(state)).stdout)
    (batch,) = status["batches"]
    jobs = {job["item"]: (job["state"], job["message"]) for job in batch["jobs"]}
    assert jobs["goldenDragon.jpg"][0] == "Completed"
    assert jobs["tumbleBug.jpg"][0] == "Completed"
    assert jobs["generalDrapery.jpg"] == (
        "Failed", f"digest mismatch: expected sha384 {wanted['generalDrapery.jpg'][1]}, got"
        f" {hashlib.sha384(bodies['generalDrapery.jpg']).hexdigest()}")
    assert batch["state"] == "Failed"
    assert sorted(payloads.requests) == sorted(["batch.checkm", *bodies])
    root = state / "storage" / "storage"
    assert validate_root(root)[0] == 2  # the two that verified, valid for ocfl-py
    for name in ("goldenDragon.jpg", "tumbleBug.jpg"):
        stored = head(root, f"signs/{name}")
        assert stored is not None and stored.content == {name: bodies[name]}
    # the manifest's sha1 is kept in the inventory's fixity block, for a restart to compare
    gold = head(root, "signs/goldenDragon.jpg")
    assert gold is not None and gold.digests["goldenDragon.jpg"]["sha1"] == wanted[
        "goldenDragon.jpg"][1]
    assert head(root, "signs/generalDrapery.jpg") is None  # what did not verify is not kept


MERRITT = Path(__file__).parent / "data" / "merritt" / "mrt-dashboard"


def samples_on_loopback(payloads: PayloadServer) -> dict[str, dict[str, bytes]]:
    """Merritt's sampleBatchOfManifests and the three object manifests it names, served
    from loopback as written but for the host; each file's bytes are made here, of the
    size its line gives, and an md5 line gets the md5 of those bytes. Returns the files
    of each object, by object manifest."""
    objects: dict[str, dict[str, bytes]] = {}
    for manifest in ("bigHunt.checkm", "4blocks.checkm", "call911.checkm"):
        lines, files = [], {}
        for line in (MERRITT / manifest).read_text().splitlines():
            if line.startswith(PREFIX):
                fields = [f.strip() for f in line.split("|")]
                name = fields[0].removeprefix(PREFIX)
                size = int(fields[3]) if fields[3] else 100 + len(name)
                body = (name.encode() * (size // len(name) + 1))[:size]
                payloads.files[name], files[fields[5]] = body, body
                if fields[1] == "md5":
                    line = with_digest(line, "md5", hashlib.md5(body).hexdigest())
                line = line.replace(PREFIX, payloads.base, 1)
            lines.append(line)
        payloads.files[f"manifests/{manifest}"] = ("\n".join(lines) + "\n").encode()
        objects[manifest] = files
    batch = (MERRITT / "sampleBatchOfManifests.checkm").read_text()
    payloads.files["batch.checkm"] = batch.replace(PREFIX, payloads.base).encode()
    return objects


def test_merritts_sample_batch_of_object_manifests_runs_end_to_end(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    objects = samples_on_loopback(payloads)
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/samples.yaml", batch_doc(url=payloads.base + "batch.checkm"))
    git_repo.commit("submit Merritt's sample batch of object manifests")
    state = tmp_path / "state"
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--until-idle", "--timeout", "120")
    assert done.returncode == 0, done.stderr

    status = json.loads(batchq("status", "samples", "--json", "--state", str(state)).stdout)
    (batch,) = status["batches"]
    assert batch["state"] == "Completed"
    assert {j["item"]: (j["state"], j["files"]) for j in batch["jobs"]} == {
        "bigHunt.checkm": ("Completed", 3), "4blocks.checkm": ("Completed", 2),
        "call911.checkm": ("Completed", 2)}
    root = state / "storage" / "storage"
    assert validate_root(root)[0] == len(objects)
    for manifest, files in objects.items():
        stored = head(root, f"samples/{manifest}")  # the samples carry no identifiers
        assert stored is not None and (stored.version, stored.versions) == ("v1", ("v1",))
        assert sorted(stored.digests) == sorted(files)
        for name, body in files.items():
            assert stored.digests[name]["sha256"] == hashlib.sha256(body).hexdigest()
            assert stored.content[name] == body
    fetched = sorted(r for r in payloads.requests if not r.endswith(".checkm"))
    assert fetched == sorted(name for files in objects.values() for name in files)
