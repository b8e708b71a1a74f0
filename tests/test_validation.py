"""`batchq validate` and the checks behind it: real files in a real directory layout,
exact messages at exact positions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from reconciler.domain.model import BatchSpec, Item, Profile, QueueSettings
from reconciler.spec.validation import (
    PATTERN_HINTS,
    Problem,
    batch_name,
    load_schema,
    validate_main,
    validate_repo_paths,
    validate_text,
)

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network

REPO_ROOT = Path(__file__).resolve().parent.parent

BATCH = """\
apiVersion: batchq.dev/v1
kind: Batch
metadata:
  name: maps-1
spec:
  profile: demo
  depositor: {name: Jane Doe, email: jane@example.org}
  priority: 3
  manifest:
    items:
      - id: map-001
        url: https://repo.example.org/maps/map-001.tif
        digest: {algorithm: md5, value: 0123456789abcdef0123456789abcdef}
        size: 48213
        title: Map of Oakland
        metadata: {year: "1912"}
      - id: map-002
        url: file:payloads/map-002.tif
  restarts: {map-002: 1}
"""

PROFILE = """\
apiVersion: batchq.dev/v1
kind: Profile
spec:
  job:
    command: [batchq-worker, --verbose]
    image: registry.example.org/batchq:1.0
    resources:
      requests: {cpu: 500m, memory: 256Mi}
      limits: {cpu: "2", memory: 1Gi}
    backoffLimit: 2
    activeDeadlineSeconds: 600
  storage: {path: maps/storage}
  allowedUrlPrefixes: ["https://repo.example.org/", "file:"]
  manifest: {maxBytes: 1000000, timeoutSeconds: 2.5}
  notification:
    recipients: [curator@example.org]
    bccAdmins: [admin@example.org]
    from: batchq@example.org
    replyTo: help@example.org
    suppress: false
    suppressedAddresses: [test@example.org]
"""

QUEUE = """\
apiVersion: batchq.dev/v1
kind: Queue
spec:
  paused: true
  maxActiveBatches: 2
  maxActiveJobs: 8
  maxDeletesPerSync: 0
  deletedRetentionSeconds: 3600
"""


def problems(text: str | bytes, path: str = "batches/maps-1.yaml") -> list[str]:
    return [str(p) for p in validate_text(text, path)[1]]


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_files_load_into_the_model() -> None:
    data, found = validate_text(BATCH, "batches/maps-1.yaml", "Batch")
    assert found == []
    assert data is not None
    spec = BatchSpec.from_dict(data["spec"])
    assert [i.id for i in spec.items or ()] == ["map-001", "map-002"]
    assert (spec.priority, spec.restarts) == (3, {"map-002": 1})

    data, found = validate_text(PROFILE, "profiles/demo.yaml", "Profile")
    assert found == []
    assert data is not None
    profile = Profile.from_dict("demo", data["spec"])
    assert profile.allows("file:payloads/x") and not profile.allows("http://evil.example/")

    data, found = validate_text(QUEUE.encode(), "queue.yaml", "Queue")
    assert found == []
    assert data is not None
    assert QueueSettings.from_dict(data["spec"]).max_active_jobs == 8


def test_minimal_files_are_valid() -> None:
    minimal_batch = (
        "apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: demo\n"
        "  depositor: {email: a@b.org}\n  manifest: {url: 'https://x.org/m.checkm'}\n"
    )
    assert problems(minimal_batch, "batches/b.yaml") == []
    assert problems("apiVersion: batchq.dev/v1\nkind: Profile\nspec: {}\n", "demo.yaml") == []
    assert problems("apiVersion: batchq.dev/v1\nkind: Queue\nspec: {}\n", "queue.yaml") == []


def test_schemas_are_valid_2020_12_and_every_pattern_has_words() -> None:
    patterns: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for kind in ("batch", "profile", "queue"):
        schema = load_schema(kind)
        Draft202012Validator.check_schema(schema)
        collect(schema)
        assert load_schema(kind.capitalize()) is schema  # cached
    assert patterns <= set(PATTERN_HINTS)


def test_malformed_yaml_reports_the_parser_mark() -> None:
    text = BATCH.replace("  priority: 3\n", "  priority: [3\n")
    assert problems(text) == [
        "batches/maps-1.yaml:9:11: invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence at line 8, column 13)"
    ]


def test_duplicate_key() -> None:
    text = BATCH.replace("  priority: 3\n", "  priority: 3\n  profile: other\n")
    assert problems(text) == ['batches/maps-1.yaml:9:3: duplicate key "profile" (first at line 6)']


def test_duplicate_item_ids_name_the_first() -> None:
    text = BATCH.replace("id: map-002", "id: map-001")
    assert problems(text) == [
        'batches/maps-1.yaml:17:13: spec.manifest.items[1].id: duplicate item id "map-001" '
        "(first at line 11)",
        'batches/maps-1.yaml:19:14: spec.restarts.map-002: no item "map-002" in the manifest',
    ]


def test_unknown_fields_at_the_keys_own_line() -> None:
    text = BATCH.replace("  priority: 3\n", "  priorty: 3\n").replace(
        "        size: 48213\n", "        size: 48213\n        sise: 1\n"
    )
    assert problems(text) == [
        'batches/maps-1.yaml:8:3: spec.priorty: unknown field "priorty" '
        "(allowed: profile, depositor, state, priority, manifest, restarts)",
        'batches/maps-1.yaml:15:9: spec.manifest.items[0].sise: unknown field "sise" '
        "(allowed: id, url, digest, size, title, files, container, primaryId, localIds, creator,"
        " date, metadata)",
    ]
    assert problems("apiVersion: batchq.dev/v1\nkind: Queue\nspec: {}\nstatus: {}\n") == [
        'batches/maps-1.yaml:4:1: status: unknown field "status" (allowed: apiVersion, kind, spec)'
    ]


def test_item_id_that_escapes_a_directory() -> None:
    text = BATCH.replace("id: map-002", "id: ../../etc").replace("{map-002: 1}", "{}")
    assert problems(text) == [
        'batches/maps-1.yaml:17:13: spec.manifest.items[1].id: "../../etc" is not a valid item '
        "id (letters, digits, '.', '_', '-'; up to 128; must start with a letter or digit)"
    ]
    for bad in ['"."', '".."', '"/"', '"map-002\\n"', "-x", "a" * 129]:
        text = BATCH.replace("id: map-002", f"id: {bad}").replace("{map-002: 1}", "{}")
        assert len(problems(text)) == 1, bad


def test_bad_email() -> None:
    text = BATCH.replace("jane@example.org", "jane.example.org")
    assert problems(text) == [
        'batches/maps-1.yaml:7:38: spec.depositor.email: "jane.example.org" is not a valid '
        "email address"
    ]


def test_manifest_with_both_or_neither() -> None:
    both = BATCH.replace("    items:\n", "    url: https://x.org/m\n    items:\n")
    expected = 'batches/maps-1.yaml:9:3: spec.manifest: must have exactly one of "items" or "url"'
    assert problems(both) == [expected]
    neither = BATCH.split("  manifest:")[0] + "  manifest: {}\n"
    assert problems(neither) == [expected]


def test_types_ranges_and_enums_in_plain_words() -> None:
    text = (
        BATCH.replace("priority: 3", "priority: 101")
        .replace("size: 48213", "size: -1")
        .replace('year: "1912"', "year: 1912")
        .replace("  restarts: {map-002: 1}", "  restarts: {map-002: lots}\n  state: Running")
    )
    assert problems(text) == [
        "batches/maps-1.yaml:8:13: spec.priority: must be at most 100, not 101",
        "batches/maps-1.yaml:14:15: spec.manifest.items[0].size: must be at least 0, not -1",
        "batches/maps-1.yaml:16:26: spec.manifest.items[0].metadata.year: must be text, "
        "not a whole number (1912); put it in quotes",
        "batches/maps-1.yaml:19:23: spec.restarts.map-002: must be a whole number, "
        'not text ("lots")',
        'batches/maps-1.yaml:20:10: spec.state: "Running" is not one of "Active", "Held", '
        '"UpdateReporting"',
    ]


def test_missing_required_fields() -> None:
    text = BATCH.replace(
        "  depositor: {name: Jane Doe, email: jane@example.org}\n", "  depositor:\n    name: J\n"
    ).replace("url: file:payloads/map-002.tif", "title: x")
    assert problems(text) == [
        'batches/maps-1.yaml:7:3: spec.depositor: missing required field "email"',
        'batches/maps-1.yaml:18:9: spec.manifest.items[1]: must have one of "url", "files" or'
            ' "container"',
    ]


def test_kind_missing_unknown_or_unexpected() -> None:
    assert problems("apiVersion: batchq.dev/v1\nspec: {}\n") == [
        'batches/maps-1.yaml:1:1: missing required field "kind" (Batch, Profile or Queue)'
    ]
    assert problems(BATCH.replace("kind: Batch", "kind: Batchh")) == [
        'batches/maps-1.yaml:2:7: kind: unknown kind "Batchh" (expected Batch, Profile or Queue)'
    ]
    _, found = validate_text(QUEUE, "batches/maps-1.yaml", "Batch")
    assert [str(p) for p in found] == [
        "batches/maps-1.yaml:2:7: kind: this file must be a Batch, not a Queue"
    ]
    assert problems("- a\n") == [
        "batches/maps-1.yaml:1:1: expected a mapping with apiVersion, kind and spec "
        "(a Batch, Profile or Queue), found a list"
    ]
    assert validate_text("", "x.yaml") == (
        None,
        [
            Problem(
                "x.yaml",
                1,
                1,
                "expected a mapping with apiVersion, kind and spec (a Batch, Profile or Queue), "
                "found an empty file",
            )
        ],
    )


def test_restarts_for_an_unknown_item() -> None:
    text = BATCH.replace("{map-002: 1}", "{map-002: 1, map-009: 2}")
    assert problems(text) == [
        'batches/maps-1.yaml:19:26: spec.restarts.map-009: no item "map-009" in the manifest'
    ]


def test_digest_length_must_match_the_algorithm() -> None:
    text = BATCH.replace("algorithm: md5", "algorithm: sha256")
    assert problems(text) == [
        "batches/maps-1.yaml:13:44: spec.manifest.items[0].digest.value: sha256 digests have "
        "64 hex digits, not 32"
    ]
    upper = BATCH.replace("0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF")
    assert problems(upper) == [
        'batches/maps-1.yaml:13:41: spec.manifest.items[0].digest.value: "0123456789ABCDEF'
        '0123456789ABCDEF" is not lowercase hexadecimal'
    ]


def test_name_defaults_to_a_valid_file_stem() -> None:
    unnamed = BATCH.replace("metadata:\n  name: maps-1\n", "")
    assert problems(unnamed, "batches/maps-2.yaml") == []
    assert batch_name("batches/maps-2.yaml", validate_text(unnamed, "x.yaml")[0] or {}) == (
        "maps-2"
    )
    assert batch_name("batches/file.yaml", {"metadata": {"name": "given"}}) == "given"
    assert problems(unnamed, "batches/Maps_2026.yaml") == [
        'batches/Maps_2026.yaml:1:1: the file name "Maps_2026" is not a valid batch name '
        "(a DNS-1123 label: lowercase letters, digits and '-', up to 63, starting and ending "
        "with a letter or digit); add metadata.name"
    ]
    assert problems(BATCH, "batches/Maps_2026.yaml") == []
    assert problems(BATCH.replace("name: maps-1", "name: Maps_1")) == [
        'batches/maps-1.yaml:4:9: metadata.name: "Maps_1" is not a valid name (a DNS-1123 '
        "label: lowercase letters, digits and '-', up to 63, starting and ending with a "
        "letter or digit)"
    ]


def test_profile_name_must_match_its_file() -> None:
    named = PROFILE.replace("kind: Profile\n", "kind: Profile\nmetadata: {name: other}\n")
    assert problems(named, "profiles/demo.yaml") == [
        'profiles/demo.yaml:3:18: metadata.name: "other" differs from the file name "demo"; '
        "batches find a profile by its file name (profiles/other.yaml)"
    ]


def test_hostile_input_becomes_a_problem() -> None:
    assert problems(b"kind: Batch\nspec: {profile: d\xe9mo}\n") == [
        "batches/maps-1.yaml:2:18: not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    ]
    assert problems(BATCH + "---\n" + BATCH) == [
        "batches/maps-1.yaml:20:1: a second YAML document starts here; a file holds exactly one"
    ]
    bomb = 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n' + "".join(
        f"l{i}: &l{i} [{', '.join(['*' + ('a' if i == 0 else f'l{i - 1}')] * 10)}]\n"
        for i in range(9)
    )
    started = time.perf_counter()
    assert problems(bomb) == [
        "batches/maps-1.yaml:6:5: document expands to more than 200000 nodes "
        "(an alias counts as a copy of what it refers to)"
    ]
    assert time.perf_counter() - started < 0.2


# --- whole repositories, as `batchq validate PATH...` sees them -----------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path, "profiles/demo.yaml", PROFILE)
    write(tmp_path, "queue.yaml", QUEUE)
    write(tmp_path, "batches/maps-1.yaml", BATCH)
    return tmp_path


def test_valid_repository_exits_0_and_prints_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate_main([str(repo)]) == 0
    assert validate_main([str(repo / "batches" / "maps-1.yaml")]) == 0
    assert capsys.readouterr().out == ""


def test_invalid_repository_exits_1_with_one_line_per_problem(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(repo, "batches/bad.yaml", BATCH.replace("maps-1", "bad").replace("md5", "crc32"))
    assert validate_main([str(repo)]) == 1
    assert capsys.readouterr().out == (
        f'{repo}/batches/bad.yaml:13:29: spec.manifest.items[0].digest.algorithm: "crc32" is '
        'not one of "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", '
        '"sha3_256", "sha3_384", "sha3_512"\n'
    )


def test_missing_profile_file(repo: Path) -> None:
    write(repo, "batches/other.yaml", BATCH.replace("maps-1", "other").replace("demo", "nope"))
    assert [str(p) for p in validate_repo_paths([str(repo / "batches")])] == [
        f'{repo}/batches/other.yaml:6:12: spec.profile: profile "nope" not found '
        "(expected profiles/nope.yaml); add the profile or fix spec.profile"
    ]


def test_profile_found_beside_a_file_outside_batches(tmp_path: Path) -> None:
    write(tmp_path, "profiles/demo.yaml", PROFILE)
    loose = write(tmp_path, "drafts/maps-1.yaml", BATCH)
    assert validate_repo_paths([str(loose)]) == []
    lonely = write(tmp_path / "elsewhere", "maps-1.yaml", BATCH)
    assert validate_repo_paths([str(lonely)]) == []  # tmp_path/profiles is above it
    isolated = write(tmp_path / "elsewhere", "batches/maps-1.yaml", BATCH)
    assert [str(p) for p in validate_repo_paths([str(isolated)])] == [
        f'{isolated}:6:12: spec.profile: profile "demo" not found (expected'
        " profiles/demo.yaml); add the profile or fix spec.profile"
    ]


def test_two_files_claiming_one_name(repo: Path) -> None:
    # maps-1 by its stem, and maps-1 by metadata.name: both are reported.
    write(repo, "batches/maps-1-copy.yaml", BATCH)
    write(repo, "batches/unnamed.yaml", BATCH.replace("metadata:\n  name: maps-1\n", ""))
    write(repo, "batches/unnamed-too.yaml", BATCH.replace("name: maps-1", "name: unnamed"))
    found = [str(p) for p in validate_repo_paths([str(repo)])]
    b = f"{repo}/batches"
    assert found == [
        f'{b}/maps-1-copy.yaml:4:9: batch name "maps-1" is also used by {b}/maps-1.yaml',
        f'{b}/maps-1.yaml:4:9: batch name "maps-1" is also used by {b}/maps-1-copy.yaml',
        f'{b}/unnamed-too.yaml:4:9: batch name "unnamed" is also used by {b}/unnamed.yaml',
        f'{b}/unnamed.yaml:1:1: batch name "unnamed" is also used by {b}/unnamed-too.yaml',
    ]


def test_location_decides_the_expected_kind(repo: Path) -> None:
    write(repo, "profiles/queue-like.yaml", QUEUE)
    assert [str(p) for p in validate_repo_paths([str(repo)])] == [
        f"{repo}/profiles/queue-like.yaml:2:7: kind: this file must be a Profile, not a Queue"
    ]


def test_unreadable_paths_and_oversized_files(repo: Path) -> None:
    big = repo / "batches" / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB that take no disk or memory
    (repo / "batches" / "dangling.yaml").symlink_to(repo / "gone.yaml")
    os.mkfifo(repo / "batches" / "pipe.yaml")  # opening it would block: must be skipped
    started = time.perf_counter()
    found = validate_repo_paths([str(repo / "batches"), str(repo / "missing.yaml")])
    assert time.perf_counter() - started < 0.5
    assert [str(p) for p in found] == [
        f"{big}:1:1: file is 104857600 bytes; the limit is 1048576 bytes",
        f"{repo}/batches/dangling.yaml:1:1: no such file or directory",
        f"{repo}/batches/pipe.yaml:1:1: not a regular file or directory",
        f"{repo}/missing.yaml:1:1: no such file or directory",
    ]


def test_json_files_are_validated_too(repo: Path) -> None:
    as_json = {"apiVersion": "batchq.dev/v1", "kind": "Profile", "spec": {"bogus": 1}}
    (repo / "profiles" / "extra.json").write_text(json.dumps(as_json, indent=2))
    assert [str(p) for p in validate_repo_paths([str(repo)])] == [
        f'{repo}/profiles/extra.json:5:5: spec.bogus: unknown field "bogus" (allowed: job, '
        "storage, allowedUrlPrefixes, manifest, notification)"
    ]


def test_the_example_repository_is_valid() -> None:
    assert validate_repo_paths([str(REPO_ROOT / "manifests")]) == []


def test_batch_urls_get_the_reconcilers_check_at_their_line(repo: Path) -> None:
    hostile = (BATCH.replace("maps-1", "hostile")
               .replace("https://repo.example.org/maps/map-001.tif",
                        "https://repo.example.org.evil/maps/x.tif")
               .replace("file:payloads/map-002.tif", "file:///etc/passwd"))
    write(repo, "batches/hostile.yaml", hostile)
    found = [str(p) for p in validate_repo_paths([str(repo / "batches")])]
    assert found == [
        f"{repo}/batches/hostile.yaml:12:14: spec.manifest.items[0].url: URL"
        " https://repo.example.org.evil/maps/x.tif is not allowed by profile \"demo\""
        " (allowed prefixes: https://repo.example.org/, file:)",
        f"{repo}/batches/hostile.yaml:18:14: spec.manifest.items[1].url: URL"
        " file:///etc/passwd is refused: it names a file on the host, outside the repository"
        " (only an operator can allow a host directory, with --allow-file-root)",
    ]
    # the operator's root counts as it does for `batchq reconcile --allow-file-root`
    assert [str(p) for p in validate_repo_paths([str(repo / "batches")],
                                                file_roots=["/etc"])] == found[:1]


def test_profile_prefixes_and_storage_path_are_checked() -> None:
    text = (PROFILE.replace("storage: {path: maps/storage}", "storage: {path: ../outside}")
            .replace('["https://repo.example.org/", "file:"]',
                     '["https://u:pw@repo.example.org/", "https://repo.example.org/a/../b",'
                     ' "https://repo.example.org/?q"]'))
    assert problems(text, "profiles/demo.yaml") == [
        "profiles/demo.yaml:12:19: spec.storage.path: \"../outside\" must stay inside the"
        " storage root: remove the '..' segments",
        'profiles/demo.yaml:13:24: spec.allowedUrlPrefixes[0]: "https://***@repo.example.org/"'
        " is not a usable prefix: a prefix cannot carry userinfo (credentials)",
        'profiles/demo.yaml:13:58: spec.allowedUrlPrefixes[1]: "https://repo.example.org/a/../b"'
        ' is not a usable prefix: it contains the dot segment ".."',
        'profiles/demo.yaml:13:93: spec.allowedUrlPrefixes[2]: "https://repo.example.org/?q"'
        " is not a usable prefix: a prefix has no query or fragment",
    ]


OBJECTS = """\
apiVersion: batchq.dev/v1
kind: Batch
metadata:
  name: maps-1
spec:
  profile: demo
  depositor: {name: Jane Doe, email: jane@example.org}
  manifest:
    items:
      - id: atlas
        primaryId: ark:/13030/m5atlas
        localIds: [atlas-1, shelf-9]
        creator: Jane Doe
        files:
          - {name: pages/p1.tif, url: https://repo.example.org/a/p1.tif, mime: image/tiff}
          - name: ../p2.tif
            url: https://repo.example.org/a/p2.tif
          - {name: pages/p1.tif, url: https://repo.example.org/a/p3.tif}
      - id: box
        container: {url: https://repo.example.org/a/box.zip, format: zip}
        digest: {algorithm: md5, value: 0123456789abcdef0123456789abcdef}
      - id: short
        files: [{name: a, url: https://repo.example.org/a/a, digest: {algorithm: sha256,
                                                                       value: abc}}]
      - id: both
        url: https://repo.example.org/a/x.tif
        files: [{name: x.tif, url: https://repo.example.org/a/x.tif}]
"""


def test_an_inline_objects_file_names_and_shape_are_checked_at_their_lines() -> None:
    assert problems(OBJECTS) == [
        "batches/maps-1.yaml:16:19: spec.manifest.items[0].files[1].name: file name"
        " '../p2.tif' has an empty, '.' or '..' path segment; a name stays inside its object",
        "batches/maps-1.yaml:18:20: spec.manifest.items[0].files[2].name: file name"
        " 'pages/p1.tif' is already used by files[0]; names are unique within an object",
        "batches/maps-1.yaml:21:17: spec.manifest.items[1].digest: digest belongs to each file"
        " (files[n].digest) or to the container (container.digest)",
        "batches/maps-1.yaml:24:79: spec.manifest.items[2].files[0].digest.value: sha256"
        " digests have 64 hex digits, not 3",
        "batches/maps-1.yaml:27:16: spec.manifest.items[3].files: give only one of url (an"
        " object of one file), files or container, not url and files",
    ]
    spec = BatchSpec.from_dict(yaml.safe_load(OBJECTS)["spec"])
    assert spec.items is not None
    atlas = spec.items[0]
    assert (atlas.primary_id, atlas.local_ids, atlas.creator) == (
        "ark:/13030/m5atlas", ("atlas-1", "shelf-9"), "Jane Doe")
    assert [f.name for f in atlas.object_files()] == ["pages/p1.tif", "../p2.tif", "pages/p1.tif"]
    assert atlas.files[0].mime == "image/tiff" and atlas.url == atlas.files[0].url
    assert spec.items[1].container is not None and spec.items[1].file_count() is None
    assert spec.items[2].files[0].digest == ("sha256", "abc")  # refused above, at its line
    # what admission checks of each item, read without the files' default names
    single = Item("scan-1", "https://repo.example.org/a/scan%201.tif")
    for item in [*spec.items, single]:
        named = [f.url for f in item.object_files()]
        assert item.file_urls() == named + ([item.container.url] if item.container else [])
        assert item.file_count() == (None if item.container and not item.files else len(named))
    assert single.file_urls() == [single.url] and single.file_count() == 1
