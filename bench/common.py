"""Shared by the benchmarks: a Git repository committed in one step."""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit_all(root: Path, message: str = "bench") -> None:
    env = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", *cmd], cwd=root, env=env, check=True)
