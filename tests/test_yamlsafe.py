"""The safe loader: plain data with positions, and hostile or sloppy input refused with
the exact place to look."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.spec import yamlsafe
from reconciler.spec.yamlsafe import DocumentError, load_document, read_document

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network

BOMB = "".join(
    [
        'lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n',
        *(
            f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n"
            for i in range(1, 10)  # 9 levels of ten: 10**9 strings when expanded
        ),
    ]
)


@pytest.fixture(params=["c", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with libyaml and with the pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(yamlsafe, "_LOADER", yaml.SafeLoader)
    else:
        assert yamlsafe._LOADER is yaml.CSafeLoader
    yield request.param


def error_of(text: str | bytes, **limits: int) -> str:
    with pytest.raises(DocumentError) as info:
        load_document(text, "f.yaml", **limits)
    return str(info.value)


def test_plain_data_with_positions(loader: str) -> None:
    text = (
        "a: 1\n"
        "b:\n"
        "  c: [1, 2, {x: y}]\n"
        "  d: yes\n"
        "  e: 0x1f\n"
        "  f: 2026-01-01\n"
        "  g: ~\n"
        "  h: 1_000\n"
        "  i: 1.5\n"
        "  j: '007'\n"
    )
    doc = load_document(text, "f.yaml")
    assert doc.data == {
        "a": 1,
        "b": {
            "c": [1, 2, {"x": "y"}],
            "d": True,
            "e": 31,
            "f": "2026-01-01",  # timestamps stay text: the data is JSON-like
            "g": None,
            "h": 1000,
            "i": 1.5,
            "j": "007",
        },
    }
    assert doc.position(("b", "c", 2, "x")) == (3, 17)
    assert doc.position(("b", "c")) == (3, 6)
    assert doc.key_position(("b", "c")) == (3, 3)
    assert doc.position(("b",)) == (3, 3)  # a block mapping starts at its first key
    assert doc.key_position(("b",)) == (2, 1)
    # Missing nodes fall back to the nearest existing parent.
    assert doc.position(("b", "nope", 3)) == (3, 3)
    assert doc.position(("b", "c", 9)) == (3, 6)
    assert doc.position(("a", "x")) == (1, 4)
    assert doc.position(()) == (1, 1)


def test_same_values_as_safe_loader(loader: str) -> None:
    text = (
        "base: &b {x: 1, y: 2}\n"
        "other: &o {y: 5, z: 6}\n"
        "merged:\n"
        "  <<: [*b, *o]\n"
        "  x: 3\n"
        "nums: [0o17, 017, 1:30, -.inf, +12, 0b101, 1e3]\n"
        "bools: [on, Off, TRUE, no]\n"
        "text: [=, '', null, ~, 'null']\n"
    )
    doc = load_document(text, "f.yaml")
    expected = yaml.load(text.replace("=,", "'=',"), Loader=yaml.SafeLoader)
    assert doc.data == expected
    assert doc.data["merged"] == {"x": 3, "y": 2, "z": 6}
    assert doc.position(("merged", "z")) == (2, 21)  # merged values point at their source


def test_empty_document_is_none() -> None:
    assert load_document("", "f.yaml").data is None
    assert load_document("# just a comment\n", "f.yaml").position(("a",)) == (1, 1)


def test_json_with_tabs_loads() -> None:
    doc = load_document('{\n\t"a": 1,\n\t"b": [1,\n\t2]\n}\n', "f.json")
    assert doc.data == {"a": 1, "b": [1, 2]}
    assert doc.position(("b", 1)) == (4, 2)


def test_syntax_error_at_the_mark_pyyaml_reports() -> None:
    assert error_of("a: 1\nb: [1, 2\nc: 3\n") == (
        "f.yaml:3:2: invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence at line 2, column 4)"
    )
    assert error_of("a: 1\n b: 2\n") == (
        "f.yaml:2:3: invalid YAML: mapping values are not allowed in this context"
    )
    assert error_of("a: *nowhere\n") == "f.yaml:1:4: invalid YAML: found undefined alias"


def test_duplicate_key_is_refused_at_the_duplicate(loader: str) -> None:
    text = "spec:\n  profile: a\n  depositor: {email: x@y.org}\n  profile: b\n"
    assert error_of(text) == 'f.yaml:4:3: duplicate key "profile" (first at line 2)'
    assert error_of("{a: 1, a: 2}") == 'f.yaml:1:8: duplicate key "a" (first at line 1)'


def test_more_than_one_document_is_refused(loader: str) -> None:
    text = "a: 1\n---\nb: 2\n"
    assert error_of(text) == (
        "f.yaml:2:1: a second YAML document starts here; a file holds exactly one"
    )


def test_non_string_keys_are_refused(loader: str) -> None:
    assert error_of("on: push\n") == (
        'f.yaml:1:1: key on is read as a boolean; quote it ("on") to use it as a field name'
    )
    assert error_of("a:\n  1: x\n") == (
        'f.yaml:2:3: key 1 is read as a number; quote it ("1") to use it as a field name'
    )
    assert error_of("~: x\n") == (
        'f.yaml:1:1: key ~ is read as null; quote it ("~") to use it as a field name'
    )
    assert error_of("? [a, b]\n: x\n") == "f.yaml:1:3: a mapping key must be text, not a list"


def test_unsafe_and_unknown_tags_are_refused(loader: str) -> None:
    assert error_of("a: !!python/object/apply:os.system [ls]\n") == (
        "f.yaml:1:4: unsupported YAML tag !!python/object/apply:os.system"
    )
    assert error_of("a: !custom x\n") == "f.yaml:1:4: unsupported YAML tag !custom"
    assert error_of("a: !!int abc\n") == "f.yaml:1:4: cannot read 'abc' as !!int"
    assert error_of("a: !!binary aGVsbG8=\n") == "f.yaml:1:4: unsupported YAML tag !!binary"


def test_billion_laughs_fails_fast(loader: str) -> None:
    started = time.perf_counter()
    message = error_of(BOMB)
    assert time.perf_counter() - started < 0.2
    # lol5 alone expands to 1,111,111 nodes: the first anchor over the 200,000 budget.
    assert message == (
        "f.yaml:6:7: document expands to more than 200000 nodes "
        "(an alias counts as a copy of what it refers to)"
    )


def test_aliases_within_budget_expand(loader: str) -> None:
    doc = load_document("a: &a [1, 2]\nb: [*a, *a]\n", "f.yaml")
    assert doc.data == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    # 12 nodes as written (the event pass allows them), 13 in b alone once expanded.
    assert error_of("a: &a [1, 2, 3]\nb: [*a, *a, *a]\n", max_nodes=12) == (
        "f.yaml:2:4: document expands to more than 12 nodes "
        "(an alias counts as a copy of what it refers to)"
    )


def test_recursive_alias_is_refused(loader: str) -> None:
    assert error_of("a: &a {b: [1, {c: *a}]}\n") == (
        "f.yaml:1:4: an alias refers to a node that contains it (a cycle)"
    )


def test_deep_nesting_is_refused_before_composing(loader: str) -> None:
    # 100,000 levels would overflow the C composer's stack and kill the process. Since
    # PyYAML 6.0.4 libyaml refuses 1,000 levels itself while scanning ahead; our own bound
    # and message win whichever libyaml is installed (yamlsafe._preflight).
    text = "[" * 100_000 + "]" * 100_000
    assert error_of(text) == "f.yaml:1:101: nested more than 100 levels deep"
    assert error_of("[" * 1001) == "f.yaml:1:101: nested more than 100 levels deep"
    chain = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    assert error_of(chain) == "f.yaml:100:6: nested more than 100 levels deep"


def test_too_many_nodes_are_refused_before_composing(loader: str) -> None:
    text = "[" + "1," * 300 + "1]"
    assert error_of(text, max_nodes=100) == "f.yaml:1:200: more than 100 YAML nodes"


def test_oversized_input_is_refused_before_parsing() -> None:
    # Not YAML at all: the size alone decides.
    assert error_of(b"\xff[" * 600_000) == (
        "f.yaml:1:1: file is 1200000 bytes; the limit is 1048576 bytes"
    )
    assert error_of("é" * 6, max_bytes=10) == "f.yaml:1:1: file is 12 bytes; the limit is 10 bytes"


def test_sparse_100_mb_file_is_refused_by_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(DocumentError) as info:
        read_document(big, "batches/big.yaml")
    assert time.perf_counter() - started < 0.1
    assert str(info.value) == (
        "batches/big.yaml:1:1: file is 104857600 bytes; the limit is 1048576 bytes"
    )


def test_non_utf8_is_refused_at_the_byte() -> None:
    data = b"apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: d\xe9mo\n"
    assert error_of(data) == "f.yaml:4:13: not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    assert error_of("a: é\nb: x\xff".encode("latin-1")) == (
        "f.yaml:1:4: not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    )


def test_utf8_with_bom_and_control_characters() -> None:
    assert load_document("\ufeffa: é\n".encode(), "f.yaml").data == {"a": "é"}
    assert error_of("a: 1\nb: x\x00y\n") == ("f.yaml:2:5: character U+0000 is not allowed in YAML")


def test_read_document_loads_a_file(tmp_path: Path) -> None:
    file = tmp_path / "q.yaml"
    file.write_text("kind: Queue\n", encoding="utf-8")
    doc = read_document(file)
    assert (doc.path, doc.data) == (str(file), {"kind": "Queue"})


# --- the short-text shortcut: no event walk, and no measure without an anchor
PIECES = ["- ", "-\n", "? ", "?\n", ": ", "[", "]", "{", "}", ", ", "a", "b: ", "1", "&x ",
          "*x", "<<: ", "--- ", "...\n", "\n", "  ", "'q'", '"é"', "!!str ", "!!map ", "#c\n",
          "x:\n  ", "- - ", "[[", "]]", "{a: ", "k: v\n"]


def fuzz_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    deep_mapping = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 97)) + "  " * 97
    texts = ["- " * 97 + "x", "[" * 98 + "]" * 98, deep_mapping + "v", "?\n" * 40, "-\n" * 60,
             "{?, ?, ?}", "? " * 40 + "x", "? " * 11 + "x", "---\na: 1\n---\nb: 2\n",
             "a: *nowhere\n", "a: &x [1]\nb: *x\n", "a: &x\n  b: *x\n", BOMB]
    for _ in range(count):
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 40))))
        texts.append(yaml.safe_dump(random_data(rng), default_flow_style=rng.choice(
            [True, False, None]), indent=rng.choice([2, 4]), width=rng.choice([20, 80])))
    return texts


def random_data(rng: random.Random, depth: int = 0) -> object:
    """Nested lists and mappings, null-heavy, as YAML that parses."""
    kind = rng.randrange(3 if depth < 30 else 1)
    if kind == 0:
        return rng.choice([None, "", "a", 1, 1.5, True, "x: y", "- z", "[w]"])
    if kind == 1:
        return [random_data(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": random_data(rng, depth + 1) for i in range(rng.randrange(4))}


def outcome(text: str, **limits: int) -> object:
    try:
        doc = load_document(text, "f.yaml", **limits)
    except DocumentError as exc:
        return ("error", str(exc))
    return ("value", repr(doc.data), repr(doc._root))


@pytest.mark.parametrize("limits", [{}, {"max_depth": 12, "max_nodes": 400}])
def test_a_short_text_loads_as_it_did_with_the_walk_and_the_measure(
        limits: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut changes no outcome: each text gives the value or the very error it
    gives when the event walk and the measure always run."""
    texts = fuzz_texts(1_500, seed=1)
    fast = [outcome(t, **limits) for t in texts]
    shortcut_taken = sum(yamlsafe.within_bounds_by_its_text(
        t, limits.get("max_nodes", yamlsafe.DEFAULT_MAX_NODES),
        limits.get("max_depth", yamlsafe.DEFAULT_MAX_DEPTH)) for t in texts)
    assert shortcut_taken > 1_500
    monkeypatch.setattr(yamlsafe, "within_bounds_by_its_text", lambda *_: False)
    assert [outcome(t, **limits) for t in texts] == fast


def test_the_text_bounds_what_the_walk_counts() -> None:
    """The shortcut's premise, on texts that parse: the nodes are at most 4 a character
    (plus 16), and the nesting at most the count of `[{-:?` in the text."""
    checked = 0
    for text in fuzz_texts(1_500, seed=2):
        nodes = depth = deepest = 0
        try:
            for event in yaml.parse(text, Loader=yaml.CSafeLoader):
                if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                    nodes += 1
                elif isinstance(event, yaml.CollectionStartEvent):
                    nodes += 1
                    depth += 1
                    deepest = max(deepest, depth)
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
        except yaml.YAMLError:
            continue
        checked += 1
        assert nodes <= 4 * len(text) + 16, text
        assert deepest <= yamlsafe.nesting_bound(text), text
    assert checked > 1_500
