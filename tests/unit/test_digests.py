"""One table of digest lengths (`reconciler.domain.model.DIGEST_HEX_DIGITS`), and every
reader of digests agrees with it: a batch file, a checkm manifest, a YAML/JSON manifest and
the worker's environment accept exactly the same values and refuse the same ones."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

import pytest

from reconciler.domain.model import DIGEST_HEX_DIGITS, is_hex_digest
from reconciler.manifests.checkm import ManifestError, parse_checkm
from reconciler.manifests.resolve import check_items
from reconciler.spec.validation import validate_text
from reconciler.worker.program import WorkerError, config_from_env

ALGORITHMS = sorted(DIGEST_HEX_DIGITS)
CHECKM = ("#%checkm_0.7\n"
          "#%profile | http://uc3.cdlib.org/registry/ingest/manifest/"
          "mrt-single-file-batch-manifest\n"
          "#%fields | nfo:fileUrl | nfo:hashAlgorithm | nfo:hashValue\n"
          "http://h/a | {algorithm} | {value}\n")


def batch_file(algorithm: str, value: str) -> str:
    return ("apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: p\n"
            "  depositor: {name: D, email: d@example.org}\n  manifest:\n    items:\n"
            f"      - {{id: a, url: 'http://h/a', digest: {{algorithm: {algorithm},"
            f" value: '{value}'}}}}\n")


def accepted_by_each_reader(algorithm: str, value: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    _, problems = validate_text(batch_file(algorithm, value), "batches/b.yaml", "Batch")
    out["batch file"] = not problems
    try:
        check_items([{"id": "a", "url": "http://h/a",
                      "digest": {"algorithm": algorithm, "value": value}}], "m.yaml")
        out["list manifest"] = True
    except ManifestError:
        out["list manifest"] = False
    try:
        parse_checkm(CHECKM.format(algorithm=algorithm, value=value), "m.checkm")
        out["checkm manifest"] = True
    except ManifestError:
        out["checkm manifest"] = False
    try:
        config_from_env({"BATCHQ_BATCH": "b", "BATCHQ_ITEM_ID": "a",
                         "BATCHQ_ITEM_URL": "http://h/a", "BATCHQ_STORAGE": "/s",
                         "BATCHQ_DIGEST_ALGORITHM": algorithm, "BATCHQ_DIGEST_VALUE": value})
        out["worker"] = True
    except WorkerError:
        out["worker"] = False
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_reader_takes_a_digest_of_the_tables_length(algorithm: str) -> None:
    good = "0f" * (DIGEST_HEX_DIGITS[algorithm] // 2)
    assert is_hex_digest(algorithm, good)
    assert set(accepted_by_each_reader(algorithm, good).values()) == {True}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("change", ["one digit short", "one digit long", "not hex"])
def test_every_reader_refuses_what_the_table_refuses(algorithm: str, change: str) -> None:
    digits = DIGEST_HEX_DIGITS[algorithm]
    value = {"one digit short": "a" * (digits - 1), "one digit long": "a" * (digits + 1),
             "not hex": "g" * digits}[change]
    assert not is_hex_digest(algorithm, value)
    assert set(accepted_by_each_reader(algorithm, value).values()) == {False}


def test_unknown_algorithms_and_uppercase() -> None:
    assert not is_hex_digest("crc32", "a" * 8)  # Merritt lists it; hashlib cannot compute it
    assert not is_hex_digest("sha256", "A" * 64)  # readers lowercase first where allowed
    assert not is_hex_digest("sha256", "a" * 63 + "\n")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_worker_computes_every_algorithm_the_table_accepts(algorithm: str) -> None:
    # The worker hashes with hashlib.new(name): a name it cannot compute, or a length that
    # differs from the table, would fail every job of a manifest that batchq accepted.
    assert len(hashlib.new(algorithm, b"x").hexdigest()) == DIGEST_HEX_DIGITS[algorithm]


def test_the_schema_lists_exactly_the_tables_algorithms() -> None:
    schema = json.loads((files("reconciler.spec") / "schemas" / "batch.schema.json")
                        .read_text(encoding="utf-8"))
    items = schema["properties"]["spec"]["properties"]["manifest"]["properties"]["items"]
    digest = items["items"]["properties"]["digest"]["properties"]
    assert digest["algorithm"]["enum"] == list(DIGEST_HEX_DIGITS)
    assert digest["value"]["maxLength"] == max(DIGEST_HEX_DIGITS.values())
