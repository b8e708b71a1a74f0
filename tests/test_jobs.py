from __future__ import annotations

import itertools
import re

import pytest

from reconciler.control.jobs import job_name
from reconciler.domain.model import DNS_LABEL

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network
ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def test_names_are_deterministic_and_readable() -> None:
    assert job_name("maps", "map001", 1) == "maps-map001-1"
    assert job_name("maps", "map001", 1) == job_name("maps", "map001", 1)
    assert job_name("maps", "map001", 2) != job_name("maps", "map001", 1)
    hashed = job_name("maps-2026-11", "map-001", 3)
    assert hashed.startswith("maps-2026-11-map-001-3--"), hashed
    assert hashed == job_name("maps-2026-11", "map-001", 3)


def test_the_issue_pair_gets_two_names() -> None:
    a = job_name("maps-2026", "11-001", 1)
    b = job_name("maps-2026-11", "001", 1)
    assert a != b
    assert a.startswith("maps-2026-11-001-1--") and b.startswith("maps-2026-11-001-1--")


def test_lossy_or_long_names_get_a_hash_and_stay_dns_labels() -> None:
    a = job_name("maps", "Map_001", 1)
    b = job_name("maps", "map-001", 1)
    c = job_name("maps", "map.001", 1)
    assert len({a, b, c}) == 3
    long = job_name("b" * 63, "i" * 128, 12)
    for name in (a, b, c, long):
        assert DNS_LABEL.match(name), name
        assert len(name) <= 63
    assert long.endswith("-12--" + long.rsplit("--", 1)[1])


def test_no_two_triples_share_a_name() -> None:
    """Every batch name and item id over a small alphabet with the characters that make
    names ambiguous ('-' in both parts, '.', '_', capitals), attempts 1 to 12."""
    batches = [b for n in range(1, 5) for t in itertools.product("a1-", repeat=n)
               if DNS_LABEL.fullmatch(b := "".join(t))]
    items = [i for n in range(1, 4) for t in itertools.product("a1-._A", repeat=n)
             if ITEM_ID.fullmatch(i := "".join(t))]
    seen: dict[str, tuple[str, str, int]] = {}
    for batch, item, attempt in itertools.product(batches, items, (1, 2, 11, 12)):
        name = job_name(batch, item, attempt)
        assert DNS_LABEL.fullmatch(name) and len(name) <= 63, name
        assert seen.setdefault(name, (batch, item, attempt)) == (batch, item, attempt), name
    assert len(seen) > 10_000
