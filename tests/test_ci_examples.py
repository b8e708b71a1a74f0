"""The CI examples in docs/ci call batchq as the CLI really accepts it (issue 10 §2)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.app.cli import parser

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ci"


def _commands(node: Any) -> list[str]:
    """Every shell line of a workflow that runs batchq."""
    if isinstance(node, dict):
        return [c for value in node.values() for c in _commands(value)]
    if isinstance(node, list):
        return [c for value in node for c in _commands(value)]
    if isinstance(node, str):
        return [line.strip() for line in node.splitlines() if line.strip().startswith("batchq ")]
    return []


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_each_batchq_command_of_a_ci_example_parses(name: str) -> None:
    commands = _commands(yaml.safe_load((DOCS / name).read_text()))
    assert any("validate" in c for c in commands), commands
    for command in commands:
        words = shlex.split(command.split(">")[0].split("||")[0])
        args = parser().parse_args(words[1:])  # exits (fails the test) on a bad option
        assert args.command == "validate"
    if name == "github-actions.yml":
        assert "batchq validate --format github ." in commands
