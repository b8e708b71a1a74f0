"""Smoke tests of the Kubernetes test control plane (tests/cluster, DESIGN §9).

They prove that the pieces the batchq Kubernetes backend relies on work here with the real
kube-apiserver, etcd, Job controller, garbage collector and scheduler, and kwok as the fake
kubelet whose stages complete, fail or hold pods by their ``batchq.dev/simulate`` annotation.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client

from tests import fixtures
from tests.cluster.controlplane import ControlPlane, cluster_or_skip

pytestmark = pytest.mark.kubernetes

WAIT_SECONDS = 60.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = cluster_or_skip(tmp_path_factory)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def api(cp: ControlPlane) -> Iterator[client.ApiClient]:
    with client.ApiClient(cp.client_configuration()) as c:
        yield c


@pytest.fixture
def namespace(cp: ControlPlane, api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace whose default service account exists (pods need it)."""
    core = client.CoreV1Api(api)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_default_sa() -> bool:
        sas = core.list_namespaced_service_account(name).items
        return any(sa.metadata is not None and sa.metadata.name == "default" for sa in sas)

    wait_for(cp, f"service account default in {name}", has_default_sa)
    yield name
    core.delete_namespace(name)


def wait_for(cp: ControlPlane, what: str, probe: Callable[[], T | None]) -> T:
    """`tests.fixtures.wait_for` with this module's patience; a timeout shows the logs."""
    got = fixtures.wait_for(probe, WAIT_SECONDS, what=what, interval=0.2, detail=cp.logs_tail)
    assert got is not None
    return got


def make_job(
    name: str, annotations: dict[str, str] | None = None, suspend: bool = False
) -> client.V1Job:
    """A Job the way batchq makes them: one attempt, evictions not counted, any non-zero
    exit code fails the Job."""
    template_meta: dict[str, Any] = {"annotations": annotations} if annotations else {}
    job = client.V1Job.from_dict(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "suspend": suspend,
                "podFailurePolicy": {
                    "rules": [
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                        {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
                    ]
                },
                "template": {
                    "metadata": template_meta,
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "work",
                                "image": "registry.invalid/batchq-worker:test",
                                "command": ["batchq-worker"],
                            }
                        ],
                    },
                },
            },
        }
    )
    assert job is not None
    return job


def job_condition(batch: client.BatchV1Api, ns: str, name: str, cond: str) -> client.V1Job | None:
    job = batch.read_namespaced_job_status(name, ns)
    conditions = (job.status.conditions if job.status else None) or []
    return job if any(c.type == cond and c.status == "True" for c in conditions) else None


def job_pods(core: client.CoreV1Api, ns: str, name: str) -> list[client.V1Pod]:
    selector = f"batch.kubernetes.io/job-name={name}"
    return list(core.list_namespaced_pod(ns, label_selector=selector).items)


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    assert pod.status is not None and pod.status.container_statuses
    state = pod.status.container_statuses[0].state
    assert state is not None and state.terminated is not None, pod.status
    return state.terminated


def test_readyz_and_fake_nodes(cp: ControlPlane, api: client.ApiClient) -> None:
    params = api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
    resp = api.call_api(*params)
    assert resp.status == 200
    assert resp.response.data == b"ok"

    version = client.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.")

    table = cp.kubectl("get", "nodes").stdout
    assert "kwok-node-0" in table and " Ready " in table, table
    nodes = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    for node in nodes:
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["status"]
        assert node["status"]["allocatable"]["pods"] == "1k", node["status"]  # 1000 pods


def test_job_completes(cp: ControlPlane, api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, make_job("ok"))
    job = wait_for(cp, "Job ok Complete", lambda: job_condition(batch, namespace, "ok", "Complete"))
    assert job.status is not None and job.status.succeeded == 1
    assert not job.status.failed
    (pod,) = job_pods(core, namespace, "ok")
    assert pod.status is not None and pod.status.phase == "Succeeded"
    assert pod.spec is not None and pod.spec.node_name in cp.nodes
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (0, "Completed")


def test_job_fails_with_message(cp: ControlPlane, api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    annotations = {"batchq.dev/simulate": "fail", "batchq.dev/simulate-message": "digest mismatch"}
    batch.create_namespaced_job(namespace, make_job("bad", annotations))
    job = wait_for(cp, "Job bad Failed", lambda: job_condition(batch, namespace, "bad", "Failed"))
    assert job.status is not None and job.status.failed == 1
    assert not job.status.succeeded
    failed = [c for c in job.status.conditions or [] if c.type == "Failed"]
    assert failed[0].reason == "PodFailurePolicy", failed
    (pod,) = job_pods(core, namespace, "bad")
    assert pod.status is not None and pod.status.phase == "Failed"
    state = terminated(pod)
    assert state.exit_code == 1
    assert state.message == "digest mismatch"


def test_suspended_job_waits_for_resume(
    cp: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, make_job("later", suspend=True))
    # The Job controller has seen it once it says Suspended; still no pod then, nor a bit later.
    wait_for(
        cp, "Job later Suspended", lambda: job_condition(batch, namespace, "later", "Suspended")
    )
    time.sleep(2)
    assert job_pods(core, namespace, "later") == []

    batch.patch_namespaced_job("later", namespace, {"spec": {"suspend": False}})
    job = wait_for(
        cp, "Job later Complete", lambda: job_condition(batch, namespace, "later", "Complete")
    )
    assert job.status is not None and job.status.succeeded == 1
    assert len(job_pods(core, namespace, "later")) == 1


def test_background_delete_removes_pods(
    cp: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, make_job("held", {"batchq.dev/simulate": "hold"}))

    def running() -> bool:
        pods = job_pods(core, namespace, "held")
        return len(pods) == 1 and pods[0].status is not None and pods[0].status.phase == "Running"

    wait_for(cp, "the held pod Running", running)
    time.sleep(1.5)  # past the 1 s of the complete/fail stages: "hold" really holds
    assert running()

    batch.delete_namespaced_job("held", namespace, propagation_policy="Background")
    wait_for(cp, "the held pod to be deleted", lambda: not job_pods(core, namespace, "held"))
    assert not any(
        j.metadata is not None and j.metadata.name == "held"
        for j in batch.list_namespaced_job(namespace).items
    )


def test_held_pod_completes_when_released(
    cp: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, make_job("gate", {"batchq.dev/simulate": "hold"}))

    def running_pod() -> client.V1Pod | None:
        pods = job_pods(core, namespace, "gate")
        ok = len(pods) == 1 and pods[0].status is not None and pods[0].status.phase == "Running"
        return pods[0] if ok else None

    pod = wait_for(cp, "the gate pod Running", running_pod)
    assert pod.metadata is not None and pod.metadata.name is not None
    core.patch_namespaced_pod(
        pod.metadata.name,
        namespace,
        {"metadata": {"annotations": {"batchq.dev/simulate": "complete"}}},
    )
    wait_for(cp, "Job gate Complete", lambda: job_condition(batch, namespace, "gate", "Complete"))
