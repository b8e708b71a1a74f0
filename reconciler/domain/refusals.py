"""A change the access policy refused: what `status`, the page and /metrics show.

Kept in the sync state by file path (SyncState.access_refusals), so the CLI and the site
read it the same way on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSIGNED = "unsigned"
MAX_PER_PATH = 20  # the newest refusals of one file are kept, not an unbounded history


@dataclass(frozen=True)
class Refusal:
    """`commit` changed `path` (its `field`, or the file as a whole when "") and `signer`
    (a principal, "unsigned", or why the signature did not count) may not: `why`."""

    commit: str
    signer: str
    path: str
    field: str
    why: str
    at: float  # the commit's time
    applied: bool = False  # warn mode: refused, yet applied

    def line(self) -> str:
        what = f"{self.path} {self.field}" if self.field else self.path
        verdict = "applied anyway (mode warn)" if self.applied else "not applied"
        return f"commit {self.commit[:12]} by {self.signer}: {what}: {self.why}; {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "signer": self.signer, "path": self.path,
                "field": self.field, "why": self.why, "at": self.at, "applied": self.applied}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Refusal:
        return cls(str(d["commit"]), str(d["signer"]), str(d["path"]), str(d.get("field", "")),
                   str(d["why"]), float(d.get("at", 0.0)), bool(d.get("applied", False)))


def refusals_of(stored: dict[str, Any], path: str | None = None) -> list[Refusal]:
    """The refusals kept in SyncState.access_refusals, of one file or of all, oldest first."""
    out = [Refusal.from_dict(r) for p, rows in stored.items() if path in (None, p)
           for r in rows]
    return sorted(out, key=lambda r: (r.at, r.path))
