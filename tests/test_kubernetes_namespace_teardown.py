"""A test that fails while a Job's result is unrecorded cannot hold up the tests after it.

A Job keeps batchq's `batchq.dev/result` finalizer until the reconciler records its result;
when the reconciler is gone (the test failed, its process was killed) the namespace would
stay Terminating for good, and deploy/'s fixed namespace `batchq` then failed every later
test that applies deploy/. The fixtures delete namespaces with tests/cluster/namespaces.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from reconciler.store.kubernetes.jobs import RESULT_FINALIZER
from tests.cluster.namespaces import delete_namespace

pytestmark = pytest.mark.kubernetes


def test_a_namespace_left_with_unrecorded_jobs_is_deleted(k8s_cluster: Any) -> None:
    ns = f"bq-left-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", ns)
    for name in ("left-1", "left-2"):  # what a reconciler killed before recording leaves
        k8s_cluster.request("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "finalizers": [RESULT_FINALIZER],
                         "labels": {"batchq.dev/batch": "left"}},
            "spec": {"suspend": True, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "worker", "image": "batchq:test"}]}}}})
    delete_namespace(k8s_cluster, ns, timeout=60)
    assert k8s_cluster.kubectl("get", "namespace", ns, check=False).returncode != 0
