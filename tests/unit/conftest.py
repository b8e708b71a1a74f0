"""Everything under tests/unit/ is the unit layer: marked `unit` at collection, so
`scripts/test --unit` (`pytest -m unit`) runs it without the Git, SQLite, process, cluster
or browser parts the integration layer needs."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.unit)
