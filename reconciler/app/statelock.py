"""One reconciler per state dir: an exclusive `flock` held for the process's lifetime.

Two reconcilers on one state dir would both start jobs and both send every report. The
lock is the kernel's, so it goes with the process however it ends (SIGKILL included), and
its file descriptor is not inherited by the jobs a reconciler starts, so a job that
outlives its reconciler does not keep the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class StateDirLocked(RuntimeError):
    """Another process holds the state dir: this one must not act on it."""


class StateLock:
    """`acquire()` or raise StateDirLocked; `release()` when done (idempotent)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "reconciler.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise StateDirLocked(
                f"another reconciler (pid {holder}) is using the state dir "
                f"{self.path.parent}: stop it first, or give this one its own --state"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
