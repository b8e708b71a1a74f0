"""The push webhook reaches the reconciler that can act on it, and a site in a pod of its
own reads the loop's health and last sync from the store (issue 9 §2).

As deploy/ wires it: two `batchq run --web` replicas with the secret in
BATCHQ_WEBHOOK_SECRET (from the Secret batchq-webhook); only the leader is ready (/readyz),
so the Service batchq-hooks sends deliveries to it; `batchq web` elsewhere, with an empty
state dir, answers /healthz and "last sync" from the Lease the leader renews each pass.
Real processes on loopback, against the real API server (no kubelet here to run pods, and
no cluster DNS: the Service is checked to select exactly these pods' port by its spec).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import GitRepo, SmtpServer, batch_doc, free_port, profile_doc, wait_for
from tests.world import KubeWorld

ROOT = Path(__file__).resolve().parent.parent
SECRET = "the shared webhook secret"


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(json.loads(exc.read()))


def deliver(base: str, body: bytes, secret: str | None) -> int:
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(
            secret.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{base}/hooks/git", data=body, headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def up(base: str) -> bool:
    try:
        return get(f"{base}/livez")[0] == 200
    except OSError:
        return False


@pytest.mark.kubernetes
def test_the_hook_reaches_the_leader_and_the_site_reads_the_lease(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
        tmp_path: Path) -> None:
    world = KubeWorld(k8s_cluster.api_client(), k8s_namespace)
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("batches/first.yaml", batch_doc([world.item("h1", gated=False)]))
    git_repo.commit("first")
    env = {**os.environ, "BATCHQ_WEBHOOK_SECRET": SECRET}
    common = ["--backend", "kubernetes", "--namespace", k8s_namespace,
              "--kubeconfig", str(k8s_cluster.kubeconfig)]
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for name in ("a", "b"):  # the Deployment's two replicas; a starts first and leads
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", *common, "--repo",
                 str(git_repo.path), "--state", str(tmp_path / name), "--smtp", smtp.hostport,
                 "--interval", "600", "--web", f"127.0.0.1:{port}"], env=env))
            bases.append(f"http://127.0.0.1:{port}")
            wait_for(lambda: up(bases[-1]), 60, what=f"replica {name} to answer")
            if name == "a":
                wait_for(lambda: get(f"{bases[0]}/readyz")[0] == 200, 60, what="a to lead")
        leader, standby = bases
        wait_for(lambda: get(f"{standby}/healthz")[0] == 200, 60, what="b's loop")
        assert get(f"{standby}/readyz") == (503, {
            "status": "standing by", "reason": "another reconciler holds the Lease"})
        assert get(f"{leader}/readyz") == (200, {"status": "ready"})

        # a push: the signed delivery syncs at once (the interval is 10 minutes)
        git_repo.write("batches/second.yaml", batch_doc([world.item("h2", gated=False)]))
        head = git_repo.commit("second")
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        assert deliver(leader, body, "a wrong secret") == 401
        assert deliver(leader, body, None) == 401
        assert deliver(leader, body, SECRET) == 202
        path = f"/apis/batchq.dev/v1/namespaces/{k8s_namespace}/batches"
        wait_for(lambda: "second" in {b["metadata"]["name"] for b in
                                      k8s_cluster.request("GET", path)["items"]},
                 60, what="the pushed batch, synced on the webhook")

        # the site in a pod of its own: an empty state dir, health and last sync from the Lease
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "reconciler", "web", *common, "--state",
             str(tmp_path / "web"), "--listen", f"127.0.0.1:{port}"],
            env={k: v for k, v in env.items() if k != "BATCHQ_WEBHOOK_SECRET"}))
        site = f"http://127.0.0.1:{port}"
        wait_for(lambda: up(site), 60, what="the site")
        wait_for(lambda: get(f"{site}/healthz")[1].get("head") == head, 60,
                 what="the site to see the leader's last sync")
        code, health = get(f"{site}/healthz")
        assert code == 200 and health["status"] == "ok", health
        assert health["lastSyncAgeSeconds"] is not None and health["lastSyncAgeSeconds"] < 60
        assert not (tmp_path / "web" / "heartbeat.json").exists()
        assert deliver(site, body, SECRET) == 401  # the site has no secret: not its job
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        world.close()


def test_the_hooks_service_selects_the_reconcilers_http_port() -> None:
    """The Service the Git host's webhook is pointed at selects the reconciler pods (which
    serve /hooks/git and get the secret from the Secret), not the site's."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "reconciler.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deployment["spec"]["template"]
    assert service["metadata"]["name"] == "batchq-hooks"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert "--web" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["BATCHQ_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "batchq-webhook"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    web = list(yaml.safe_load_all((ROOT / "deploy" / "web.yaml").read_text()))
    [site] = [d for d in web if d["kind"] == "Service"]
    assert site["spec"]["selector"]["app.kubernetes.io/component"] == "web"
