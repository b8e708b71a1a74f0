"""The quick "certainly valid" (`reconciler.spec.fastcheck`) never passes what jsonschema
refuses: a batch file, a queue file or a manifest item it passes skips jsonschema, so one
wrong yes would let a bad file in with no message at all.

Each valid document (the repository's own examples, and a batch with every optional field
set) is mutated at every node — removed, replaced by values of every JSON type and by
values at and past the schema's bounds, given an unknown key — and for every variant the
quick check's yes must agree with jsonschema finding nothing. The valid documents
themselves must get the quick yes, or the fast path would never be taken.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.spec.fastcheck import compile_schema
from reconciler.spec.validation import _validator, item_validator, load_schema, validate_text

ROOT = Path(__file__).resolve().parent.parent
DIGEST = {"algorithm": "sha256", "value": "ab" * 32}
FULL_ITEM: dict[str, Any] = {
    "id": "obj-1", "url": "https://example.org/a", "digest": DIGEST, "size": 3,
    "title": "A", "primaryId": "ark:/1/2", "localIds": ["x"], "creator": "C", "date": "2026",
    "metadata": {"k": "v"},
    "files": [{"name": "a.txt", "url": "file:payloads/a", "digest": DIGEST, "size": 0,
               "mime": "text/plain"}],
    "container": {"url": "https://example.org/c.zip", "format": "zip", "digest": DIGEST,
                  "size": 1},
}
FULL_BATCH: dict[str, Any] = {
    "apiVersion": "batchq.dev/v1", "kind": "Batch", "metadata": {"name": "full"},
    "spec": {"profile": "demo", "depositor": {"name": "D", "email": "d@example.org"},
             "state": "Held", "priority": 100, "manifest": {"items": [FULL_ITEM]},
             "restarts": {}},
}
PROBES: list[Any] = [
    None, True, False, 0, -1, 1.5, 1.0, 100, 101, 100000, "", "x", "x" * 300, "x" * 9000,
    "Bad Value!", "a\n", "file:a b", "HTTPS://x", [], [{}], ["x"] * 21, {}, {"unknown": 1},
    {"algorithm": "sha256"}, {"items": []}, {"url": "file:x"},
    {"items": [FULL_ITEM], "url": "file:x"},
]


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*at, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _paths(value, (*at, n))


def _variants(doc: Any) -> Iterator[Any]:
    """Every one-node change of `doc`."""
    for path in _paths(doc):
        if not path:
            yield from PROBES
            continue
        parent_path, last = path[:-1], path[-1]
        for probe in [*PROBES, "__delete__"]:
            variant = copy.deepcopy(doc)
            parent = variant
            for step in parent_path:
                parent = parent[step]
            if probe == "__delete__":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(probe)
            yield variant
        node = doc
        for step in path:
            node = node[step]
        if isinstance(node, dict):
            variant = copy.deepcopy(doc)
            target = variant
            for step in path:
                target = target[step]
            target["surplus"] = 1
            yield variant


def _agree(schema: dict[str, Any], validator: Any, docs: list[Any]) -> tuple[int, int]:
    """(variants checked, quick yeses); fails on a quick yes that jsonschema refuses."""
    fast = compile_schema(schema)
    assert fast is not None, "the schema uses a keyword the quick check does not know"
    checked = yeses = 0
    for doc in docs:
        assert fast(doc), f"a valid document does not get the quick yes: {doc}"
        assert not list(validator.iter_errors(doc))
        for variant in _variants(doc):
            checked += 1
            if fast(variant):
                yeses += 1
                errors = [e.message for e in validator.iter_errors(variant)]
                assert not errors, f"quick yes for an invalid document: {errors}: {variant}"
    return checked, yeses


def _examples(pattern: str) -> list[Any]:
    return [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "manifests").glob(pattern))]


def test_a_batch_passed_quickly_is_one_jsonschema_accepts() -> None:
    docs = [FULL_BATCH, *_examples("batches/*.yaml")]
    checked, yeses = _agree(load_schema("Batch"), _validator("Batch"), docs)
    assert checked > 2000
    assert yeses > 100  # valid variants (a value swapped for a good one) pass quickly too


def test_a_manifest_item_passed_quickly_is_one_jsonschema_accepts() -> None:
    validator = item_validator()
    checked, yeses = _agree(validator.schema, validator, [FULL_ITEM])
    assert checked > 800 and yeses > 50


def test_a_queue_passed_quickly_is_one_jsonschema_accepts() -> None:
    checked, _ = _agree(load_schema("Queue"), _validator("Queue"), _examples("queue.yaml"))
    assert checked > 50


@pytest.mark.parametrize("schema", [
    {"type": "integer"}, {"enum": [1]}, {"enum": [True]}, {"minimum": 0},
    {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
    {"required": ["a"]}, {"additionalProperties": False, "properties": {"a": {}}},
])
def test_each_keyword_answers_as_jsonschema_or_asks_it(schema: dict[str, Any]) -> None:
    """Bools are not numbers, 1.0 is an integer to JSON Schema (asked, not passed), and
    `required` and friends say nothing of a value that is not an object."""
    from jsonschema import Draft202012Validator
    fast = compile_schema(schema)
    assert fast is not None
    for value in [True, False, 1, 1.0, -1, 0, "a", [], {}, {"a": 1}, {"b": 1},
                  {"a": 1, "b": 2}, None]:
        valid = Draft202012Validator(schema).is_valid(value)
        assert not fast(value) or valid, (schema, value)


def test_a_keyword_not_known_leaves_everything_to_jsonschema() -> None:
    assert compile_schema({"type": "object", "patternProperties": {"^a": {}}}) is None
    assert compile_schema({"oneOf": [{"type": "string"}, {"minLength": 1}]}) is None


def test_the_messages_of_a_bad_file_are_still_jsonschema_s() -> None:
    """A file the quick check refuses gets jsonschema's findings, at their lines."""
    bad = copy.deepcopy(FULL_BATCH)
    bad["spec"]["priority"] = 101
    bad["spec"]["manifest"]["items"][0]["digest"]["algorithm"] = "crc32"
    _, problems = validate_text(yaml.safe_dump(bad, sort_keys=False), "batches/full.yaml")
    text = "\n".join(str(p) for p in problems)
    assert "spec.priority: must be at most 100, not 101" in text
    assert 'spec.manifest.items[0].digest.algorithm: "crc32" is not one of' in text
    assert all(str(p).startswith("batches/full.yaml:") for p in problems)
