"""Deleting a test namespace so that one failed test cannot hold up the next.

Every Job batchq makes carries the `batchq.dev/result` finalizer until its result is in
the item records (reconciler/store/kubernetes/jobs.py). A test that fails while a Job's
result is unrecorded leaves that finalizer behind, and with no reconciler left to record
the result the namespace stays Terminating for good: a fixture that waits for it (deploy/'s
fixed namespace `batchq`, applied again by the next test) then fails, and so do the tests
after it. Here the namespace is deleted and, as an operator uninstalling batchq must, the
finalizer is taken off the Jobs left in it, until the namespace is gone.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.store.kubernetes.jobs import RESULT_FINALIZER
from tests.fixtures import wait_for


def delete_namespace(cluster: Any, namespace: str, timeout: float = 120.0) -> None:
    """Delete `namespace` and wait until it is gone, releasing the Jobs' result finalizers
    (nothing is left to record those results); fail naming what is still there."""
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    def gone() -> bool:
        release_result_finalizers(cluster, namespace)
        return cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0

    wait_for(gone, timeout, what=f"namespace {namespace} to be deleted", interval=0.5,
             detail=lambda: cluster.kubectl("get", "all,configmaps,batches", "-n", namespace,
                                            check=False).stdout)


def release_result_finalizers(cluster: Any, namespace: str) -> list[str]:
    """Take batchq's result finalizer off every Job in `namespace` that holds it; the names."""
    listed = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json", check=False)
    if listed.returncode != 0:
        return []
    released = []
    for job in json.loads(listed.stdout).get("items", []):
        held = job["metadata"].get("finalizers") or []
        if RESULT_FINALIZER not in held:
            continue
        patch = [{"op": "test", "path": "/metadata/finalizers", "value": held},
                 {"op": "replace", "path": "/metadata/finalizers",
                  "value": [f for f in held if f != RESULT_FINALIZER]}]
        cluster.kubectl("patch", "job", job["metadata"]["name"], "-n", namespace,
                        "--type=json", "-p", json.dumps(patch), check=False)
        released.append(job["metadata"]["name"])
    return released
