"""A signed push delivered through the Service `batchq-hooks` by name, on deploy/ applied
for real (issue 9 §2): the API server's service proxy resolves the Service through its
Endpoints/EndpointSlice and forwards the headers and body to the reconciler that leads.

The test cluster runs no kubelet (kwok fakes pods) and no kube-proxy or DNS, so the
reconciler is a local `batchq run --web` under the token of deploy/'s ServiceAccount,
listening on this host's own global address (the API server refuses to proxy to loopback;
traffic to the host's own address never leaves the host), and the test writes the
Service's endpoints by hand where a real cluster's endpoints controller would.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64decode, b64encode
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import GitRepo, SmtpServer, batch_doc, free_port, profile_doc, wait_for
from tests.test_kubernetes_deploy import NS, deployed, service_account_kubeconfig  # noqa: F401
from tests.test_kubernetes_hooks import get, up
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes
HOOKS = f"/api/v1/namespaces/{NS}/services/batchq-hooks:http/proxy/hooks/git"


def host_address() -> str | None:
    """This host's first global IPv4 address: the source a UDP socket connected to a
    TEST-NET address would use (connect sends no packet), if it is neither loopback nor
    link-local (the API server proxies to neither)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))
            address = ipaddress.IPv4Address(s.getsockname()[0])
    except OSError:
        return None
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    return str(address)


POD = "batchq-reconciler-on-this-host"


def point_the_service_at(cluster: Any, ip: str, port: int) -> None:
    """What the kubelet and the endpoints controllers do, by hand (kwok's pods run nothing):
    a reconciler pod from the Deployment's own template, bound to no real node, whose status
    says it runs, ready, at this host's address; and the Service's Endpoints and
    EndpointSlice naming that pod. The API server proxies only to an address a pod of the
    Service's namespace holds (its targetRef), so the pod is needed, not just the address."""
    deployment = cluster.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/"
                                        "batchq-reconciler")
    template = deployment["spec"]["template"]
    pod = cluster.request("POST", f"/api/v1/namespaces/{NS}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**template["metadata"], "name": POD, "namespace": NS},
        "spec": {**template["spec"], "nodeName": "this-host"},  # no scheduler, no kwok
    })
    pod["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}
    cluster.request("PUT", f"/api/v1/namespaces/{NS}/pods/{POD}/status", pod)

    service = cluster.request("GET", f"/api/v1/namespaces/{NS}/services/batchq-hooks")
    [svc_port] = service["spec"]["ports"]
    assert (svc_port["name"], svc_port["targetPort"]) == ("http", "http"), svc_port
    [container] = template["spec"]["containers"]
    assert {"name": "http", "containerPort": 8080}.items() <= container["ports"][0].items()
    target = {"kind": "Pod", "name": POD, "namespace": NS, "uid": pod["metadata"]["uid"]}
    # the pod's port `http`, which here is the local process's port, not 8080
    cluster.request("POST", f"/api/v1/namespaces/{NS}/endpoints", {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "batchq-hooks", "namespace": NS},
        "subsets": [{"addresses": [{"ip": ip, "targetRef": target}],
                     "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}],
    })
    cluster.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "batchq-hooks-by-hand", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "batchq-hooks"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "targetRef": target}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })


def forget_the_pod(cluster: Any) -> None:
    """No kubelet will confirm this pod's end: delete it at once, or the namespace waits."""
    try:
        cluster.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{POD}?gracePeriodSeconds=0")
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code != 404:
                raise


def release_the_jobs(cluster: Any) -> None:
    """After a failure midway the stopped reconciler leaves its result finalizers on Jobs it
    never recorded; take them off so the namespace can go and the next test can apply."""
    from kubernetes import client

    with cluster.api_client() as api:
        jobs = client.BatchV1Api(api)
        for job in jobs.list_namespaced_job(NS).items:
            if job.metadata.finalizers:
                jobs.patch_namespaced_job(job.metadata.name, NS,
                                          {"metadata": {"finalizers": None}})


def deliver_through_the_service(cluster: Any, body: bytes,
                                secret: str | None) -> tuple[int, str]:
    """POST the push to the Service by name through the API server, as the admin; the
    status and body that come back."""
    headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json",
               "X-GitHub-Event": "push"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(
            secret.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(cluster.server + HOOKS, data=body, method="POST",
                                 headers=headers)
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode(errors="replace")


def test_a_signed_push_through_the_service_syncs_the_leader_at_once(
        deployed: Any, git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:  # noqa: F811
    cluster = deployed
    ip = host_address()
    if ip is None:
        if os.environ.get("CI") == "true":
            pytest.fail("this host has no global IPv4 address: the API server cannot proxy "
                        "to the reconciler (it refuses loopback); CI must provide one")
        pytest.skip("this host has no global IPv4 address for the API server to proxy to")
    # the Secret an operator creates; the pod's env takes it by secretKeyRef
    secret = "webhook-" + os.urandom(8).hex()
    cluster.request("POST", f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "batchq-webhook", "namespace": NS},
        "data": {"secret": b64encode(secret.encode()).decode()}})
    stored = cluster.request("GET", f"/api/v1/namespaces/{NS}/secrets/batchq-webhook")
    env_secret = b64decode(stored["data"]["secret"]).decode()

    world = KubeWorld(cluster.api_client(), NS)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/first.yaml", batch_doc([world.item("s1", gated=False)]))
    git_repo.commit("first")
    kubeconfig = service_account_kubeconfig(cluster, "batchq-reconciler", tmp_path / "kc")
    port = free_port()
    base = f"http://{ip}:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--backend", "kubernetes", "--namespace",
         NS, "--kubeconfig", str(kubeconfig), "--repo", str(git_repo.path), "--state",
         str(tmp_path / "state"), "--smtp", smtp.hostport, "--interval", "600",
         "--web", f"{ip}:{port}"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "BATCHQ_WEBHOOK_SECRET": env_secret})
    try:
        wait_for(lambda: up(base), 60, what="the reconciler's web port")
        # one replica: it takes the Lease and is the one ready pod the Service reaches
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, what="the reconciler to lead")
        wait_for(lambda: "first" in batches(cluster), 60, what="the first pass")
        point_the_service_at(cluster, ip, port)

        git_repo.write("batches/second.yaml", batch_doc([world.item("s2", gated=False)]))
        head = git_repo.commit("second")
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        for wrong in ("a wrong secret", None):  # a bad signature, then none at all
            code, answer = deliver_through_the_service(cluster, body, wrong)
            assert code == 401, (wrong, answer)
        assert "second" not in batches(cluster)
        code, answer = deliver_through_the_service(cluster, body, secret)
        assert code == 202, answer
        # the interval is 10 minutes: only the delivery can have made this pass
        wait_for(lambda: "second" in batches(cluster), 60,
                 what="the pushed batch, synced on the delivery through the Service")
        # both run to the end, so the reconciler takes its result finalizers off the Jobs
        wait_for(lambda: batches(cluster) == {"first": "Completed", "second": "Completed"},
                 120, what="both batches to complete", detail=lambda: str(batches(cluster)))
    finally:
        forget_the_pod(cluster)
        proc.terminate()
        proc.wait(30)
        release_the_jobs(cluster)
        world.close()


def batches(cluster: Any) -> dict[str, str | None]:
    """Each Batch object's name and state."""
    found = cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{NS}/batches")
    return {b["metadata"]["name"]: b.get("status", {}).get("state") for b in found["items"]}
