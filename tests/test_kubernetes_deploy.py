"""deploy/ applied for real, and a whole story run by the reconciler under the token of the
ServiceAccount deploy/ makes (never the admin's), on an API server with the
OwnerReferencesPermissionEnforcement admission plugin (issue 9 §2).

The test control plane runs no kubelet that could run the image (kwok fakes pods), so the
reconciler runs as a local process (`python -m reconciler reconcile`) whose kubeconfig
holds a TokenRequest token of `batchq-reconciler`; the Deployments are applied but have
no controller here to start them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.namespaces import delete_namespace
from tests.fixtures import (
    ADMIN,
    GitRepo,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
)
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parent.parent
NS = "batchq"  # deploy/'s namespace


def service_account_kubeconfig(cluster: Any, account: str, path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of `account` (kubectl create token)."""
    token = cluster.kubectl("-n", NS, "create", "token", account, "--duration=1h").stdout
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": {"server": cluster.server,
                                                  "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": account, "user": {"token": token.strip()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": account,
                                               "namespace": NS}}],
    }))
    return path


@pytest.fixture
def deployed(k8s_cluster: Any) -> Any:
    """`kubectl apply -k deploy/` on the test API server; the namespace is deleted after."""
    applied = k8s_cluster.kubectl("apply", "-k", str(ROOT / "deploy"), check=False)
    assert applied.returncode == 0, applied.stderr
    try:
        yield k8s_cluster
    finally:  # gone before another test applies deploy/ again, whatever this one left
        delete_namespace(k8s_cluster, NS)


def test_a_whole_story_under_the_reconcilers_own_service_account(
        deployed: Any, git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    cluster = deployed
    kubeconfig = service_account_kubeconfig(cluster, "batchq-reconciler", tmp_path / "kc")
    who = cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == (
        "system:serviceaccount:batchq:batchq-reconciler")
    world = KubeWorld(cluster.api_client(), NS)  # plays the kubelet, with the admin's rights
    env = {"KUBECONFIG": str(kubeconfig)}
    common = ("--backend", "kubernetes", "--namespace", NS, "--kubeconfig", str(kubeconfig),
              "--repo", str(git_repo.path), "--state", str(tmp_path / "state"),
              "--smtp", smtp.hostport, "--until-idle", "--timeout", "120")
    try:
        items = [world.item("d1", gated=False), world.item("d2", fail=True, gated=False)]
        git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
        git_repo.write("batches/dep.yaml", batch_doc(items))
        git_repo.commit("depositor: submit")
        run = batchq("reconcile", *common, env=env)
        assert run.returncode == 0, run.stderr
        assert "forbidden" not in run.stderr.lower(), run.stderr  # no 403, events included
        assert state(cluster) == "Failed"
        assert smtp.mailbox.subjects() == ["Ingest: FAIL -- Submission Failed: dep"]
        # the admin restarts d2 once its payload is right, then asks for the update report
        world.set_outcome("d2", fail=False)
        git_repo.edit_batch("batches/dep.yaml", who=ADMIN, restarts={"d2": 1})
        assert batchq("reconcile", *common, env=env).returncode == 0
        git_repo.edit_batch("batches/dep.yaml", who=ADMIN, state="UpdateReporting")
        run = batchq("reconcile", *common, env=env)
        assert run.returncode == 0 and "forbidden" not in run.stderr.lower(), run.stderr
        assert state(cluster) == "Completed"
        assert smtp.mailbox.subjects()[-1] == "Ingest: OK -- Submission Updated: dep"
        jobs = cluster.kubectl("-n", NS, "get", "jobs", "-o", "name").stdout.split()
        assert sorted(jobs) == ["job.batch/dep-d1-1", "job.batch/dep-d2-1", "job.batch/dep-d2-2"]
        told = cluster.kubectl("-n", NS, "events", "--for", "batch/dep").stdout
        assert "Admitted" in told and "Restarted" in told and "ReportSent" in told, told
        # the file deleted: its Jobs go (deletecollection), the batch shows Deleted
        git_repo.remove("batches/dep.yaml")
        git_repo.commit("admin: delete", who=ADMIN)
        run = batchq("reconcile", *common, env=env)
        assert run.returncode == 0 and "forbidden" not in run.stderr.lower(), run.stderr
        assert state(cluster) == "Deleted"
        assert cluster.kubectl("-n", NS, "get", "jobs", "-o", "name").stdout.split() == []
    finally:
        world.close()


def test_the_web_account_only_reads(deployed: Any, tmp_path: Path) -> None:
    kubeconfig = service_account_kubeconfig(deployed, "batchq-web", tmp_path / "kc")

    def can(verb: str, resource: str) -> bool:
        out = deployed.kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", verb,
                               resource, "-n", NS, check=False)
        return bool(out.stdout.strip() == "yes")

    assert can("list", "batches.batchq.dev") and can("watch", "configmaps")
    for verb, resource in (("patch", "batches.batchq.dev"), ("create", "jobs.batch"),
                           ("update", "configmaps"), ("get", "secrets"),
                           ("create", "events.events.k8s.io")):
        assert not can(verb, resource), (verb, resource)


def state(cluster: Any) -> str:
    doc = cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{NS}/batches/dep")
    return str(doc["status"]["state"])
