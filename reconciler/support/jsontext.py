"""JSON text made and read by orjson, byte for byte what the standard `json` module gives.

The store writes every status, job spec and item as canonical JSON, and compares texts to
skip writes that change nothing and to guard a write against a concurrent one; a text
written by an older batchq must still compare equal to the same value written now. At
1,000 batches of 10 items, `json` cost about a tenth of the reconciler's own CPU; orjson
makes the same text about nine times faster and reads it two to three times faster.

orjson's text differs from `json.dumps(sort_keys=True, separators=(",", ":"),
default=str)` (ensure_ascii) in a few known places, and each is either seen in its output
or stopped before it, so that the text is `json`'s whenever orjson's is not exactly that:
- non-ASCII characters and DEL (0x7f), which `json` escapes: any byte over 0x7e;
- floats under 1e-4 or from 1e16 up, which `json` writes as Python's repr (`1e-05`,
  `1e+16`; orjson `0.00001`, `1e16`): a number in exponent form, or one starting
  `0.0000`, at the start or right after `:`, `[` or `,` (a string holding such text
  only costs the slow path);
- NaN and the infinities, which orjson writes as `null`: a text holding `null` is made by
  `json` unless the caller knows its value has no such float (`plain_floats=True`, which
  also skips the search for the floats above: a regular expression over a status's
  text cost twice what orjson saved);
- what orjson cannot write (an integer beyond 64 bits, a key that is not a string) or
  writes otherwise (a dataclass, a datetime, anything `json` gives to `default=str`):
  passed through to a `default` that refuses it.
(A plain `enum.Enum` would be written by its value, not its `str`; batchq's enums are all
`StrEnum`s, which both write as their value.)

Reading, orjson refuses NaN, the infinities and lone surrogates (then `json` reads the
text), and reads an integer of 19 digits or more as a float: a text with such a run of
digits is read by `json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME)
# a float orjson writes unlike Python's repr: in exponent form, or a fixed one under 1e-4
_UNLIKE_REPR = re.compile(rb"(?:\A|[:\[,])-?(?:\d+(?:\.\d+)?e|0\.0000)")
# each digit as "0", every other byte as " ": a run of 19 digits is then a plain search
# (a regular expression over a status's text took longer than reading it)
_DIGITS_ONLY = bytes(ord("0") if 48 <= c <= 57 else ord(" ") for c in range(256))
_LONG_INTEGER = b"0" * 19


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def canonical_json(value: Any, *, plain_floats: bool = False) -> str:
    """Stable JSON, so that equal values compare equal as text (no spurious writes): the
    text of `json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`.
    `plain_floats`: the caller knows every float in `value` is 0 or finite with a
    magnitude from 1e-4 up to 1e16 (so no NaN or infinity: a `null` is a None), and the
    search for the others is skipped."""
    try:
        out = orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError too
        return _standard(value)
    if out.isascii() and b"\x7f" not in out and (plain_floats or (
            b"null" not in out and _UNLIKE_REPR.search(out) is None)):
        return out.decode("ascii")
    return _standard(value)


def is_plain_float(value: float) -> bool:
    """Does orjson write `value` as Python's repr does (`canonical_json`'s plain_floats)?"""
    return value == 0.0 or 1e-4 <= abs(value) < 1e16


def _standard(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def parse_json(text: str) -> Any:
    """The value of a JSON text, as `json.loads` reads it (ValueError if it is not JSON)."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: not JSON orjson reads
        return json.loads(text)
    if _LONG_INTEGER not in data.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, an infinity, a lone surrogate, or not JSON: json says which
    return json.loads(text)
