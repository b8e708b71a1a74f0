"""orjson's text is the standard `json` text, byte for byte, and reads back the same.

A status, job spec or item stored by an older batchq (written by `json`) must compare
equal to the same value written now: the store skips a write that changes nothing and
guards a write on the text it read. So `canonical_json` must give exactly `json`'s text for
any value, and `parse_json` exactly `json.loads`'s value for any text.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import random
import struct
import uuid
from enum import StrEnum
from typing import Any

import pytest

from reconciler.domain.model import BatchStatus, Condition
from reconciler.domain.states import BatchState
from reconciler.store.codec import status_json, status_to_dict
from reconciler.support import jsontext
from reconciler.support.jsontext import canonical_json, is_plain_float, parse_json

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network


def standard(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class Colour(StrEnum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


EDGE_FLOATS = [0.0, -0.0, 1.0, 0.5, 1e-4, 0.0001234, 9.99e-5, 1e-5, 5.7e-6, 1e-7, 5e-324,
               1e15, 9999999999999998.0, 1e16, 1.2345678901234568e17, 1e22, 1e308,
               1_764_500_000.123456, -1_764_500_000.5, 2.0 ** 53, -1e-300]
EDGE_INTS = [0, -1, 2 ** 53, 2 ** 63 - 1, 2 ** 63, -2 ** 63, -2 ** 63 - 1, 2 ** 64 - 1,
             2 ** 64, 10 ** 30, -10 ** 30]
EDGE_TEXTS = ["", "plain", "é", "日本", "\x7f", "\x00\x1f\x08\x0c\n\r\t", "\"\\/",
              "</script>&'", "\ud800", "🙂", "3e4f", "a:1e5", ",0.00001", "null", "NaN",
              "deadbeef" * 5, "1234567890123456789012"]
ODD_VALUES: list[Any] = [Colour.RED, Point(1), datetime.datetime(2026, 11, 30, 12, 0),
                         datetime.date(2026, 11, 30), uuid.UUID(int=7), {1, 2}, b"bytes",
                         (1, "t"), math.nan, math.inf, -math.inf, None, True, False]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([*EDGE_FLOATS, rng.uniform(-1000000.0, 1000000.0)])
    if kind == 1:
        return struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
    if kind == 2:
        return rng.choice([*EDGE_INTS, rng.randrange(-10 ** 6, 10 ** 6)])
    if kind == 3:
        return rng.choice(EDGE_TEXTS) + "".join(chr(rng.randrange(0x20, 0x7f))
                                                for _ in range(rng.randrange(8)))
    if kind == 4:
        return rng.choice(ODD_VALUES)
    if kind == 5:
        return rng.choice([None, True, False, "", 0])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = rng.sample([*EDGE_TEXTS, "a", "B", "_", "z", "aa", "a\x00"], rng.randrange(6))
    if rng.randrange(8) == 0:
        return {rng.randrange(5): random_value(rng, depth + 1)}  # a key json turns to text
    return {k: random_value(rng, depth + 1) for k in keys}


def test_every_value_gets_the_standard_text() -> None:
    rng = random.Random(13)
    values = [random_value(rng) for _ in range(20_000)]
    values += EDGE_FLOATS + EDGE_INTS + EDGE_TEXTS + ODD_VALUES
    for value in values:
        assert canonical_json(value) == standard(value), repr(value)


def test_floats_of_every_magnitude_get_the_standard_text() -> None:
    rng = random.Random(7)
    edges = [1e-4, math.nextafter(1e-4, 0.0), math.nextafter(1e16, 0.0), 1e16]
    for exponent in range(-320, 309):
        for value in [rng.random() * 10.0 ** exponent for _ in range(20)] + edges:
            assert canonical_json({"t": value}) == standard({"t": value})
            assert canonical_json([-value]) == standard([-value])
            if is_plain_float(value):  # the caller's promise: the text is not searched
                assert canonical_json([value], plain_floats=True) == standard([value])


def floats_in(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [f for v in value for f in floats_in(v)]
    return []


def test_plain_floats_is_only_a_promise_about_the_floats() -> None:
    """With `plain_floats`, the text is not searched for odd floats, and a `null` is taken
    for a None: right for any value whose floats are all plain."""
    rng = random.Random(5)
    kept = 0
    for _ in range(20_000):
        value = random_value(rng)
        if all(is_plain_float(f) for f in floats_in(value)):
            kept += 1
            assert canonical_json(value, plain_floats=True) == standard(value), repr(value)
    assert kept > 5_000


def test_a_status_takes_the_fast_path_and_gets_the_standard_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    status = BatchStatus(state=BatchState.PROCESSING, observed_generation=2, message="ok",
                         conditions=[Condition("Ready", True, "Admitted", "admitted",
                                               1_764_500_000.25)],
                         started_at=1_764_500_001.5, items_loaded=True, item_count=10,
                         counts={"Completed": 4, "Pending": 6})
    slow: list[Any] = []

    def counted(value: Any) -> str:
        slow.append(value)
        return standard(value)

    monkeypatch.setattr(jsontext, "_standard", counted)
    assert status_json(status) == standard(status_to_dict(status))
    assert slow == [], "a plain status went the slow way: no time saved"
    status.finished_at = 1e-5  # only a broken store has one; json writes 1e-05
    assert status_json(status) == standard(status_to_dict(status))
    assert len(slow) == 1


def test_every_text_reads_as_json_reads_it() -> None:
    rng = random.Random(11)
    texts = [standard(random_value(rng)) for _ in range(20_000)]
    texts += ["NaN", "-Infinity", "[1E400]", '"\\ud800"', "18446744073709551616",
              "-9223372036854775809", "123456789012345678901234567890", "-0", "1e-400",
              '{"a":1,"a":2}', " [1] ", "\t{}\n"]
    for text in texts:
        assert repr(parse_json(text)) == repr(json.loads(text)), text


@pytest.mark.parametrize("text", ["", "[1,]", "{'a': 1}", '"a\x00"', "\ufeff[1]", "[1] x"])
def test_what_is_not_json_is_refused_as_json_refuses_it(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(ValueError):
        parse_json(text)
