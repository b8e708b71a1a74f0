"""Every BatchStatus field survives both backends' encodings (else passes never settle)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from reconciler.control.controller import _copy_status
from reconciler.domain.model import BatchStatus, Condition
from reconciler.domain.states import BatchState
from reconciler.store.codec import canonical_json, status_from_dict, status_to_dict
from reconciler.store.kubernetes.store import status_from_k8s, status_to_k8s

pytestmark = pytest.mark.unit  # pure: no Git, SQLite, subprocess or network


def sample() -> BatchStatus:
    values = {
        "state": BatchState.FAILED, "observed_generation": 3, "message": "m",
        "conditions": [Condition("Ready", True, "Failed", "x", 1_700_000_000.0)],
        "started_at": 1.5, "finished_at": 2.5, "deleted_at": 3.5, "items_loaded": True,
        "item_count": 7, "counts": {"Failed": 1, "Completed": 6},
        "failures": [{"item": "a", "message": "bad"}], "manifest_error": "e",
        "settled": True, "report_round": 2, "update_generation": 3,
        "admitted_manifest": "items:0f",
    }
    assert set(values) == {f.name for f in dataclasses.fields(BatchStatus)}, "new field?"
    return BatchStatus(**values)  # type: ignore[arg-type]


def test_local_round_trip() -> None:
    assert status_from_dict(status_to_dict(sample())) == sample()


def test_kubernetes_round_trip() -> None:
    assert status_from_k8s(status_to_k8s(sample())) == sample()


def test_status_to_dict_is_what_asdict_gives() -> None:
    """The hand-written encoding against the reference it replaced (dataclasses.asdict):
    a field added to BatchStatus or Condition that it missed shows here."""
    status = sample()
    status.conditions.append(Condition("Stalled", False, "Resolved", "é\n\x1b", 2.0))
    reference = dataclasses.asdict(status)
    reference["state"] = str(status.state)
    got = status_to_dict(status)
    assert got == reference and list(got) == list(reference)
    assert canonical_json(got) == canonical_json(reference)
    got["conditions"][0]["message"] = "changed"
    got["counts"]["Failed"] = 99
    got["failures"][0]["message"] = "changed"
    assert status.conditions[0].message == "x"  # nothing shared
    assert status.counts["Failed"] == 1 and status.failures[0]["message"] == "bad"


def test_the_step_s_status_copy_shares_nothing_mutable() -> None:
    """The controller's copy against copy.deepcopy: equal, and no list, dict or condition
    of it is the original's (a field added to BatchStatus that it missed shows here)."""
    status = sample()
    copied = _copy_status(status)
    assert copied == copy.deepcopy(status)

    def mutables(value: object) -> list[object]:
        if isinstance(value, list | dict):
            inner = value.values() if isinstance(value, dict) else value
            return [value, *(m for v in inner for m in mutables(v))]
        if dataclasses.is_dataclass(value):
            return [value, *(m for f in dataclasses.fields(value)
                             for m in mutables(getattr(value, f.name)))]
        return []

    theirs = {id(m) for m in mutables(status)}
    assert not [m for m in mutables(copied) if id(m) in theirs]
