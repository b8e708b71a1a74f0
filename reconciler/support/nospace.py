"""A full disk under the state dir: recognised wherever it surfaces, told in one line.

"No space left" reaches batchq in several forms: an OSError (ENOSPC, or EDQUOT for a quota)
from writing the state lock, the heartbeat or a job dir; SQLite's "database or disk is
full" (SQLITE_FULL) from a write; a bare "disk I/O error" (SQLITE_IOERR_*, errno hidden)
when SQLite cannot grow its shared-memory file while opening the store; and git's "No
space left on device" on stderr when the mirror is fetched. Code that catches errors to
carry on (one batch's step, a failed fetch) lets these through: the disk is nobody's fault
in particular, and carrying on cannot help. The loop and the CLI wrap their work in
`no_space_is_fatal`, which turns every form into one `NoSpaceLeft` whose message names the
state dir and says what to do. Below NEARLY_FULL_BYTES, no job starts and no email is sent,
before anything fails half-way. Nothing is lost: every store write is a transaction, so the
next pass, with space back, redoes what the failed one did not finish.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")
NEARLY_FULL_BYTES = 1024 * 1024  # below: no job starts (kubelet: DiskPressure), no email
_SQLITE_FULL, _SQLITE_IOERR = 13, 10


class NoSpaceLeft(RuntimeError):
    """The state dir's file system is full: nothing more can be recorded until it is not."""

    def __init__(self, state_dir: Path, detail: str) -> None:
        super().__init__(
            f"no space left on device in the state dir {state_dir.absolute()} ({detail}):"
            " free space there, and batchq resumes where it stopped")
        self.state_dir = state_dir


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `path` (or of its
    nearest existing parent); None when that cannot be told."""
    where = path
    while True:  # the parents only when needed: a start asks this (a list of them cost more)
        try:
            st = os.statvfs(where)
        except FileNotFoundError:
            if where.parent == where:
                return None
            where = where.parent
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize


def nearly_full(path: Path) -> bool:
    free = free_bytes(path)
    return free is not None and free < NEARLY_FULL_BYTES


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _no_space(exc: BaseException, state_dir: Path | None) -> BaseException | None:
    """The exception in `exc`'s chain (itself, its cause or context) that says "full"."""
    for e in _chain(exc):
        if isinstance(e, NoSpaceLeft) or (isinstance(e, OSError)
                                          and e.errno in NO_SPACE_ERRNOS):
            return e
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            if code == _SQLITE_FULL or (code == _SQLITE_IOERR and state_dir is not None
                                        and nearly_full(state_dir)):
                return e
        if says_no_space(str(e)):  # git's stderr, SQLite's text
            return e
    return None


def says_no_space(text: str) -> bool:
    """Does a message (a job's, an error's) say that a disk was full?"""
    return any(words in text for words in NO_SPACE_WORDS)


def is_no_space(exc: BaseException, state_dir: Path | None = None) -> bool:
    """Does `exc` (or what caused it) say the disk is full? With `state_dir`, a SQLite I/O
    error while that file system is nearly full counts too (SQLite hides the errno)."""
    return _no_space(exc, state_dir) is not None


def _detail(exc: BaseException) -> str:
    """What failed, in a few words on one line."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return f"writing {exc.filename}" if exc.filename else str(exc.strerror)
    if isinstance(exc, sqlite3.Error):
        return f"the store: {exc}"
    for line in str(exc).splitlines():
        if any(words in line for words in NO_SPACE_WORDS):
            return " ".join(line.split())[:200]
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


@contextmanager
def no_space_is_fatal(state_dir: Path) -> Iterator[None]:
    """Turn any form of "no space left" raised inside into one NoSpaceLeft."""
    try:
        yield
    except Exception as exc:
        found = _no_space(exc, state_dir)
        if found is None or (found is exc and isinstance(exc, NoSpaceLeft)):
            raise
        if isinstance(found, NoSpaceLeft):
            raise found from exc
        raise NoSpaceLeft(state_dir, _detail(found)) from exc
