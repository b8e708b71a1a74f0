"""Reports the exit of the local runner's children: one thread waits for all of them.

Each child is watched through a pidfd (Linux 5.3+), which becomes readable when the child
exits; one thread waits on every pidfd in one epoll set, reaps the child that ended and
calls its callback (which wakes the reconcile loop). A thread per child cost a thread start
per job (0.6 ms, most of it under the GIL, on the loop's own thread). Where pidfds are not
available (ENOSYS: a kernel before 5.3; EPERM: a seccomp filter that does not know the
call), each child gets a thread that waits for it instead, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
OnExit = Callable[[], None]
UNSUPPORTED = (errno.ENOSYS, errno.EPERM, errno.EACCES)  # no pidfds here: a thread per child


class ExitWaiter:
    """Calls `on_exit` (from its thread) once the child it was given has exited and been
    reaped; `pidfd=False` (or a kernel without pidfds) waits with a thread per child."""

    def __init__(self, pidfd: bool = True) -> None:
        self._pidfd = pidfd and hasattr(os, "pidfd_open")
        self._watched: dict[int, tuple[subprocess.Popen[bytes], OnExit]] = {}  # by pidfd
        self._epoll: select.epoll | None = None
        self._lock = threading.Lock()  # guards the start of the one waiting thread

    def watch(self, proc: subprocess.Popen[bytes], on_exit: OnExit) -> None:
        """Call `on_exit` when `proc` (a child not yet reaped) has exited."""
        if self._pidfd:
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    self._pidfd = False  # never here: stop asking
                log.debug("pidfd_open(%d): %s; waiting with a thread", proc.pid, exc)
            else:  # known before it is registered: an exit may be reported at once
                self._watched[fd] = (proc, on_exit)
                self._waiting().register(fd, select.EPOLLIN)
                return
        threading.Thread(target=_wait_one, args=(proc, on_exit), daemon=True).start()

    @property
    def uses_pidfds(self) -> bool:
        return self._pidfd

    def _waiting(self) -> select.epoll:
        """The epoll set the waiting thread polls; both made on the first child."""
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, args=(self._epoll,), daemon=True,
                                 name="batchq-job-exits").start()
            return self._epoll

    def _run(self, epoll: select.epoll) -> None:
        while True:
            for fd, _ in epoll.poll():
                proc, on_exit = self._watched.pop(fd)
                epoll.unregister(fd)
                os.close(fd)
                _reap_and_report(proc, on_exit)


def _wait_one(proc: subprocess.Popen[bytes], on_exit: OnExit) -> None:
    proc.wait()
    _reap_and_report(proc, on_exit)


def _reap_and_report(proc: subprocess.Popen[bytes], on_exit: OnExit) -> None:
    """Reap the ended child (no zombie left) and report it; a failing callback is logged,
    not allowed to end the thread that reports every other child."""
    try:
        proc.wait()
        on_exit()
    except Exception:  # the scan records the job if this report is lost
        log.exception("reporting the exit of job process %d failed", proc.pid)


# one waiting thread for every runner of the process
WAITER = ExitWaiter()
