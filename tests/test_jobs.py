from __future__ import annotations

import pytest

from reconciler.control.jobs import job_name
from reconciler.domain.model import DNS_LABEL

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network


def test_names_are_deterministic_and_readable() -> None:
    assert job_name("maps", "map-001", 1) == "maps-map-001-1"
    assert job_name("maps", "map-001", 1) == job_name("maps", "map-001", 1)
    assert job_name("maps", "map-001", 2) != job_name("maps", "map-001", 1)


def test_lossy_or_long_names_get_a_hash_and_stay_dns_labels() -> None:
    a = job_name("maps", "Map_001", 1)
    b = job_name("maps", "map-001", 1)
    c = job_name("maps", "map.001", 1)
    assert len({a, b, c}) == 3
    long = job_name("b" * 63, "i" * 128, 12)
    for name in (a, c, long):
        assert DNS_LABEL.match(name), name
        assert len(name) <= 63
    assert long.endswith("-12-" + long.rsplit("-", 1)[1])
