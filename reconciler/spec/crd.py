"""Generate the Batch CRD from `schemas/` (the single source of truth, DESIGN §2).

`python -m reconciler.spec.crd > deploy/crds/batches.batchq.dev.yaml`; a test fails when the
committed file drifts from what this prints. JSON Schema is turned into a structural
OpenAPI v3 schema: `$schema`/`$id`/`title` go, `additionalProperties: false` goes (the API
server prunes unknown fields instead), and `metadata` is left to the API server. A Batch
may have no `spec`: it stands for a file that never parsed (its status says why).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from reconciler.domain.states import JobState as J
from reconciler.spec.validation import SCHEMA_DIR, load_schema

GROUP = "batchq.dev"
DROP = {"$schema", "$id", "title", "$comment"}
# What the Batch object holds instead of an inline items list (issue 9 §0): the file's
# items stay in the spec record, so the object stays small and status writes never
# rewrite them (reconciler/store/kubernetes/records.py).
ITEMS_FROM: dict[str, Any] = {
    "description": "Set by batchq in place of the file's inline items: they are kept, as"
                   " applied from Git, in this ConfigMap key (gzipped JSON spec), so the Batch"
                   " object stays small.",
    "type": "object",
    "required": ["configMap", "key", "count", "sha256"],
    "properties": {
        "configMap": {"type": "string"},
        "key": {"type": "string"},
        "count": {"type": "integer", "minimum": 1},
        "sha256": {"type": "string", "description": "Of the items, as canonical JSON."},
    },
}


def structural(node: Any) -> Any:
    """A copy of a JSON Schema node that the API server accepts as structural."""
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "format" and value not in ("date-time", "int64", "int32", "byte"):
            continue
        if key == "properties":  # field names, not keywords: keep every one
            out[key] = {name: structural(sub) for name, sub in value.items()}
            continue
        out[key] = structural(value)
    for key in ("oneOf", "anyOf"):  # value validation only: branches must not restate types
        if key in out:
            out[key] = [{k: v for k, v in b.items() if k == "required"} for b in out[key]]
    return out


def status_schema() -> dict[str, Any]:
    data = json.loads((SCHEMA_DIR / "batch-status.schema.json").read_text())
    return dict(structural(data))


def crd() -> dict[str, Any]:
    batch = load_schema("Batch")
    spec = structural(batch["properties"]["spec"])
    manifest = spec["properties"]["manifest"]
    manifest["properties"]["itemsFrom"] = ITEMS_FROM
    manifest["oneOf"].append({"required": ["itemsFrom"]})
    ready = '.status.conditions[?(@.type=="Ready")]'
    columns = [  # (name, type, JSONPath, priority: 1 only in `kubectl get -o wide`)
        ("State", "string", ".status.state", 0),
        ("Ready", "string", f"{ready}.status", 0),
        ("Jobs", "integer", ".status.itemCount", 0),
        *((str(s), "integer", f".status.counts.{s}", 0) for s in (J.COMPLETED, J.FAILED)),
        ("Revision", "string", r".metadata.annotations.batchq\.dev/source-revision", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Message", "string", f"{ready}.message", 0),
        ("Profile", "string", ".spec.profile", 1),
        ("Depositor", "string", ".spec.depositor.email", 1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"batches.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "batches", "singular": "batch", "kind": "Batch",
                      "listKind": "BatchList", "shortNames": ["bq"]},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": n, "type": t, "jsonPath": p, **({"priority": k} if k else {})}
                    for n, t, p, k in columns
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": batch.get("description", ""),
                    "properties": {
                        "apiVersion": {"type": "string", "description": f"{GROUP}/v1"},
                        "kind": {"type": "string", "description": "Batch"},
                        "metadata": {"type": "object"},  # the API server's own
                        "spec": spec,
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


def render() -> str:
    header = "# Generated by `python -m reconciler.spec.crd` from schemas/: do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
