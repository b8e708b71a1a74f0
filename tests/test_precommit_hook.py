"""The shipped `.pre-commit-hooks.yaml`, run by the real `pre-commit` on a real batch
repository (issue 10 §2): three lines of config, and a broken batch file cannot be
committed; the message is `batchq validate`'s, at the file's line.

pre-commit installs the hook repository (a commit of this project) into a virtual
environment of its own with pip. The test keeps that offline: pip gets no index and no
dependencies (`PIP_NO_INDEX`, `PIP_NO_DEPS`), and the hook finds batchq's dependencies
through PYTHONPATH from this test environment; batchq itself is the copy pre-commit built
from the hook repository.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
from pathlib import Path

from tests.fixtures import GitRepo, batch_doc, profile_doc

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml", "reconciler", "web")


def _hook_repository(where: Path) -> str:
    """This project as a hook repository: its files committed; returns the commit."""
    hook = GitRepo(where)
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, where / name)
    return hook.commit("batchq")


def _pre_commit(repo: GitRepo, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache), "PIP_NO_INDEX": "1",
           "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0",
           "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    return subprocess.run(args, cwd=repo.path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_hook_refuses_a_broken_batch_commit(tmp_path: Path) -> None:
    rev = _hook_repository(tmp_path / "batchq")
    repo = GitRepo(tmp_path / "batches-repo")
    repo.write(".pre-commit-config.yaml", (
        f"repos:\n  - repo: {tmp_path / 'batchq'}\n    rev: {rev}\n"
        "    hooks: [{id: batchq-validate}]\n"))
    repo.write("profiles/test.yaml", profile_doc("http://127.0.0.1:1/"))
    repo.commit("pre-commit config and a profile")
    pre_commit = str(Path(site.getsitepackages()[0]).parents[2] / "bin" / "pre-commit")
    installed = _pre_commit(repo, tmp_path / "cache", pre_commit, "install")
    assert installed.returncode == 0, installed.stderr

    bad = batch_doc([{"id": "a", "url": "http://elsewhere.example/a"}])
    repo.write("batches/bad.yaml", bad)
    repo.git("add", "-A")
    refused = _pre_commit(repo, tmp_path / "cache", "git", "commit", "-q", "-m", "bad batch")
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    line, col = next((n, text.index("http") + 1) for n, text in enumerate(
        (repo.path / "batches/bad.yaml").read_text().splitlines(), 1) if "elsewhere" in text)
    assert (f"batches/bad.yaml:{line}:{col}: spec.manifest.items[0].url: URL"
            " http://elsewhere.example/a is not allowed by profile \"test\"") in said, said
    assert repo.git("rev-list", "--count", "HEAD") == "1"  # nothing was committed

    repo.write("batches/bad.yaml", batch_doc([{"id": "a", "url": "http://127.0.0.1:1/a"}]))
    repo.git("add", "-A")
    fixed = _pre_commit(repo, tmp_path / "cache", "git", "commit", "-q", "-m", "fixed batch")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert repo.git("rev-list", "--count", "HEAD") == "2"
