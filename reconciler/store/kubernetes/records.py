"""The records a Batch keeps outside its own object (issue 9 §0), as pure functions.

Git is the only source of truth, and the Batch custom resource is what people see and
what `kubectl delete` / `kubectl edit` can reach. So the reconciler never reads back what
it can lose that way: it keeps, in ConfigMaps owned by nothing (labelled
`batchq.dev/batch`, removed by the reconciler only when the batch's file is deleted from
Git and its retention ends):

- `<batch>-spec`: the spec as last applied from Git (`spec.json.gz`, compressed: an inline
  manifest of 1 MiB becomes a few hundred KiB) and the batch's bookkeeping
  (`record.json`: incarnation, generation, source path and revision, the spec's hash and
  the hash of the Batch object's spec as the API server returned it after our apply).
  Written only when a commit changes the batch.
- `<batch>-status`: the batch's status (`status.json`), written on every status change.
  The Batch's `.status` is a projection of it, put back when edited by hand.

The Batch object's spec is Git's, with an inline items list replaced by
`manifest.itemsFrom` (where the items are kept, how many, their hash): the object stays a
few KiB, however large the manifest. A hand-deleted Batch is re-created from
`<batch>-spec`, a hand-edited spec is taken back (the hash of the object's spec no longer
matches), and a hand-edited status is never read and is overwritten; the items, reports
and timeline ConfigMaps are unowned too, so none of them is taken by the garbage
collector with the Batch.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from typing import Any

from reconciler.store.codec import canonical_json

SPEC_KEY = "spec.json.gz"
RECORD_KEY = "record.json"
STATUS_KEY = "status.json"


def spec_record_name(batch: str) -> str:
    return f"{batch}-spec"


def status_record_name(batch: str) -> str:
    return f"{batch}-status"


def spec_digest(spec: Any) -> str:
    """The hash by which specs are compared (canonical JSON, so key order does not count)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def encode_spec(spec: dict[str, Any]) -> str:
    """`spec.json.gz` as binaryData (base64); mtime 0, so equal specs encode equal."""
    return base64.b64encode(gzip.compress(canonical_json(spec).encode(), mtime=0)).decode()


def decode_spec(data: str) -> dict[str, Any]:
    return dict(json.loads(gzip.decompress(base64.b64decode(data))))


def object_spec(batch: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec the Batch object holds: Git's, with an inline items list replaced by where
    it is kept (`manifest.itemsFrom`, see spec/crd.py), so no write to the object (status
    included: etcd stores the whole object each time) carries a large manifest."""
    items = (spec.get("manifest") or {}).get("items")
    if items is None:
        return spec
    out = dict(spec)
    out["manifest"] = {"itemsFrom": {"configMap": spec_record_name(batch), "key": SPEC_KEY,
                                     "count": len(items), "sha256": spec_digest(items)}}
    return out


def projected_status(status: dict[str, Any], observed: int, generation: int,
                     object_generation: int) -> dict[str, Any]:
    """The Batch's `.status` as kubectl shows it: the recorded status, whose
    observedGeneration speaks of the object's own generation (a hand edit and its repair
    bump the object's generation, not the batch's)."""
    out = dict(status)
    out["observedGeneration"] = object_generation if observed == generation else observed
    return out
