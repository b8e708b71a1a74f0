"""A Batch's status as the `status` subresource holds it, and back (DESIGN §8).

Kept small: long texts are cut, the list of failures is bounded, and every time is an
RFC 3339 string (conditions to the second as metav1.Time; startedAt/finishedAt/deletedAt to
the microsecond, so a pass that changed nothing writes nothing); times stored as numbers by
earlier versions are still read. Each condition carries the status's observedGeneration.
`status_from_k8s(status_to_k8s(s))` gives back `s` for any status within those bounds
(tests/test_codec_roundtrip.py).
"""

from __future__ import annotations

from typing import Any

from reconciler.domain.model import BatchStatus, Condition
from reconciler.domain.states import BatchState
from reconciler.support.timefmt import parse_rfc3339_or_none, rfc3339


def status_to_k8s(s: BatchStatus) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": str(s.state),
        "observedGeneration": s.observed_generation,
        "message": s.message[:4096],
        "conditions": [
            {"type": c.type, "status": "True" if c.status else "False", "reason": c.reason or
             "Unknown", "message": c.message[:32768],
             "lastTransitionTime": rfc3339(c.last_transition or 0),
             "observedGeneration": s.observed_generation}
            for c in s.conditions
        ],
        "itemsLoaded": s.items_loaded,
        "itemCount": s.item_count,
        "counts": dict(s.counts),
        "failures": [dict(f) for f in s.failures[:20]],
        "manifestError": s.manifest_error[:4096],
        "reportRound": s.report_round,
        "updateGeneration": s.update_generation,
        "settled": s.settled,
        "admittedManifest": s.admitted_manifest,
    }
    for key, value in (("startedAt", s.started_at), ("finishedAt", s.finished_at),
                       ("deletedAt", s.deleted_at)):
        if value is not None:
            out[key] = rfc3339(value, micro=True)
    return out


def _time(value: str | float | None) -> float | None:
    """POSIX seconds of a status time: RFC 3339 text, or a number an older version wrote."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    return parse_rfc3339_or_none(value)


def status_from_k8s(d: dict[str, Any] | None) -> BatchStatus:
    d = d or {}
    return BatchStatus(
        state=BatchState(d.get("state", BatchState.PENDING)),
        observed_generation=int(d.get("observedGeneration", 0)),
        message=d.get("message", ""),
        conditions=[
            Condition(c["type"], c.get("status") == "True", c.get("reason", ""),
                      c.get("message", ""),
                      parse_rfc3339_or_none(c.get("lastTransitionTime")) or 0.0)
            for c in d.get("conditions", [])
        ],
        started_at=_time(d.get("startedAt")),
        finished_at=_time(d.get("finishedAt")),
        deleted_at=_time(d.get("deletedAt")),
        items_loaded=bool(d.get("itemsLoaded", False)),
        item_count=int(d.get("itemCount", 0)),
        counts=dict(d.get("counts", {})),
        failures=list(d.get("failures", [])),
        manifest_error=d.get("manifestError", ""),
        report_round=int(d.get("reportRound", 0)),
        update_generation=int(d.get("updateGeneration", 0)),
        settled=bool(d.get("settled", False)),
        admitted_manifest=str(d.get("admittedManifest", "")),
    )
