"""A container (zip or tar) unpacked safely into the object's files (issue 8 §2).

A container comes from a depositor and is not trusted. Nothing in it is extracted by the
archive library: every member's bytes are copied by this module to a path it builds from
the member's checked name, so:
- a name is a safe path within the object (`domain.objects.name_problem`: no absolute
  path, no `..`, no backslash or control character; a leading `./` is dropped), once;
- a symbolic link is refused (a link has no place in preservation storage, and one that
  points out is the classic escape), as are a hard link to anything but an earlier file
  of the same archive (then it is a copy of that file), and device files and FIFOs;
- the bytes actually written (never the sizes the archive announces) are bounded in all
  (`max_bytes`), and so is the member count (`max_members`): a decompression bomb stops
  at the bound with a one-line reason, and the caller removes what was written.
Each reason is an `UnpackRefused` whose message names the member.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from reconciler.domain.objects import name_problem
from reconciler.storage import StagedFile

MAX_MEMBERS = 10_000
CHUNK = 1024 * 1024


class UnpackRefused(Exception):
    """The container is refused; the message says which member and why."""


def detect_format(path: Path) -> str:
    """`zip` or `tar` by the content, for a container whose manifest did not say."""
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise UnpackRefused("the container is neither a zip nor a tar file")


class _Writer:
    """Copies members into `dest`, hashing and counting what it writes."""

    def __init__(self, dest: Path, algorithms: Sequence[str], max_bytes: int,
                 max_members: int, bound: str) -> None:
        self.dest, self.algorithms = dest, algorithms
        self.max_bytes, self.max_members, self.bound = max_bytes, max_members, bound
        self.total = 0
        self.files: dict[str, StagedFile] = {}

    def name(self, raw: str) -> str:
        name = raw
        while name.startswith("./"):
            name = name[2:]
        problem = name_problem(name)
        if problem:
            raise UnpackRefused(f"container member {raw!r} {problem}")
        if name in self.files:
            raise UnpackRefused(f"container member {raw!r} appears twice")
        if len(self.files) >= self.max_members:
            raise UnpackRefused(f"the container has more than {self.max_members} files")
        return name

    def write(self, name: str, source: IO[bytes]) -> None:
        target = self.dest.joinpath(*name.split("/"))
        if self.dest.resolve() not in target.resolve().parents:  # belt and braces
            raise UnpackRefused(f"container member {name!r} would leave the object")
        target.parent.mkdir(parents=True, exist_ok=True)
        hashers = {a: hashlib.new(a) for a in self.algorithms}
        size = 0
        with target.open("xb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise UnpackRefused(f"the container unpacks to more than {self.max_bytes}"
                                        f" bytes ({self.bound}); refused as a decompression"
                                        " bomb")
                for h in hashers.values():
                    h.update(chunk)
                out.write(chunk)
        self.files[name] = StagedFile(name, target, size,
                                      {a: h.hexdigest() for a, h in hashers.items()})


def _zip_members(path: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if info.is_dir() or stat.S_ISDIR(mode):
                continue
            if stat.S_ISLNK(mode):
                raise UnpackRefused(f"container member {info.filename!r} is a symbolic link;"
                                    " a container's files must be regular files")
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise UnpackRefused(f"container member {info.filename!r} is a device file or"
                                    " FIFO; a container's files must be regular files")
            name = writer.name(info.filename)
            with archive.open(info) as source:
                writer.write(name, source)


def _tar_members(path: Path, writer: _Writer) -> None:
    with tarfile.open(path, "r:*") as archive:
        for member in _tar_iter(archive):
            if member.isdir():
                continue
            if member.issym():
                raise UnpackRefused(f"container member {member.name!r} is a symbolic link"
                                    f" (to {member.linkname!r}); a container's files must be"
                                    " regular files")
            if member.islnk():
                earlier = writer.files.get(member.linkname.removeprefix("./"))
                if earlier is None:
                    raise UnpackRefused(f"container member {member.name!r} is a hard link to"
                                        f" {member.linkname!r}, which is not a file before it"
                                        " in the container")
                name = writer.name(member.name)
                with earlier.path.open("rb") as copy:
                    writer.write(name, copy)
                continue
            if not member.isreg():
                raise UnpackRefused(f"container member {member.name!r} is a device file or"
                                    " FIFO; a container's files must be regular files")
            name = writer.name(member.name)
            source = archive.extractfile(member)
            assert source is not None  # a regular member always has content
            with source:
                writer.write(name, source)


def _tar_iter(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one by one (as the archive is read, never the whole list first)."""
    while (member := archive.next()) is not None:
        yield member


READERS: dict[str, Callable[[Path, _Writer], None]] = {"zip": _zip_members, "tar": _tar_members}


def unpack(path: Path, fmt: str | None, dest: Path, *, algorithms: Sequence[str],
           max_bytes: int, max_members: int = MAX_MEMBERS, bound: str = "") -> list[StagedFile]:
    """The container's files, copied into `dest` (made afresh) and hashed with
    `algorithms`; raise UnpackRefused. `bound` explains `max_bytes` in the message."""
    fmt = fmt or detect_format(path)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    writer = _Writer(dest, algorithms, max_bytes, max_members, bound or f"at most {max_bytes}")
    try:
        READERS[fmt](path, writer)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise UnpackRefused(f"the container is not a readable {fmt} file: {exc}") from None
    except RuntimeError as exc:  # zipfile: an encrypted member
        raise UnpackRefused(f"the container cannot be read: {exc}") from None
    if not writer.files:
        raise UnpackRefused("the container holds no files")
    return list(writer.files.values())
