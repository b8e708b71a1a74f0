"""The image (deploy/Dockerfile) works: `batchq --help` through its entrypoint, as its own
non-root user, `batchq demo` (the whole story), and the worker fetching a payload from a
server on loopback and verifying its digest (issue 9 §2).

Built by `scripts/build-image` (buildah, `--isolation chroot`, from a Debian base made with
mmdebstrap; `scripts/setup-test-parts` runs it under CI=true); run here with `buildah run`
in chroot isolation, which shares this host's network, so loopback is the test's.
Missing, the tests skip naming the command, and fail under CI=true.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import PayloadServer

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BATCHQ_CACHE") or Path.home() / ".cache" / "batchq")
BUILDAH = ["buildah", "--root", str(CACHE / "containers" / "storage"), "--runroot",
           str(CACHE / "containers" / "run"), "--storage-driver", "vfs"]

pytestmark = pytest.mark.image


def missing(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    """A working container of the built image (its filesystem, config and user)."""
    if shutil.which("buildah") is None:
        missing("buildah is not installed (apt-get install buildah mmdebstrap)")
    image = subprocess.run([str(ROOT / "scripts" / "build-image"), "--print-name"],
                           capture_output=True, text=True, check=True).stdout.strip()
    found = subprocess.run([*BUILDAH, "inspect", "--type", "image", image],
                           capture_output=True, text=True)
    if found.returncode != 0:
        missing(f"the image {image} is not built: run scripts/build-image")
    ctr = subprocess.run([*BUILDAH, "from", image], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield ctr
    finally:
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True, check=False)


def run(ctr: str, *command: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", *flags, ctr, "--",
                           *command], capture_output=True, text=True, timeout=timeout)


def test_batchq_help_through_the_entrypoint_as_a_non_root_user(container: str) -> None:
    config = subprocess.run([*BUILDAH, "inspect", "--format",
                             "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}", container],
                            capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert config[0] == "10001:10001"
    assert config[1].strip() == "[tini -- batchq]"
    helped = run(container, "tini", "--", "batchq", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "reconcile" in helped.stdout and "demo" in helped.stdout
    ids = run(container, "id", "-u")
    assert ids.stdout.strip() == "10001", ids


def test_the_locked_dependencies_are_what_is_installed(container: str) -> None:
    wanted = {line.split("==")[0].lower(): line.split("==")[1].split()[0]
              for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    frozen = run(container, "pip", "freeze", "--all")
    assert frozen.returncode == 0, frozen.stderr
    have = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for line in frozen.stdout.splitlines() if "==" in line}
    for name, version in wanted.items():
        assert have.get(name.replace("_", "-")) == version, (name, version)


def test_batchq_demo_runs_the_whole_story_inside(container: str) -> None:
    demo = run(container, "batchq", "demo", timeout=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "maps-2026-11" in demo.stdout and "letters-2026-11" in demo.stdout


def test_the_worker_fetches_and_verifies_a_payload_inside(container: str,
                                                          payloads: PayloadServer) -> None:
    body = b"a payload fetched from inside the image\n"
    item = payloads.add("inside", body, gated=False)
    env = {"BATCHQ_BATCH": "img", "BATCHQ_ITEM_ID": "inside", "BATCHQ_ITEM_URL": item["url"],
           "BATCHQ_STORAGE": "/tmp/storage", "BATCHQ_ITEM_SIZE": str(len(body)),
           "BATCHQ_DIGEST_ALGORITHM": "sha256",
           "BATCHQ_DIGEST_VALUE": hashlib.sha256(body).hexdigest(),
           "BATCHQ_ALLOWED_PREFIXES": payloads.base,
           "BATCHQ_TERMINATION_LOG": "/tmp/termination-log"}
    ok = run(container, "python", "-m", "reconciler.worker", env=env)
    assert ok.returncode == 0, ok.stderr
    wrong = run(container, "python", "-m", "reconciler.worker",
                env={**env, "BATCHQ_DIGEST_VALUE": "0" * 64, "BATCHQ_STORAGE": "/tmp/s2"})
    assert wrong.returncode != 0 and "digest mismatch" in wrong.stderr, wrong.stderr
