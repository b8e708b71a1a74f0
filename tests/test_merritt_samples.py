"""Merritt's own published manifests (tests/data/merritt/, origins in SOURCES.md): every one
Merritt accepts is read as Merritt reads it, and every one it refuses is refused at its line.

Parsed through `parse_manifest`, the entry point a downloaded manifest goes through; an
mrt-batch-manifest's object manifests are read from their copies here (`read_sample`), as
the reconciler downloads them at admission. An object manifest (mrt-ingest-manifest) is ONE
item, an object of its lines' files (issue 8 §2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests.checkm import read_checkm
from reconciler.manifests.resolve import ManifestError, parse_manifest

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network

DATA = Path(__file__).parent / "data" / "merritt"
DOC = "https://raw.githubusercontent.com/CDLUC3/mrt-doc/main/sampleFiles/"
SAMPLES = "http://merritt.cdlib.org/samples/"
BLOCKS_JPG_MD5 = "0b21c6d48e815dd537d42dc1cfac0111"

# file -> the item ids it yields, or the start of the message that refuses it
ACCEPTED: dict[str, list[str]] = {
    "mrt-dashboard/sampleBatchOfFiles.checkm": [
        "goldenDragon.jpg", "tumbleBug.jpg", "generalDrapery.jpg"],
    "mrt-dashboard/sampleBatchOfContainers.checkm": [
        "huskyChicken.zip", "outdoorStore.zip", "souvenirs.zip"],
    "mrt-doc/sampleFiles/sampleBatchOfFiles.checkm": [
        "goldenDragon.jpg", "tumbleBug.jpg", "generalDrapery.jpg"],
    "mrt-doc/sampleFiles/sampleBatchOfContainers.checkm": [
        "huskyChicken.zip", "outdoorStore.zip", "souvenirs.zip"],
    "mrt-doc/test-cases/sampleBatchOfContainers_incorrect_filename.checkm": [
        "huskyChicken.zip", "outdoorStore.zip.txt", "souvenirs.zip"],
    "mrt-doc/test-cases/sampleBatchOfContainers_with_bad_ark.checkm": [
        "huskyChicken.zip", "outdoorStore.zip", "souvenirs.zip"],
    "mrt-doc/test-cases/sampleBatchOfFiles_mixedTypes.checkm": [
        "goldenDragon.zip", "tumbleBug.jpg", "generalDrapery.jpg"],
    "mrt-doc/test-cases/sampleBatchOfFiles_mixedTypes_checkm.checkm": [
        "goldenDragon.checkm", "tumbleBug.jpg", "generalDrapery.jpg"],
    "mrt-ingest/digest_batch.checkm": ["test_digest.zip"],
    "mrt-ingest/localid_batch.checkm": ["localidfour"],
    "mrt-ingest/localid2_batch.checkm": ["localidseven"],
    "mrt-ingest/mock_object.checkm": ["mock_object"],
    "mrt-dashboard/sampleBatchOfManifests.checkm": ["bigHunt.checkm", "4blocks.checkm",
                                                    "call911.checkm"],
    "mrt-doc/sampleFiles/sampleBatchOfManifests.checkm": [
        "bigHunt.checkm", "4blocks.checkm", "call911.checkm"],
    "mrt-doc/test-cases/sampleBatchOfManifests_incorrect_filename.checkm": [
        "bigHunt.checkm", "4blocks.checkm.txt", "call911.checkm"],
}

# object manifests (mrt-ingest-manifest) of several files: the files each lists, by line
OBJECTS: dict[str, list[tuple[int, str]]] = {
    **{f"{where}/{name}.checkm": files for where in ("mrt-dashboard", "mrt-doc/sampleFiles")
       for name, files in {
           "4blocks": [(6, "4blocks.jpg"), (7, "4blocks.txt")],
           "bigHunt": [(6, "bigHunt2.jpg"), (7, "bigHunt3.jpg"), (8, "bigHunt.txt")],
           "call911": [(6, "call911.jpg"), (7, "call911.txt")],
       }.items()},
    **{f"mrt-doc/test-cases/4blocks_{case}.checkm": [(6, "4blocks.jpg"), (7, "4blocks.txt")]
       for case in ("2term_nl", "alg_uppercase", "extra_pipe", "field_reorder",
                    "incorrect_url_hostname", "nl_after_data", "noeof", "noterm_nl",
                    "prefixes", "uri",
                    "with_bad_date", "with_bad_moddate", "with_date", "with_moddate",
                    "with_windows_crlf")},
    "mrt-doc/test-cases/4blocks_missing_fname.checkm": [(6, "4blocks.jpg"), (7, "4blocks.txt")],
    "mrt-doc/test-cases/4blocks_nl_before_data.checkm": [(7, "4blocks.jpg"),
                                                         (8, "4blocks.txt")],
    "mrt-doc/test-cases/4blocks_nl_within_data.checkm": [(6, "4blocks.jpg"),
                                                         (8, "4blocks.txt")],
    "mrt-doc/test-cases/4blocks_noprefix.checkm": [(4, "4blocks.jpg"), (5, "4blocks.txt")],
    "mrt-doc/test-cases/4blocks_dup_filename_diff_folders.checkm": [
        (6, "4blocks.jpg"), (7, "folder1/4blocks.txt"), (8, "folder2/4blocks.txt")],
    "mrt-doc/test-cases/4blocks_dup_filename_upcase.checkm": [
        (6, "4blocks.jpg"), (7, "4blocks.txt"), (8, "4blocks.TXT")],
}

REFUSED: dict[str, str] = {
    "mrt-dashboard/ucldc_collection_5551212-manifest-0.checkm":
        "ucldc_collection_5551212-manifest-0.checkm:371: nfo:fileUrl 'ACTUAL_ERC_FILENAME'"
        " is not an http://, https:// or file: URL",
    "mrt-dashboard/ucldc_collection_5551212-manifest-1.checkm":
        "ucldc_collection_5551212-manifest-1.checkm:81: nfo:fileUrl 'ACTUAL_ERC_FILENAME'"
        " is not an http://, https:// or file: URL",
    "mrt-doc/test-cases/4blocks_encoding.checkm":
        "4blocks_encoding.checkm:7: not valid UTF-8",
    "mrt-doc/test-cases/4blocks_nodecl.checkm":
        "4blocks_nodecl.checkm:1: not a checkm manifest (the first line must be #%checkm_0.7)",
    "mrt-doc/test-cases/4blocks_nofields.checkm":
        "4blocks_nofields.checkm:5: data line before the #%fields header",
    "mrt-doc/test-cases/4blocks_noprofile.checkm":
        "4blocks_noprofile.checkm:5: data line before the #%profile header",
    "mrt-doc/test-cases/4blocks_missing_url.checkm":
        "4blocks_missing_url.checkm:6: missing nfo:fileUrl",
    "mrt-doc/test-cases/4blocks_dup_filename.checkm":
        "4blocks_dup_filename.checkm:8: file name '4blocks.txt' is already used on line 7"
        " (names are unique within an object)",
    "mrt-doc/test-cases/4blocks_incorrect_algorithm.checkm":
        "4blocks_incorrect_algorithm.checkm:7: unknown hash algorithm 'md5xxx' (md5, sha1,",
    "mrt-doc/test-cases/4blocks_incorrect_filesize.checkm":
        "4blocks_incorrect_filesize.checkm:7: file size '111xxx' is not a whole number",
    "mrt-doc/test-cases/4blocks_incorrect_md5_format.checkm":
        "4blocks_incorrect_md5_format.checkm:6: hash value '5ae96f4ce3d6e39bc3836c57e5ccf8d2"
        "a7acd31c832da0c2b0ad14992e284d5b' is not a md5 digest (32 hex digits)",
    "mrt-doc/test-cases/4blocks_incorrect_sha256.checkm":
        "4blocks_incorrect_sha256.checkm:7: hash value '4dbac258aa1aab9fea0f57712385283d' is"
        " not a sha256 digest (64 hex digits)",
    "mrt-doc/test-cases/4blocks_incorrect_url_protocol.checkm":
        "4blocks_incorrect_url_protocol.checkm:7: nfo:fileUrl 'hzzttps://",
}


# where the object manifests that the mrt-batch-manifest samples name are kept here
COPIES = {f"{SAMPLES}manifests/": DATA / "mrt-dashboard", DOC: DATA / "mrt-doc" / "sampleFiles"}


def read_sample(url: str) -> bytes:
    """An object manifest's bytes from its copy in tests/data/merritt (no network)."""
    for prefix, folder in COPIES.items():
        if url.startswith(prefix):
            return (folder / url.removeprefix(prefix)).read_bytes()
    raise AssertionError(f"no copy of {url}")


def parse(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    return [item.to_dict() for item in parse_manifest(path.read_bytes(), path.name,
                                                      read_object=read_sample)]


def test_the_table_covers_every_sample() -> None:
    samples = {str(p.relative_to(DATA)) for p in DATA.rglob("*.checkm")}
    assert samples == set(ACCEPTED) | set(OBJECTS) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_samples_give_their_items(name: str) -> None:
    assert [item["id"] for item in parse(name)] == ACCEPTED[name]


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_an_object_manifest_is_one_object_of_its_files(name: str) -> None:
    path = DATA / name
    parsed = read_checkm(path.read_bytes().decode(), path.name)
    assert parsed.profile == "mrt-ingest-manifest"
    assert [(e.line, e.name) for e in parsed.entries] == OBJECTS[name]
    (item,) = parse(name)
    assert item["id"] == path.name.removesuffix(".checkm")
    assert "url" not in item  # an object of files, not a payload
    assert [f["name"] for f in item["files"]] == [n for _, n in OBJECTS[name]]
    assert [f["url"] for f in item["files"]] == [e.url for e in parsed.entries]
    assert all(f["url"].startswith(("https://", "http://")) for f in item["files"])


def test_a_batch_of_object_manifests_gives_one_object_each_with_its_files() -> None:
    big_hunt, blocks, call911 = parse("mrt-dashboard/sampleBatchOfManifests.checkm")
    assert big_hunt == {
        "id": "bigHunt.checkm", "creator": "Tracy Seneca", "date": "2009-09-01T00:00:00",
        "files": [{"name": "bigHunt2.jpg", "url": f"{SAMPLES}bigHunt2.jpg", "size": 76935},
                  {"name": "bigHunt3.jpg", "url": f"{SAMPLES}bigHunt3.jpg", "size": 55408},
                  {"name": "bigHunt.txt", "url": f"{SAMPLES}bigHunt.txt", "size": 33}],
        "metadata": {"fileName": "bigHunt.checkm", "profile": "mrt-batch-manifest",
                     "objectManifest": f"{SAMPLES}manifests/bigHunt.checkm"},
    }
    assert blocks["title"] == "Motel Capri - manifest style"
    assert [f["name"] for f in blocks["files"]] == ["4blocks.jpg", "4blocks.txt"]
    assert blocks["files"][0]["digest"] == {"algorithm": "md5", "value": BLOCKS_JPG_MD5}
    assert [f["name"] for f in call911["files"]] == ["call911.jpg", "call911.txt"]


def test_an_object_manifest_that_cannot_be_read_names_object_url_and_line() -> None:
    path = DATA / "mrt-dashboard/sampleBatchOfManifests.checkm"
    broken = (DATA / "mrt-doc/test-cases/4blocks_incorrect_sha256.checkm").read_bytes()

    def read(url: str) -> bytes:
        return broken if url.endswith("4blocks.checkm") else read_sample(url)

    with pytest.raises(ManifestError) as info:
        parse_manifest(path.read_bytes(), path.name, read_object=read)
    assert str(info.value) == (
        f"object '4blocks.checkm': {SAMPLES}manifests/4blocks.checkm:7: hash value"
        " '4dbac258aa1aab9fea0f57712385283d' is not a sha256 digest (64 hex digits)")
    batch = (DATA / "mrt-dashboard/sampleBatchOfFiles.checkm").read_bytes()
    with pytest.raises(ManifestError) as info:  # a batch manifest is no object manifest
        parse_manifest(path.read_bytes(), path.name, read_object=lambda url: batch)
    assert str(info.value) == (
        f"object 'bigHunt.checkm': {SAMPLES}manifests/bigHunt.checkm: is an"
        " mrt-single-file-batch-manifest; an mrt-batch-manifest line names an object"
        " manifest (mrt-ingest-manifest)")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_samples_name_file_and_line(name: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(name)
    assert str(info.value).startswith(REFUSED[name])
    assert "\n" not in str(info.value)


def test_single_file_batch_fields() -> None:
    golden, tumble, drapery = parse("mrt-dashboard/sampleBatchOfFiles.checkm")
    assert golden == {
        "id": "goldenDragon.jpg", "url": f"{SAMPLES}goldenDragon.jpg",
        "digest": {"algorithm": "md5", "value": "aa59e145dfb2237ecd8cb5ce4f4953ea"},
        "title": "Golden Dragon Restaurant Sign",
        "creator": "Tracy Seneca", "date": "2009-09-01T00:00:00",
        "metadata": {"fileName": "goldenDragon.jpg",
                     "profile": "mrt-single-file-batch-manifest"},
    }
    assert tumble["title"] == "Tumble Bug, Luna Park.  Sydney"  # no date: a short line
    assert "date" not in tumble
    assert "digest" not in drapery and drapery["title"] == "General Drapery"
    assert "creator" not in drapery


def test_a_line_ending_in_an_empty_field_reads_as_merritt_reads_it() -> None:
    # mrt-ingest's digest_batch: 12 values for 11 fields, the last one empty
    (item,) = parse("mrt-ingest/digest_batch.checkm")
    assert item == {
        "id": "test_digest.zip",
        "container": {
            "url": "http://mock-merritt-it:4567/static/test_digest.zip", "format": "zip",
            "digest": {"algorithm": "sha256", "value":
                       "80a5b1dd2a8f7a28e817768f8db5ae9098e89d6330b4fd2c2ca3c600d1f97e59"}},
        "metadata": {"fileName": "test_digest.zip",
                     "profile": "mrt-container-batch-manifest"},
    }


def test_a_container_line_whose_format_only_its_url_tells() -> None:
    # mrt-doc's outdoorStore.zip is named outdoorStore.zip.txt: the URL says zip
    items = parse("mrt-doc/test-cases/sampleBatchOfContainers_incorrect_filename.checkm")
    assert [i["container"]["format"] for i in items] == ["zip", "zip", "zip"]


@pytest.mark.parametrize(("name", "ids"), [
    ("mrt-ingest/localid_batch.checkm", ("localidfour", "localidfive", "localidsix")),
    ("mrt-ingest/localid2_batch.checkm", ("localidseven", "localideight", "localidnine")),
])
def test_several_local_identifiers_are_kept_apart(name: str, ids: tuple[str, ...]) -> None:
    path = DATA / name
    (entry,) = read_checkm(path.read_text(), path.name).entries
    assert entry.local_ids == ids  # repeats dropped, order kept
    (item,) = parse(name)
    assert item["id"] == ids[0]
    assert item["localIds"] == list(ids)


def test_one_file_object_manifest_is_one_object() -> None:
    (item,) = parse("mrt-ingest/mock_object.checkm")
    assert item == {"id": "mock_object",
                    "files": [{"name": "hello.txt",
                               "url": "http://mock-merritt-it:4567/static/hello.txt"}],
                    "metadata": {"profile": "mrt-ingest-manifest"}}


def test_object_file_fields_and_algorithm_names() -> None:
    path = DATA / "mrt-doc/test-cases/4blocks_alg_uppercase.checkm"
    jpg, txt = read_checkm(path.read_text(), path.name).entries
    assert jpg.digest == {"algorithm": "md5", "value": BLOCKS_JPG_MD5}  # written MD5
    assert txt.digest == {"algorithm": "sha256", "value":  # written SHA-256
                          "8eb32b67483526906ff99036d9028aa5b6ab5e59e83ca439e63cc041284b6cc2"}
    path = DATA / "mrt-doc/test-cases/4blocks_field_reorder.checkm"
    jpg, _ = read_checkm(path.read_text(), path.name).entries
    assert (jpg.url, jpg.digest) == (f"{DOC}4blocks.jpg",
                                     {"algorithm": "md5", "value": BLOCKS_JPG_MD5})


def test_the_dashboards_object_template_once_filled_in() -> None:
    # The dashboard fills in the ERC line before it submits the manifest; so does this test.
    # `#%profile` is written without `|`; each line ends in ` | ` (an empty mime type);
    # `%20` in a file name is a space (Merritt's dec), while the URL is used as written.
    path = DATA / "mrt-dashboard/ucldc_collection_5551212-manifest-1.checkm"
    text = path.read_text().replace("ACTUAL_ERC_FILENAME", "https://h.example/mrt-erc.txt")
    text = text.replace("EXPECTED_ERC_CHECKSUM", "a" * 32)
    parsed = read_checkm(text, path.name)
    assert parsed.profile == "mrt-ingest-manifest"
    assert len(parsed.entries) == 76
    merced = parsed.entries[2]
    assert merced.url.endswith("/file:content/Merced%2520Army%2520Flying%2520School.pdf")
    assert merced.metadata["fileName"].endswith("/file:content/Merced Army Flying School.pdf")
    assert merced.digest == {"algorithm": "md5", "value": "5c66992caab03f795339b76dfa7974e2"}
    assert parsed.entries[-1].metadata["fileName"] == "mrt-erc.txt"
