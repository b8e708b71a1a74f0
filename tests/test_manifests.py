"""A batch's items: inline, or a remote manifest over real HTTP or a real file."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from reconciler.domain.model import BatchSpec, Depositor, Digest, Item, Profile
from reconciler.manifests.repofiles import RepoSnapshot
from reconciler.manifests.resolve import ManifestError, parse_manifest, resolve_items
from tests.fixtures import GitRepo
from tests.test_fetch import LoopbackServer

SHA = hashlib.sha256(b"test").hexdigest()
CHECKM = f"""#%checkm_0.7
#%profile | http://uc3.cdlib.org/registry/ingest/manifest/mrt-single-file-batch-manifest
#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize | nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier | mrt:localIdentifier | mrt:creator | mrt:title | mrt:date
{{base}}p/a.tif | SHA-256 | {SHA} | 4 | | a.tif | | map-a | Ann | Map A | 1900
{{base}}p/b.tif | | | | | b.tif
#%eof
"""  # noqa: E501


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


def spec(url: str | None = None, items: tuple[Item, ...] | None = None) -> BatchSpec:
    return BatchSpec(profile="demo", depositor=Depositor("Jane", "jane@example.org"),
                     items=items, manifest_url=url)


def profile(*prefixes: str) -> Profile:
    return Profile(name="demo", allowed_prefixes=prefixes)


def resolve(server: LoopbackServer, body: str, name: str = "m", *,
            max_bytes: int = 50 * 1024 * 1024) -> list[Item]:
    url = server.add(name, body.encode())
    return resolve_items(spec(url), profile(server.base), max_bytes=max_bytes)


def test_inline_items_are_returned_as_they_are_but_checked_against_the_prefixes() -> None:
    items = (Item("a", "http://ok/a", Digest("sha256", SHA), 4, "A"), Item("b", "file:p/b"))
    got = resolve_items(spec(items=items), profile("http://ok/", "file:p/"))
    assert got == list(items)
    with pytest.raises(ManifestError) as info:
        resolve_items(spec(items=items), profile("http://ok/"))
    assert str(info.value) == ("item 'b': URL file:p/b is not allowed by profile \"demo\""
                               " (allowed prefixes: http://ok/)")
    climbing = (Item("c", "http://ok/pub/../admin/secret"),)
    with pytest.raises(ManifestError, match=re.escape("item 'c': URL http://ok/pub/../admin/")):
        resolve_items(spec(items=climbing), profile("http://ok/pub/"))


def test_checkm_manifest_over_http(server: LoopbackServer) -> None:
    items = resolve(server, CHECKM.format(base=server.base), "batch.checkm")
    assert [(i.id, i.url, i.size, i.title) for i in items] == [
        ("map-a", server.base + "p/a.tif", 4, "Map A"),
        ("b.tif", server.base + "p/b.tif", None, None),
    ]
    assert items[0].digest == Digest("sha256", SHA)
    assert items[0].creator == "Ann"
    assert server.requests == ["batch.checkm"]


def test_yaml_and_json_lists_and_mappings(server: LoopbackServer) -> None:
    entries: list[dict[str, Any]] = [
        {"id": "a", "url": server.base + "a", "digest": {"algorithm": "sha256", "value": SHA},
         "size": 4, "title": "A", "metadata": {"k": "v"}},
        {"id": "b", "url": server.base + "b"},
    ]
    expected = [Item.from_dict(e) for e in entries]
    assert resolve(server, yaml.safe_dump(entries), "list.yaml") == expected
    assert resolve(server, json.dumps(entries, indent="\t"), "list.json") == expected
    assert resolve(server, yaml.safe_dump({"items": entries}), "map.yaml") == expected
    assert resolve(server, json.dumps({"items": entries}), "map.json") == expected
    flow = "[{id: a, url: '" + server.base + "a'}]"  # flow YAML, not JSON
    assert [i.id for i in resolve(server, flow, "flow.yaml")] == ["a"]


def test_relative_file_manifest_is_read_from_git_at_the_batch_commit(
        git_repo: GitRepo) -> None:
    git_repo.write("manifests/m.yaml", "- {id: a, url: 'file:payloads/a.txt'}\n")
    head = git_repo.commit("a manifest")
    git_repo.write("manifests/m.yaml", "- {id: b, url: 'file:payloads/b.txt'}\n")  # not committed
    repo = RepoSnapshot(git_repo.path / ".git", head)
    items = resolve_items(spec("file:manifests/m.yaml"), profile("file:"), repo=repo)
    assert items == [Item("a", "file:payloads/a.txt")]
    with pytest.raises(ManifestError) as info:
        resolve_items(spec("file:../m.yaml"), profile("file:"), repo=repo)
    assert str(info.value) == ('manifest URL file:../m.yaml is refused: it contains the dot'
                               ' segment ".."')


def test_manifest_url_must_be_allowed(server: LoopbackServer) -> None:
    url = server.add("m", b"- {id: a, url: 'http://x/'}\n")
    with pytest.raises(ManifestError) as info:
        resolve_items(spec(url), profile("https://repo.example.org/", "file:"))
    assert str(info.value) == (f"manifest URL {url} is not allowed by profile \"demo\""
                               " (allowed prefixes: https://repo.example.org/, file:)")
    with pytest.raises(ManifestError, match=r"\(allowed prefixes: none\)$"):
        resolve_items(spec(url), profile())
    assert server.requests == []  # refused before any request


def test_item_urls_in_a_manifest_must_be_allowed(server: LoopbackServer) -> None:
    body = f"- {{id: a, url: '{server.base}a'}}\n- {{id: evil, url: 'http://evil.example/x'}}\n"
    with pytest.raises(ManifestError) as info:
        resolve(server, body)
    assert str(info.value) == (f"item 'evil': URL http://evil.example/x is not allowed by"
                               f" profile \"demo\" (allowed prefixes: {server.base})")


def test_a_redirect_cannot_leave_the_allowed_prefixes(server: LoopbackServer) -> None:
    url = f"{server.base}redirect?to=http://evil.example/m.yaml"
    with pytest.raises(ManifestError, match=re.escape(
            "redirects to http://evil.example/m.yaml, which is not allowed")):
        resolve_items(spec(url), profile(server.base))


def test_a_hanging_manifest_url_fails_at_the_deadline(server: LoopbackServer) -> None:
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        resolve_items(spec(server.base + "hang"), profile(server.base), timeout=1.0)
    assert str(info.value) == ("cannot download the manifest: timed out after 1.0 s fetching"
                               f" {server.base}hang")
    assert time.monotonic() - started < 2.0


def test_a_manifest_over_the_size_limit_is_refused(server: LoopbackServer) -> None:
    body = yaml.safe_dump([{"id": f"i{n}", "url": f"{server.base}{n}"} for n in range(10)])
    with pytest.raises(ManifestError) as info:
        resolve(server, body, "big.yaml", max_bytes=100)
    assert str(info.value) == (f"cannot download the manifest: {server.base}big.yaml is larger"
                               f" than the 100-byte limit ({len(body)} bytes)")
    server.files["stream/big.yaml"] = body.encode()
    with pytest.raises(ManifestError, match=r"is larger than the 100-byte limit$"):
        resolve_items(spec(server.base + "stream/big.yaml"), profile(server.base),
                      max_bytes=100)


@pytest.mark.parametrize(("body", "message"), [
    ("- {id: a, url: 'http://h/1'}\n- {id: a, url: 'http://h/2'}\n",
     "m: item [1] has id 'a', already used by item [0]"),
    ('[{"id": "a", "url": "http://h/1", "colour": "red"}]',
     "m: item [0]: Additional properties are not allowed ('colour' was unexpected)"),
    ("- {id: ../etc, url: 'http://h/1'}\n", "m: item [0].id: '../etc' is not a valid item id"),
    ("- {id: a}\n", "m: item [0]: needs one of url, files or container"),
    ("- {id: a, url: 'ftp://h/1'}\n", "m: item [0].url: 'ftp://h/1' is not an http://,"
     " https:// or file: URL"),
    ("- {id: a, url: 'http://h/1', size: -1}\n", "m: item [0].size: -1 is less than the"
     " minimum of 0"),
    ("- {id: a, url: 'http://h/1', size: '12'}\n", "m: item [0].size: '12' is not of type"
     " 'integer'"),
    ("- {id: a, url: 'http://h/1', digest: {algorithm: crc32, value: ab}}\n",
     "m: item [0].digest.algorithm: 'crc32' is not one of"),
    ("- {id: a, url: 'http://h/1', digest: {algorithm: md5, value: abc}}\n",
     "m: item [0] ('a'): a md5 digest has 32 hex digits, not 3"),
    ("- {id: a, url: 'http://h/1', metadata: {k: 1}}\n", "m: item [0].metadata.k: 1 is not of"
     " type 'string'"),
    ("", "m: the manifest is empty"),
    ("# nothing but a comment\n", "m: the manifest is empty"),
    ("[]", "m: the manifest lists no items"),
    ("items: []\n", "m: the manifest lists no items"),
    ("items: []\nextra: 1\n", "m: unknown field 'extra' (a manifest mapping has only"
     " `items:`)"),
    ("other: 1\n", "m: unknown field 'other'"),
    ("just text\n", "m: expected a checkm manifest, or a YAML/JSON list of items"),
    ('{"items": [], "items": []}', "m: duplicate key 'items' in a JSON object"),
    ("- a: &a [x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "  c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "  e: [*d, *d, *d, *d, *d, *d, *d, *d]\n", "m:4:6: document expands to more than"),
    ("- [unclosed\n", "m:"),
])
def test_list_manifest_errors(body: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(body.encode(), "m")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_yaml_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 9)]
    started = time.monotonic()
    with pytest.raises(ManifestError, match="m:"):
        parse_manifest(("\n".join(lines) + "\n").encode(), "m")
    assert time.monotonic() - started < 2


def test_checkm_must_be_utf8() -> None:
    data = CHECKM.format(base="http://h/").encode().replace(b"Ann", b"Ann \xff")
    with pytest.raises(ManifestError, match=r"^m:4: not valid UTF-8 \(byte 0xff\)"):
        parse_manifest(data, "m")


def test_item_count_is_bounded() -> None:
    many = json.dumps([{"id": f"i{n}", "url": "http://h/x"} for n in range(100_001)])
    with pytest.raises(ManifestError, match=r"^m: 100001 items, more than the 100000 allowed$"):
        parse_manifest(many.encode(), "m")


def test_a_large_json_manifest_is_checked_quickly() -> None:
    entries = [{"id": f"item-{n}", "url": f"http://h/{n}", "size": n,
                "digest": {"algorithm": "sha256", "value": SHA}} for n in range(10_000)]
    started = time.monotonic()
    items = parse_manifest(json.dumps(entries).encode(), "m")
    assert len(items) == 10_000 and items[-1].size == 9999
    assert time.monotonic() - started < 10  # jsonschema alone takes seconds for this


OBJECT_FIELDS = ("#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue | nfo:fileSize |"
                 " nfo:fileLastModified | nfo:fileName | mrt:primaryIdentifier |"
                 " mrt:localIdentifier")


def merritt(profile_name: str, *lines: str) -> str:
    return "\n".join(["#%checkm_0.7", "#%profile | http://uc3.cdlib.org/registry/ingest/"
                      f"manifest/{profile_name}", OBJECT_FIELDS, *lines, "#%eof", ""])


def test_object_manifests_are_fetched_over_http_within_the_prefixes(
        server: LoopbackServer) -> None:
    server.add("o/one.checkm", merritt("mrt-ingest-manifest", f"{server.base}f/a | | | 1 | | a",
                                       f"{server.base}f/b | | | 2 | | dir/b").encode())
    body = merritt("mrt-batch-manifest", f"{server.base}o/one.checkm | | | | | one.checkm | |"
                                         " one")
    (item,) = resolve(server, body, "batch.checkm")
    assert [(f.name, f.url, f.size) for f in item.files] == [
        ("a", server.base + "f/a", 1), ("dir/b", server.base + "f/b", 2)]
    assert item.local_ids == ("one",) and server.requests == ["batch.checkm", "o/one.checkm"]

    # an object manifest outside the profile's prefixes is never requested
    url = server.add("batch2.checkm", merritt(
        "mrt-batch-manifest", "http://elsewhere.invalid/one.checkm | | | | | one.checkm").encode())
    with pytest.raises(ManifestError) as info:
        resolve_items(spec(url), profile(server.base))
    assert str(info.value) == (
        "object 'one.checkm': object manifest URL http://elsewhere.invalid/one.checkm is not"
        f' allowed by profile "demo" (allowed prefixes: {server.base})')
    assert server.requests[-1] == "batch2.checkm"  # nothing was asked of anyone after it

    # one that is missing: the object, the URL and the reason
    url = server.add("batch3.checkm", merritt(
        "mrt-batch-manifest", f"{server.base}o/gone.checkm | | | | | gone.checkm").encode())
    with pytest.raises(ManifestError) as info:
        resolve_items(spec(url), profile(server.base))
    assert str(info.value) == (f"object 'gone.checkm': cannot download the object manifest"
                               f" {server.base}o/gone.checkm: HTTP 404 fetching"
                               f" {server.base}o/gone.checkm")


def test_an_object_too_large_for_one_job_is_refused_with_the_bound(
        server: LoopbackServer) -> None:
    lines = [f"{server.base}files/{'x' * 200}-{n} | | | 1 | | f-{n}" for n in range(300)]
    with pytest.raises(ManifestError) as info:
        resolve(server, merritt("mrt-ingest-manifest", *lines), "big.checkm")
    message = str(info.value)
    assert message.startswith(f"{server.base}big.checkm: item [0] ('big').files: the object's"
                              " 300 files take ")
    assert message.endswith(" bytes to describe, more than the 65536 a job is given; split"
                            " it into several objects")


def test_the_files_of_one_object_share_their_credentials(server: LoopbackServer) -> None:
    host = server.base.removeprefix("http://")
    body = merritt("mrt-ingest-manifest", f"http://ann:pw1@{host}f/a | | | | | a",
                   f"http://bob:pw2@{host}f/b | | | | | b")
    with pytest.raises(ManifestError) as info:
        resolve(server, body, "o.checkm")
    assert str(info.value) == ("item 'o': its files' URLs carry different credentials"
                               " (user:password@); the files of one object share one, or none")
    assert "pw1" not in str(info.value)
