"""Guard rails an operator expects (issue 7 §4), each through the real `batchq` command:
a commit of hundreds of batch files, job deadlines, hostile text in names, titles and
messages, and a state dir that runs out of space."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures import ADMIN, GitRepo

QUEUE_PAUSED = {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": {"paused": True}}


def batchq(*args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "batchq.sqlite3")


def plain_profile(prefix: str = "http://127.0.0.1/", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
            "spec": {"allowedUrlPrefixes": [prefix],
                     "notification": {"from": "batchq@example.org"}, **spec}}


def numbered_batch(n: int, version: int) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Batch",
            "spec": {"profile": "test", "depositor": {"name": "D", "email": "d@example.org"},
                     "manifest": {"items": [{"id": "item-1",
                                             "url": f"http://127.0.0.1/{n}/v{version}"}]}}}


# --- a commit of many files -----------------------------------------------------------------
def test_hundreds_of_files_sync_each_with_the_commit_that_last_changed_it(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """300 files over three commits, read whole (first sync) and then as a diff: every batch
    gets its own content and the revision of the commit that last touched its file."""
    git_repo.write("profiles/test.yaml", plain_profile())
    git_repo.write("queue.yaml", QUEUE_PAUSED)  # nothing runs: this is about the sync
    for n in range(300):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 1))
    first = git_repo.commit("add 300 batches")
    for n in range(0, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 2))
    second = git_repo.commit("edit every third batch", who=ADMIN)
    state = tmp_path / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--once"]
    assert (done := batchq(*args)).returncode == 0, done.stderr

    def stored() -> dict[str, tuple[str, str, int]]:
        with db(state) as c:
            rows = c.execute("SELECT name, source_revision, spec_json, generation FROM batches")
            return {name: (rev, json.loads(spec)["manifest"]["items"][0]["url"], gen)
                    for name, rev, spec, gen in rows}

    def url(n: int, version: int) -> str:
        return f"http://127.0.0.1/{n}/v{version}"

    assert stored() == {f"b-{n:03d}": (second, url(n, 2), 1) if n % 3 == 0
                        else (first, url(n, 1), 1) for n in range(300)}

    for n in range(1, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 3))
    third = git_repo.commit("edit the next third")
    assert (done := batchq(*args)).returncode == 0, done.stderr
    expected = {}
    for n in range(300):
        expected[f"b-{n:03d}"] = ((second, url(n, 2), 1) if n % 3 == 0
                                  else (third, url(n, 3), 2) if n % 3 == 1
                                  else (first, url(n, 1), 1))
    assert stored() == expected
