"""Issue 8 §2 on a real API server: objects of several files through the Kubernetes backend
(kwok plays the pods: nothing runs a worker here; `test_objects_end_to_end` runs it).

An inline object of several files and an mrt-batch-manifest of object manifests: each
object is one Job whose BATCHQ_OBJECT lists every file (credentials from the object
manifest's URLs as `***`, the userinfo in the batch's Secret), the items kept in the
Batch's ConfigMaps keep their files and identifiers, and both batches complete.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.fixtures import PayloadServer, batch_doc, profile_doc
from tests.harness import Harness
from tests.test_merritt_end_to_end import samples_on_loopback
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes

CHECKM = """#%checkm_0.7
#%profile | http://uc3.cdlib.org/registry/ingest/manifest/{profile}
#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | \
nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier | mrt:localIdentifier | mrt:creator \
| mrt:title | mrt:date
{lines}
#%eof
"""


def job_env(cluster: Any, ns: str, batch: str) -> dict[str, dict[str, str]]:
    """Each Job's worker environment, by item."""
    jobs = json.loads(cluster.kubectl("-n", ns, "get", "jobs", "-l",
                                      f"batchq.dev/batch={batch}", "-o", "json").stdout)
    out = {}
    for job in jobs["items"]:
        [container] = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        out[env["BATCHQ_ITEM_ID"]] = env
    return out


def test_objects_of_several_files_run_as_one_job_each_on_kubernetes(
        kube: tuple[Harness, KubeWorld, Any], payloads: PayloadServer) -> None:
    h, world, cluster = kube
    ns = h.settings.namespace
    base = world.prefix
    inline = {"id": "atlas", "primaryId": "ark:/99999/atlas", "localIds": ["atlas-1", "s-9"],
              "title": "An atlas", "metadata": {"simulate": "hold"}, "files": [
                  {"name": "pages/p1.tif", "url": base + "p1.tif", "size": 10,
                   "mime": "image/tiff"},
                  {"name": "pages/p2.tif", "url": base + "p2.tif"},
                  {"name": "mets.xml", "url": base + "mets.xml",
                   "digest": {"algorithm": "md5", "value": "0" * 32}}]}
    world.release("atlas", "obj-1")
    payloads.files["obj-1.checkm"] = CHECKM.format(
        profile="mrt-ingest-manifest",  # as Merritt manifests carry them: userinfo in URLs
        lines=f"http://robot:s3cret@{base[7:]}a.txt | | | 3 | | a.txt\n"
              f"http://robot:s3cret@{base[7:]}b.txt | | | 4 | | sub/b.txt").encode()
    payloads.files["batch.checkm"] = CHECKM.format(
        profile="mrt-batch-manifest",
        lines=f"{payloads.base}obj-1.checkm | | | | | obj-1.checkm | | obj-1 | Ann | One").encode()
    profile = profile_doc(base)
    profile["spec"]["allowedUrlPrefixes"].append(payloads.base)
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/atlas.yaml", batch_doc([inline]))
    h.repo.write("batches/merritt.yaml", batch_doc(url=payloads.base + "batch.checkm"))
    h.repo.commit("objects of several files")
    h.sync()
    h.until(lambda: len(h.job_names("atlas")) == 1 and len(h.job_names("merritt")) == 1,
            "one Job per object", timeout=120)

    env = job_env(cluster, ns, "atlas")["atlas"]
    shown = json.loads(env["BATCHQ_OBJECT"])
    assert [f["name"] for f in shown["files"]] == ["pages/p1.tif", "pages/p2.tif", "mets.xml"]
    assert shown["files"][0] == {"name": "pages/p1.tif", "url": base + "p1.tif", "size": 10,
                                 "mime": "image/tiff"}
    assert (env["BATCHQ_OBJECT_ID"], env["BATCHQ_LOCAL_IDS"]) == ("ark:/99999/atlas",
                                                                   "atlas-1\ns-9")

    merritt = job_env(cluster, ns, "merritt")["obj-1"]
    files = json.loads(merritt["BATCHQ_OBJECT"])["files"]
    assert [(f["name"], f["url"], f["size"]) for f in files] == [  # never the password
        ("a.txt", f"http://***@{base[7:]}a.txt", 3),
        ("sub/b.txt", f"http://***@{base[7:]}b.txt", 4)]
    assert merritt["BATCHQ_OBJECT_ID"] == "obj-1" and merritt["BATCHQ_CREATOR"] == "Ann"
    assert "s3cret" not in json.dumps(merritt)
    secrets = json.loads(cluster.kubectl("-n", ns, "get", "secrets", "-o", "json").stdout)
    held = [base64.b64decode(v).decode() for s in secrets["items"]
            if s["metadata"]["name"].startswith("merritt-credentials-")
            for v in (s.get("data") or {}).values()]
    assert held == ["robot:s3cret"]  # one userinfo for the object's files, in its Secret

    h.until(lambda: h.state("atlas") == "Completed" and h.state("merritt") == "Completed",
            "both batches to complete", timeout=120)
    [atlas] = [s.item for s in h.store.list_items("atlas")]  # ConfigMaps keep the object
    assert (atlas.file_count(), atlas.primary_id, atlas.local_ids) == (
        3, "ark:/99999/atlas", ("atlas-1", "s-9"))
    assert atlas.files[0].mime == "image/tiff"
    [obj] = [s.item for s in h.store.list_items("merritt")]
    assert obj.file_count() == 2 and obj.metadata["objectManifest"] == (
        payloads.base + "obj-1.checkm")


def test_merritts_sample_batch_of_object_manifests_on_kubernetes(
        kube: tuple[Harness, KubeWorld, Any], payloads: PayloadServer) -> None:
    h, _, cluster = kube
    objects = samples_on_loopback(payloads)  # tests/data/merritt, served from loopback
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/samples.yaml", batch_doc(url=payloads.base + "batch.checkm"))
    h.repo.commit("Merritt's sample batch of object manifests")
    h.sync()
    h.until(lambda: h.state("samples") == "Completed", "the samples to complete",
            timeout=120)
    env = job_env(cluster, h.settings.namespace, "samples")
    assert {item: [f["name"] for f in json.loads(e["BATCHQ_OBJECT"])["files"]]
            for item, e in env.items()} == {m: list(files) for m, files in objects.items()}
    assert {s.item.id: s.item.file_count() for s in h.store.list_items("samples")} == {
        "bigHunt.checkm": 3, "4blocks.checkm": 2, "call911.checkm": 2}


def test_items_of_large_objects_spread_over_configmaps_that_each_fit(
        kube: tuple[Harness, KubeWorld, Any], payloads: PayloadServer) -> None:
    # 24 objects of 150 files each: about 1.3 MB of items, more than one ConfigMap holds
    # (1 MiB), though far fewer than the 500 items a ConfigMap of small items holds
    h, world, cluster = kube
    items = [{"id": f"obj-{n}", "files": [
        {"name": f"page-{k:04d}.tif", "url": f"{world.prefix}{'long-path/' * 20}{n}/{k}.tif",
         "size": k, "digest": {"algorithm": "sha256", "value": f"{k:064x}"}}
        for k in range(150)]} for n in range(24)]
    manifest = payloads.add("objects.json", json.dumps(items).encode())
    assert len(payloads.files["objects.json"]) > 1024 * 1024
    profile = profile_doc(world.prefix)
    profile["spec"]["allowedUrlPrefixes"].append(payloads.base)
    h.repo.write("profiles/test.yaml", profile)
    h.repo.write("batches/large.yaml", batch_doc(url=manifest["url"]))
    h.repo.commit("large objects")
    h.sync()
    h.until(lambda: h.state("large") == "Completed", "the large objects to complete",
            timeout=180)
    found = h.store.list_items("large")
    assert [s.item.id for s in found] == [f"obj-{n}" for n in range(24)]
    assert {s.item.file_count() for s in found} == {150}
    assert {str(s.state) for s in found} == {"Completed"}  # each record found and updated
    chunks = json.loads(cluster.kubectl("-n", h.settings.namespace, "get", "configmaps",
                                        "-o", "json").stdout)["items"]
    sizes = [len(cm["data"]["items.json"]) for cm in chunks
             if cm["metadata"]["name"].startswith("large-items-")]
    assert len(sizes) > 1 and max(sizes) < 1024 * 1024
