"""Merritt checkm batch manifests: the three batch profiles, Merritt's variations, errors."""

from __future__ import annotations

import re

import pytest

from reconciler.manifests.checkm import (
    ManifestError,
    normalise_algorithm,
    parse_checkm,
    read_checkm,
    sanitise_id,
)
from reconciler.manifests.resolve import ManifestError as ReExported
from reconciler.manifests.resolve import check_items

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network

PROFILE = "http://uc3.cdlib.org/registry/ingest/manifest/"
FIELDS = ("#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | "
          "nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier | mrt:localIdentifier | "
          "mrt:creator | mrt:title | mrt:date")
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MD5 = "098f6bcd4621d373cade4e832627b4f6"


def manifest(profile: str, *rows: str, fields: str = FIELDS) -> str:
    return "\n".join([
        "#%checkm_0.7",
        f"#%profile | {PROFILE}{profile}",
        "#%prefix | mrt: | http://merritt.cdlib.org/terms#",
        "#%prefix | nfo: | http://www.semanticdesktop.org/ontologies/2007/03/22/nfo#",
        fields,
        *rows,
        "#%eof",
        "",
    ])


def test_single_file_batch_manifest() -> None:
    text = manifest(
        "mrt-single-file-batch-manifest",
        f"http://repo.example.org/maps/map-001.tif | SHA-256 | {SHA.upper()} | 48213 |"
        " 2010-06-02T13:54:43-07:00 | map-001.tif | ark:/13030/m5 | map-001 | Jane Doe |"
        " Map of Oakland | 1911",
        f"http://repo.example.org/maps/map-002.tif | md5 | {MD5} | 12 | | map-002.tif | | |"
        " | |",
    )
    items = parse_checkm(text, "maps.checkm")
    assert items == [
        {
            "id": "map-001",
            "url": "http://repo.example.org/maps/map-001.tif",
            "digest": {"algorithm": "sha256", "value": SHA},
            "size": 48213,
            "title": "Map of Oakland",
            "primaryId": "ark:/13030/m5",
            "creator": "Jane Doe",
            "date": "1911",
            "localIds": ["map-001"],
            "metadata": {
                "fileName": "map-001.tif",
                "lastModified": "2010-06-02T13:54:43-07:00",
                "profile": "mrt-single-file-batch-manifest",
            },
        },
        {
            "id": "map-002.tif",  # no local identifier: the file name
            "url": "http://repo.example.org/maps/map-002.tif",
            "digest": {"algorithm": "md5", "value": MD5},
            "size": 12,
            "metadata": {"fileName": "map-002.tif",
                         "profile": "mrt-single-file-batch-manifest"},
        },
    ]
    built = check_items(items, "maps.checkm")  # the same shape as inline items
    assert built[0].digest is not None and built[0].digest.value == SHA
    assert built[1].title is None


def test_container_batch_manifest() -> None:
    text = manifest(
        "mrt-container-batch-manifest",
        "https://h.example.org/box/letters.zip | | | 1048576 | | letters.zip | | letters-1 |"
        " Smith | Letters | 1890",
        "https://h.example.org/box/diaries.tar.gz | | | | | diaries.tar.gz",
    )
    items = parse_checkm(text, "box.checkm")
    assert [i["container"] for i in items] == [  # an object of the container's members
        {"url": "https://h.example.org/box/letters.zip", "size": 1048576, "format": "zip"},
        {"url": "https://h.example.org/box/diaries.tar.gz", "format": "tar"},
    ]
    assert [i["id"] for i in items] == ["letters-1", "diaries.tar.gz"]
    assert all(i["metadata"]["profile"] == "mrt-container-batch-manifest" for i in items)
    assert "url" not in items[0] and "digest" not in items[0]
    built = check_items(items, "box.checkm")
    assert built[0].url == "https://h.example.org/box/letters.zip"  # the object's source
    assert built[0].file_count() is None  # known once unpacked


def test_batch_of_manifests_names_each_objects_manifest() -> None:
    # Merritt's own test data: each line names an object manifest; trailing fields left out.
    # Its lines are object manifests, not payloads: each item carries the object manifest's
    # URL, which the reconciler fetches at admission for the object's files (issue 8 §2).
    text = manifest(
        "mrt-batch-manifest",
        f"http://localhost:28080/feederout/1/manifest1.txt | sha256 | {SHA} | 739 |"
        " 2010-06-02T13:54:43-07:00 | manifest1.txt | ark://ark1",
        f"http://localhost:28080/feederout/1/manifest2.txt | sha256 | {SHA} | 278 |"
        " 2010-06-02T13:54:44-07:00 | manifest2.txt |  | local://id1",
        f"http://localhost:28080/feederout/1/manifest3.txt | sha256 | {SHA} | 278 |"
        " 2010-06-02T13:54:44-07:00 | manifest3.txt |  | local://id2 | me | my title |"
        " 2010-06-02T13:54:44-07:00",
    )
    parsed = read_checkm(text, "batch.checkm")
    assert parsed.profile == "mrt-batch-manifest"
    assert [e.id for e in parsed.entries] == ["manifest1.txt", "local___id1", "local___id2"]
    assert parsed.entries[0].primary_id == "ark://ark1"
    assert parsed.entries[2].title == "my title" and parsed.entries[2].local_ids == (
        "local://id2",)
    items = parse_checkm(text, "batch.checkm")
    assert [i["objectManifest"] for i in items] == [
        f"http://localhost:28080/feederout/1/manifest{n}.txt" for n in (1, 2, 3)]
    assert items[0]["primaryId"] == "ark://ark1" and items[1]["localIds"] == ["local://id1"]
    assert all("url" not in i and "files" not in i for i in items)
    with pytest.raises(ManifestError) as info:  # no reader: nothing may pass as a payload
        check_items(items, "batch.checkm")
    assert "objectManifest" in str(info.value)


def test_merritt_variations_are_read() -> None:
    text = "\n".join([
        "\ufeff#%checkm_0.7",
        "# a comment",
        "#%profile | http://uc3.cdlib.org/registry/mrt/mrt-container-batch-manifest",
        "#%columns | nfo:fileURL | nfo:hashalgorithm | nfo:hashvalue | mrt:title",
        "",
        f"http://h/a | SHA256 | {SHA} | Pipes %7C in a title",
        "http://h/b",
        "#%EOF",
        "http://h/after-eof | | | ignored",
    ])
    items = parse_checkm(text, "m")
    assert [i["id"] for i in items] == ["line-6", "line-7"]
    assert items[0]["title"] == "Pipes | in a title"
    assert items[0]["container"]["digest"] == {"algorithm": "sha256", "value": SHA}
    assert "format" not in items[0]["container"]  # the job tells by the content


@pytest.mark.parametrize(("name", "normal"), [
    ("SHA-256", "sha256"), ("sha-256", "sha256"), ("SHA256", "sha256"), ("sha_256", "sha256"),
    ("MD5", "md5"), ("SHA-512", "sha512"), ("sha1", "sha1"), ("SHA-384", "sha384"),
    ("SHA3-256", "sha3_256"), ("sha3_512", "sha3_512"), ("crc32", None), ("adler32", None),
    ("md2", None), ("", None),
])
def test_algorithm_names(name: str, normal: str | None) -> None:
    assert normalise_algorithm(name) == normal


@pytest.mark.parametrize(("raw", "clean"), [
    ("map-001", "map-001"),
    ("local b!", "local_b_"),
    ("../../etc/passwd", "etc_passwd"),
    ("..", ""),
    ("...", ""),
    ("_hidden", "hidden"),
    ("ark:/13030/m5", "ark__13030_m5"),
    ("Café Müller", "Cafe_Muller"),
    ("日本", ""),
    ("a" * 200, "a" * 128),
])
def test_ids_are_sanitised(raw: str, clean: str) -> None:
    result = sanitise_id(raw)
    assert result == clean
    assert result == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", result)


def test_unusable_identifiers_fall_back_to_the_line_number() -> None:
    text = manifest("mrt-single-file-batch-manifest",
                    "http://h/1 | | | | | ... | | !!!", "http://h/2 | | | | | 日本")
    assert [i["id"] for i in parse_checkm(text, "m")] == ["line-6", "line-7"]


def test_colliding_ids_name_both_lines() -> None:
    text = manifest("mrt-single-file-batch-manifest",
                    "http://h/1 | | | | | | | a b", "http://h/2 | | | | | | | a_b")
    with pytest.raises(ManifestError) as info:
        parse_checkm(text, "m.checkm")
    assert str(info.value) == ("m.checkm:7: item id 'a_b' (from 'a_b') is already used on"
                               " line 6 (from 'a b')")
    assert ManifestError is ReExported  # one definition, re-exported by manifests


HEAD = manifest("mrt-single-file-batch-manifest").replace("#%eof\n", "")


@pytest.mark.parametrize(("text", "message"), [
    ("", "m:1: not a checkm manifest (the first line must be #%checkm_0.7)"),
    ("nfo:fileUrl | x\n", "m:1: not a checkm manifest"),
    ("#%checkm_0.7\n#%profile | http://uc3.cdlib.org/registry/ingest/manifest/"
     "mrt-ingest-manifesto\n", "m:2: unknown manifest profile 'http://uc3.cdlib.org/registry/"
     "ingest/manifest/mrt-ingest-manifesto' (expected"),
    ("#%checkm_0.7\n#%profile\n", "m:2: unknown manifest profile ''"),
    ("#%checkm_0.7\n" + FIELDS + "\nhttp://h/a\n", "m:3: data line before the #%profile"
     " header"),
    (f"#%checkm_0.7\n#%profile | {PROFILE}mrt-batch-manifest\nhttp://h/a\n",
     "m:3: data line before the #%fields header"),
    (f"#%checkm_0.7\n#%profile | {PROFILE}mrt-batch-manifest\n#%fields | nfo:fileName\n",
     "m:3: the #%fields header has no nfo:fileUrl"),
    (f"#%checkm_0.7\n#%profile | {PROFILE}mrt-batch-manifest\n#%fields | nfo:fileUrl |"
     " nfo:fileurl\n", "m:3: field nfo:fileUrl is listed twice"),
    (HEAD + "http://h/a | | | | | | | | | | | extra\n",
     "m:6: 12 values, but the #%fields header (line 5) names 11 fields"),
    (HEAD + " | | | | | a\n", "m:6: missing nfo:fileUrl"),
    (HEAD + "ftp://h/a\n", "m:6: nfo:fileUrl 'ftp://h/a' is not an http://, https:// or"
     " file: URL"),
    (HEAD + "http://h/a | | | 12kB\n", "m:6: file size '12kB' is not a whole number"),
    (HEAD + "http://h/a | | | -1\n", "m:6: file size '-1' is not a whole number"),
    (HEAD + "http://h/a | crc32 | 1234\n", "m:6: hash algorithm 'crc32' is one Merritt"
     " accepts, but batchq cannot verify it; give one of md5, sha1, sha224, sha256, sha384,"
     " sha512, sha3_224, sha3_256, sha3_384, sha3_512, or leave the digest out"),
    (HEAD + "http://h/a | whirlpool | 1234\n", "m:6: unknown hash algorithm 'whirlpool'"
     " (md5, sha1,"),
    (HEAD + "http://h/a | | | | | | | | | | | extra |\n",
     "m:6: 12 values, but the #%fields header (line 5) names 11 fields"),
    (HEAD + f"http://h/a | | {MD5}\n", "m:6: nfo:hashValue is given without"
     " nfo:hashAlgorithm"),
    (HEAD + "http://h/a | md5 |\n", "m:6: nfo:hashAlgorithm md5 is given without"
     " nfo:hashValue"),
    (HEAD + f"http://h/a | sha256 | {MD5}\n", f"m:6: hash value '{MD5}' is not a sha256"
     " digest (64 hex digits)"),
    (HEAD + "#%eof\nhttp://h/a\n", "m:7: the manifest lists no items"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_checkm(text, "m")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_item_count_is_bounded() -> None:
    text = manifest("mrt-container-batch-manifest", *(f"http://h/{n}" for n in range(4)))
    assert len(parse_checkm(text, "m", max_items=4)) == 4
    with pytest.raises(ManifestError, match=r"^m:9: more than 3 items$"):
        parse_checkm(text, "m", max_items=3)


def test_merritt_line_and_header_forms() -> None:
    # as Merritt's Checkm.java reads them: the header value after spaces or `|`, trailing
    # empty values dropped, `%20` and `%7c` decoded in values but not in the URL
    text = "\n".join([
        "#%checkm_0.7",
        f"#%profile {PROFILE}mrt-single-file-batch-manifest",
        FIELDS,
        "http://h/a%20b.tif | | | | | a%20b.tif | | | Ann%20Lee | A%7cB %41 | |",
        "http://h/c.tif | | | | | c.tif | | x;;y; x | | | | | | |",
        "#%eof",
    ])
    first, second = parse_checkm(text, "m")
    assert first["url"] == "http://h/a%20b.tif"
    assert first["id"] == "a_b.tif" and first["metadata"]["fileName"] == "a b.tif"
    assert first["title"] == "A|B %41" and first["creator"] == "Ann Lee"
    assert second["id"] == "x" and second["localIds"] == ["x", "y"]


def test_an_object_manifest_is_one_object_of_several_files() -> None:
    text = manifest("mrt-ingest-manifest", f"http://h/a.jpg | md5 | {MD5} | 12 | | a.jpg",
                    "http://h/a.txt | | | | | notes/a.txt", "http://h/b%20c.txt")
    (item,) = parse_checkm(text, "https://h/objects/o-1.checkm")
    assert item == {"id": "o-1", "metadata": {"profile": "mrt-ingest-manifest"}, "files": [
        {"name": "a.jpg", "url": "http://h/a.jpg", "size": 12,
         "digest": {"algorithm": "md5", "value": MD5}},
        {"name": "notes/a.txt", "url": "http://h/a.txt"},
        {"name": "b c.txt", "url": "http://h/b%20c.txt"},  # no nfo:fileName: the URL's
    ]}
    (built,) = check_items([item], "o.checkm")
    assert built.file_count() == 3 and built.url == "http://h/a.jpg"


@pytest.mark.parametrize(("name", "problem"), [
    ("../a.txt", "has an empty, '.' or '..' path segment; a name stays inside its object"),
    ("a/../../b", "has an empty, '.' or '..' path segment; a name stays inside its object"),
    ("/etc/passwd", "is an absolute path; give a path relative to the object"),
    ("a\x1b[2Jb", "contains the character '\\x1b'; use '/' between folders"),
    ("a\\b", "contains the character '\\\\'; use '/' between folders"),
])
def test_an_object_file_name_that_would_leave_the_object_is_refused(
        name: str, problem: str) -> None:
    text = manifest("mrt-ingest-manifest", "http://h/a.jpg | | | | | a.jpg",
                    f"http://h/x | | | | | {name}")
    with pytest.raises(ManifestError) as info:
        parse_checkm(text, "o.checkm")
    assert str(info.value) == f"o.checkm:7: file name {name!r} {problem}"
