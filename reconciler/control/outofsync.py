"""The rule for a manifest edited after its batch was admitted, and the words for it.

Items are fixed when a batch is admitted: each becomes a Job, and Jobs are immutable (as
in Kubernetes), so a later edit of `spec.manifest` is never applied to that batch; a restart
re-runs an item as it was admitted. What was ingested is then always what the report says
was ingested. The edit is not silently ignored either: the batch shows the condition
`OutOfSync` with this module's message (status, page, `plan`), and the way to run corrected
items is explicit: submit them as a new batch, under a new `metadata.name`.

`manifest_key` is what the status keeps of the admitted manifest to tell an edit apart:
a digest of the inline items or of the manifest URL.
"""

from __future__ import annotations

import hashlib
import json

from reconciler.domain.model import BatchSpec, ItemStatus

REASON = "ManifestChangedAfterAdmission"


def manifest_key(spec: BatchSpec) -> str:
    """`url:` or `items:` and the sha256 of the manifest URL or of the inline items (small:
    it lives in the Batch status)."""
    if spec.items is None:
        return "url:" + hashlib.sha256(str(spec.manifest_url).encode()).hexdigest()
    body = json.dumps([i.to_dict() for i in spec.items], sort_keys=True, separators=(",", ":"))
    return "items:" + hashlib.sha256(body.encode()).hexdigest()


def _changed_items(spec: BatchSpec, admitted: list[ItemStatus]) -> list[str]:
    """Ids of inline items added, removed or edited since admission, in file order."""
    now = {i.id: i for i in spec.items or ()}
    before = {s.item.id: s.item for s in admitted}
    ids = [i for i in now if before.get(i) != now[i]] + [i for i in before if i not in now]
    return ids


def out_of_sync(name: str, path: str, spec: BatchSpec, admitted_key: str,
                admitted: list[ItemStatus], manifest_error: str) -> str:
    """Why the batch no longer matches its file's manifest ("" when it does)."""
    if not admitted_key or manifest_key(spec) == admitted_key:
        return ""
    rename = (f"commit the corrected file with a new metadata.name (for example {name}-2);"
              f" batch {name} is then retired as if its file were deleted, and the new batch"
              " starts afresh")
    if manifest_error:
        return (f"spec.manifest in {path} changed after its manifest could not be read; this"
                f" batch is not admitted again (its items are fixed at admission). To run the"
                f" corrected manifest, {rename}")
    what = "spec.manifest.url changed" if spec.items is None or admitted_key.startswith(
        "url:") else "spec.manifest.items changed"
    ids = _changed_items(spec, admitted) if spec.items is not None else []
    if ids:
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        what = f"items {', '.join(ids[:5])}{more} changed"
    return (f"{what} in {path} after the batch was admitted: its jobs keep the items they were"
            " admitted with (jobs are immutable, and a restart re-runs an item as admitted)."
            f" To ingest the corrected items, {rename}")
