"""kube-score finds nothing critical (nor a warning) in `kubectl kustomize deploy/`, nor in a
worker Job as the Kubernetes backend renders it (issue 9 §2).

kube-score is built from the Go module proxy by `scripts/build-kube-score` (which
`scripts/setup-test-parts` runs under CI=true) into ~/.cache/batchq; kubectl is the test
control plane's. Missing, the test skips naming the command, and fails under CI=true.
Deliberate exceptions are `kube-score/ignore` annotations, each with its reason beside it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.control.jobs import build_job
from reconciler.domain.model import DEFAULT_IMAGE, Item, Profile
from reconciler.store.kubernetes.jobs import job_manifest
from tests.cluster.controlplane import expected_bin_dir

ROOT = Path(__file__).resolve().parent.parent


def tool(path: Path, build: str) -> Path:
    if path.is_file():
        return path
    why = f"{path} is not built: run {build}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def kube_score() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "build-kube-score"), "--print-path"],
                         capture_output=True, text=True, check=True)
    return tool(Path(out.stdout.strip()), "scripts/build-kube-score")


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kubectl = tool(expected_bin_dir() / "kubectl", "scripts/build-test-cluster")
    rendered = subprocess.run([str(kubectl), "kustomize", str(ROOT / "deploy")],
                              capture_output=True, text=True, check=True).stdout
    path = tmp_path_factory.mktemp("deploy") / "deploy.yaml"
    path.write_text(rendered)
    return path


def score(kube_score: Path, *files: Path) -> tuple[int, list[str]]:
    """kube-score's exit code and its findings that are not OK or skipped."""
    out = subprocess.run([str(kube_score), "score", "--output-format", "ci", *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    found = [line for line in out.stdout.splitlines()
             if line.startswith(("[CRITICAL]", "[WARNING]"))]
    return out.returncode, found


def test_the_deploy_manifests_pass_kube_score(kube_score: Path, deploy: Path) -> None:
    code, found = score(kube_score, deploy)
    assert found == [] and code == 0, "\n".join(found)


def test_a_rendered_worker_job_passes_kube_score(kube_score: Path, deploy: Path,
                                                  tmp_path: Path) -> None:
    """Scored with deploy/, whose NetworkPolicy batchq-workers is the one its pod falls
    under; a profile that names no resources still gets requests and limits."""
    demo = yaml.safe_load((ROOT / "manifests" / "profiles" / "demo.yaml").read_text())
    profile = Profile.from_dict("demo", demo["spec"])
    spec = build_job("maps-2026-11", Item(id="map-001", url="http://127.0.0.1/map-001.tif"),
                     1, profile, suspended=False, git_dir=None, commit="c0ffee",
                     file_roots=(), storage_root="/var/lib/batchq/storage/storage")
    owner = [{"apiVersion": "batchq.dev/v1", "kind": "Batch", "name": "maps-2026-11",
              "uid": "8c0b2e4e-0000-4000-8000-000000000000", "controller": True,
              "blockOwnerDeletion": True}]
    job = job_manifest(spec, owner)
    job["metadata"]["namespace"] = "batchq"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_IMAGE
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code, found = score(kube_score, deploy, path)
    assert found == [] and code == 0, "\n".join(found)


def test_the_default_image_is_tagged_with_the_projects_version() -> None:
    """Never `latest`: the image tag the deploy, the Dockerfile's build and a profile
    without an image all use is pyproject's version."""
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text()
                   .splitlines() if line.startswith("version = "))
    assert f"batchq:{version}" == DEFAULT_IMAGE
    for name in ("reconciler.yaml", "web.yaml"):
        for doc in yaml.safe_load_all((ROOT / "deploy" / name).read_text()):
            if doc["kind"] == "Deployment":
                images = {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
                assert images == {DEFAULT_IMAGE}, name
