"""An overall deadline for a conversation over sockets.

A socket timeout bounds each read, not the whole exchange: a peer that trickles a byte a
second never trips it. `SocketDeadline` shuts every socket attached to it down when the
deadline passes, which wakes a read blocked in the kernel; `expired` then tells the caller
why its read failed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SocketDeadline:
    """Shuts the attached sockets down `seconds` from now; `cancel` when done."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._ends = time.monotonic() + max(seconds, 0.0)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # The plain socket method, also for an SSLSocket: SSLSocket.shutdown would drop
        # the TLS object under a thread that is still reading from it.
        with contextlib.suppress(OSError):  # already closed: nothing left to wake
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shutdown(sock)

    def cancel(self) -> None:
        with self._lock:
            self._timer.cancel()
            self._socks.clear()
