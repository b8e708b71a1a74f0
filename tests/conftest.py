from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import GitRepo, PayloadServer, SmtpServer


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def payloads() -> Iterator[PayloadServer]:
    server = PayloadServer()
    yield server
    server.close()


# --- both backends (DESIGN §9): the same scenarios on SQLite and on a real API server
import uuid  # noqa: E402

from tests.harness import Harness  # noqa: E402
from tests.world import KubeWorld, LocalWorld  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One control plane for the session, with the Batch CRD installed."""
    from tests.cluster.controlplane import cluster_or_skip

    cp = cluster_or_skip(tmp_path_factory, "k8s")
    try:
        cp.kubectl("apply", "-f", str(ROOT / "deploy" / "crds" / "batches.batchq.dev.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/batches.batchq.dev")
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def k8s_namespace(k8s_cluster: Any) -> Iterator[str]:
    name = f"bq-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(params=["local", pytest.param("kubernetes", marks=pytest.mark.kubernetes)])
def backend(request: pytest.FixtureRequest) -> str:
    """The marks are set at collection, so `-m "not kubernetes"` deselects those cases."""
    return str(request.param)


@pytest.fixture
def world_and_harness(backend: str, request: pytest.FixtureRequest, git_repo: GitRepo,
                      smtp: SmtpServer, tmp_path: Path) -> Iterator[tuple[Any, Harness]]:
    """A World (what runs jobs) and a Harness (the reconciler) on the chosen backend."""
    world: Any
    if backend == "local":
        payloads = request.getfixturevalue("payloads")
        world = LocalWorld(payloads)
        h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    else:
        cp = request.getfixturevalue("k8s_cluster")
        ns = request.getfixturevalue("k8s_namespace")
        api = cp.api_client()
        world = KubeWorld(api, ns)
        h = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                    namespace=ns, kubeconfig=str(cp.kubeconfig), leader_election=False)
        h.world_api = api
        h.cluster = cp
    h.world = world
    try:
        yield world, h
    finally:
        h.close()
        world.close()
        if backend == "kubernetes":
            api.close()
