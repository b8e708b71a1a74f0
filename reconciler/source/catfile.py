"""Read many objects of a repository through one `git cat-file --batch` process.

A sync may read 10,000 files. One process per file costs a fork and exec each; asking a
persistent process one blob at a time (GitPython's object database) costs a round trip
each. Here every object name is written to one process by a writer thread while the
answers are read as they come, so the cost is one process and the bytes themselves.
A blob over the size limit is skipped over in chunks, never held in memory whole.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHUNK = 1024 * 1024


class CatFileError(RuntimeError):
    """The repository could not give an object it lists (a broken or half-written mirror)."""


@dataclass(frozen=True)
class BlobContent:
    """A blob's size, and its bytes (None when over the limit: not read)."""

    size: int
    data: bytes | None


class CatFileTimeout(CatFileError):
    """The reading took longer than the deadline given (the process was killed)."""


def read_blobs(git_dir: Path, shas: Iterable[str], *, limit: int,
               git: str = "git") -> dict[str, BlobContent]:
    """Each named blob (hex object names; repeats are read once), by name."""
    return read_objects(git_dir, shas, kind="blob", limit=limit, git=git)


def read_objects(git_dir: Path, shas: Iterable[str], *, kind: str, limit: int,
                 git: str = "git", timeout: float | None = None) -> dict[str, BlobContent]:
    """Each named object of `kind` (repeats are read once), by name; within `timeout`
    seconds if one is given, else CatFileTimeout."""
    wanted = list(dict.fromkeys(shas))
    if not wanted:
        return {}
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([git, "cat-file", "--batch"], cwd=git_dir, env=dict(os.environ),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None and proc.stdout is not None
        writer = threading.Thread(target=_write_names, args=(proc.stdin, wanted), daemon=True)
        writer.start()
        fired = threading.Event()  # the deadline passed and the process was killed

        def expire() -> None:
            fired.set()
            proc.kill()

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            found = {sha: _read_one(proc.stdout, sha, kind, limit) for sha in wanted}
        except CatFileError as exc:
            proc.kill()  # the writer then meets a closed pipe and ends
            if fired.is_set():
                raise CatFileTimeout(f"git cat-file took over {timeout:g} s") from None
            raise CatFileError(f"{exc}{_said(errors)}") from None
        except BaseException:
            proc.kill()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            writer.join()
            proc.stdout.close()
            code = proc.wait()
        if code != 0 and not fired.is_set():  # killed after the last answer: all read
            raise CatFileError(f"git cat-file exited with {code}{_said(errors)}")
    return found


def _said(errors: IO[bytes]) -> str:
    """What git wrote to stderr, if anything, for the message."""
    errors.seek(0)
    detail = errors.read(4096).decode(errors="replace").strip()
    return f" ({detail})" if detail else ""


def _write_names(stdin: IO[bytes], names: list[str]) -> None:
    """Feed every name, then end the input; a reader that stopped early closes the pipe."""
    try:
        for start in range(0, len(names), 1024):
            stdin.write("".join(f"{n}\n" for n in names[start:start + 1024]).encode())
        stdin.close()
    except (BrokenPipeError, ValueError):
        pass


def _read_one(stdout: IO[bytes], sha: str, want: str, limit: int) -> BlobContent:
    header = stdout.readline().decode(errors="replace").split()
    if len(header) != 3 or header[0] != sha:
        shown = " ".join(header) or "no answer"
        raise CatFileError(f"git cat-file could not read object {sha}: {shown}")
    kind, size = header[1], int(header[2])
    if kind != want:
        raise CatFileError(f"object {sha} is a {kind}, not a "
                           f"{'file' if want == 'blob' else want}")
    if size > limit:
        left = size + 1  # and the newline after the content
        while left:
            chunk = stdout.read(min(CHUNK, left))
            if not chunk:
                raise CatFileError(f"git cat-file ended inside object {sha}")
            left -= len(chunk)
        return BlobContent(size, None)
    data = stdout.read(size + 1)
    if len(data) != size + 1:
        raise CatFileError(f"git cat-file ended inside object {sha}")
    return BlobContent(size, data[:size])
