"""Every BatchStatus field survives both backends' encodings (else passes never settle)."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.domain.model import BatchStatus, Condition
from reconciler.domain.states import BatchState
from reconciler.store.codec import status_from_dict, status_to_dict
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
