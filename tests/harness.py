"""A reconciler under test, driven step by step (each step a pass or part of one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.model import Batch
from reconciler.source.sync import RepoState
from tests.fixtures import GitRepo, wait_for


class Harness:
    def __init__(self, repo: GitRepo, state_dir: Path, smtp: str | None,
                 backend: str = "local", **extra: Any) -> None:
        self.repo = repo
        self.settings = Settings(repo=str(repo.path), branch=repo.branch, state_dir=state_dir,
                                 smtp=smtp, backend=backend, interval=0.2, **extra)
        self.rec = Reconciler(self.settings)
        self.store = self.rec.store
        self.repo_state: RepoState | None = None
        self.world: Any = None
        self.world_api: Any = None
        self.cluster: Any = None

    def close(self) -> None:
        self.rec.close()

    def restart(self) -> None:
        """A new reconciler process on the same state (what a crash and restart leaves)."""
        self.rec.close()
        self.rec = Reconciler(self.settings)
        self.store = self.rec.store

    # --- steps
    def sync(self) -> RepoState:
        self.repo_state = self.rec.sync()
        return self.repo_state

    def reconcile(self) -> bool:
        if self.repo_state is None:
            self.sync()
        assert self.repo_state is not None
        return self.rec.reconcile(self.repo_state)

    def full_pass(self) -> bool:
        return self.rec.run_pass()

    def until(self, pred: Any, what: str, timeout: float = 60.0) -> None:
        """Let jobs run and the controller observe them until `pred` holds."""
        def step() -> None:
            self.rec.wake.wait(0.1)
            self.rec.wake.clear()
            self.rec.tick_jobs()
            self.reconcile()
        wait_for(pred, timeout=timeout, step=step, what=what)

    def until_idle(self, timeout: float = 60.0) -> int:
        return self.rec.run_until_idle(timeout=timeout)

    # --- observations
    def batch(self, name: str) -> Batch:
        b = self.store.get_batch(name)
        assert b is not None, f"no batch {name}"
        return b

    def state(self, name: str) -> str:
        return str(self.batch(name).status.state)

    def jobs(self, name: str) -> dict[str, str]:
        """Item id -> state of its current attempt, as the Batch status records it."""
        return {s.item.id: str(s.state) for s in self.store.list_items(name)}

    def attempts(self, name: str) -> dict[str, int]:
        return {s.item.id: s.attempts for s in self.store.list_items(name)}

    def job_names(self, name: str) -> list[str]:
        return sorted(j.name for j in self.store.list_jobs(name))
