"""Turning status values into JSON and back, shared by both backends."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from reconciler.domain.model import BatchStatus, Condition
from reconciler.domain.states import BatchState


def status_to_dict(status: BatchStatus) -> dict[str, Any]:
    out = asdict(status)
    out["state"] = str(status.state)
    return out


def status_from_dict(data: dict[str, Any]) -> BatchStatus:
    data = dict(data)
    data["state"] = BatchState(data.get("state", BatchState.PENDING))
    data["conditions"] = [Condition(**c) for c in data.get("conditions", [])]
    known = BatchStatus.__dataclass_fields__
    return BatchStatus(**{k: v for k, v in data.items() if k in known})


def canonical_json(value: Any) -> str:
    """Stable JSON, so that equal values compare equal as text (no spurious writes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
