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
import gc  # noqa: E402
import os  # noqa: E402
import uuid  # noqa: E402

from tests.cluster.namespaces import release_result_finalizers  # noqa: E402
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


@pytest.fixture(autouse=True, scope="module")
def garbage_collected_after_cluster_modules(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module with tests on the API server collects the garbage as its last test ends,
    once the fixtures have closed their clients: a socket the module left open is reported
    in that test's teardown, not in whichever later test the collector happened to run in.
    (Once a module, not a test: a full collection takes 0.1-0.3 s in this process.)"""
    yield
    module = request.module
    if any(item.get_closest_marker("kubernetes") is not None
           for item in request.session.items if getattr(item, "module", None) is module):
        gc.collect()


@pytest.fixture
def k8s_namespace(k8s_cluster: Any) -> Iterator[str]:
    name = f"bq-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    # a Job whose result was never recorded would hold the namespace Terminating for good
    release_result_finalizers(k8s_cluster, name)  # (tests/cluster/namespaces.py)


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


# --- a real S3 server (SeaweedFS) for preservation storage, issue 8 §3
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One SeaweedFS for the session. It is built by scripts/build-test-s3 (scripts/test
    runs it when CI=true or BATCHQ_SETUP_PARTS=1), never by a fixture: a cold build takes
    many minutes. Missing, it fails the test under CI=true and skips it elsewhere."""
    import shutil as _shutil

    from tests.s3.server import S3Server, weed_binary

    binary = weed_binary()
    if not binary.is_file():
        why = (f"the S3 test server is not built ({binary}): run scripts/build-test-s3"
               " (Go >= 1.26), or scripts/test with BATCHQ_SETUP_PARTS=1")
        if _shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
            why += "; this machine has no Go toolchain to build it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    server = S3Server(tmp_path_factory.mktemp("s3"), binary)
    try:
        yield server
    finally:
        server.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the S3 server carry the `s3` mark, so `-m "not s3"` deselects them."""
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)


@pytest.fixture
def kube(k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
         tmp_path: Path) -> Iterator[tuple[Harness, KubeWorld, Any]]:
    """A Kubernetes harness (leader election off) with its world, in a namespace of its own;
    the test files that use it are marked `kubernetes`."""
    api = k8s_cluster.api_client()
    world = KubeWorld(api, k8s_namespace)
    h = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig),
                leader_election=False)
    try:
        yield h, world, k8s_cluster
    finally:
        h.close()
        world.close()
        api.close()
