"""Everything the reconciler can refuse from a repository alone, for `batchq validate`.

The file checks are `reconciler.spec.validation` (the reconciler's sync runs the same ones).
On top of them this module runs the reconciler's own admission code where it needs no
network: a batch whose manifest is a file of the repository (`manifest.url: file:...`) is
read and parsed by `resolve_items`, as the controller does when it admits the batch. It
also warns about what would only fail at run time (a `file:` payload that is not in the
repository) and flags files the reconciler never reads (`spec.layout`), which would
otherwise validate and then do nothing.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.domain.model import DNS_LABEL, BatchSpec, Profile
from reconciler.manifests.repofiles import BlobStream, RepoFileError, RepoSnapshot
from reconciler.manifests.resolve import ManifestError, resolve_items
from reconciler.spec.layout import ignored_reason, is_relevant
from reconciler.spec.validation import (
    Problem,
    _batch_urls,
    _files,
    _read,
    _repository_root,
    check_document,
    format_path,
    validate_repo_paths,
)
from reconciler.spec.yamlsafe import LoadedDocument
from reconciler.support.urls import UrlRefused, check_url, parse_url

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True, order=True)
class Finding:
    """A problem and how bad it is: an error fails validation, a warning does not."""

    problem: Problem
    severity: str = ERROR

    def __str__(self) -> str:
        tag = "warning: " if self.severity == WARNING else ""
        p = self.problem
        return f"{p.path}:{p.line}:{p.col}: {tag}{p.message}"


@dataclass(frozen=True)
class WorkTreeSnapshot(RepoSnapshot):
    """The repository as its work tree holds it now (before the commit `validate` checks),
    read with the same refusals as a commit's tree: no links, no directories."""

    def open(self, path: str, shown: str) -> tuple[BlobStream, int]:
        file = self.git_dir / path
        try:
            mode = file.lstat().st_mode
        except OSError:
            raise RepoFileError(f"cannot read {shown}: not in the repository", refused=False
                                ) from None
        if stat.S_ISLNK(mode):
            raise RepoFileError(f"{shown} is a symbolic link in the repository; links are not"
                                " followed", refused=True)
        if not stat.S_ISREG(mode):
            raise RepoFileError(f"{shown} is a directory in the repository, not a file",
                                refused=True)
        return _FileStream(file), file.stat().st_size


class _FileStream(BlobStream):
    """A work-tree file read as a blob is (`read1`, `close`)."""

    def __init__(self, file: Path) -> None:  # no git process: the file itself
        self._fh = open(file, "rb")  # noqa: SIM115 - closed by close(), as a blob stream

    def read1(self, size: int) -> bytes:
        return self._fh.read1(size)

    def close(self) -> None:
        self._fh.close()


def _git_root(file: Path) -> Path | None:
    """The repository a file belongs to: the nearest directory with `.git`, `batches/` or
    `profiles/` at or above the file's folder."""
    for parent in file.absolute().parents:
        if any((parent / marker).exists() for marker in (".git", "batches", "profiles")):
            return parent
    return None


def _placement(file: Path, named: bool) -> Finding | bool | None:
    """Whether the reconciler reads the file (True), never reads one that looks meant for
    it (a Finding), or it is none of its business (None: a manifest list, a workflow file
    found in a directory; a file named on the command line is always checked)."""
    root = _git_root(file)
    if root is None:
        return True
    rel = file.absolute().relative_to(root).as_posix()
    why = ignored_reason(rel)
    if why:
        return Finding(Problem(str(file), 1, 1, why))
    return True if named or is_relevant(rel) else None


def _spec_of(doc: LoadedDocument) -> dict[str, Any] | None:
    if not isinstance(doc.data, dict) or doc.data.get("kind") != "Batch":
        return None
    spec = doc.data.get("spec")
    return spec if isinstance(spec, dict) else None


def _profile(root: Path, name: str) -> Profile | None:
    """The batch's profile when its file is valid (else the batch check already said so)."""
    doc = _read(root / "profiles" / f"{name}.yaml")
    if isinstance(doc, Problem) or check_document(doc, "Profile"):
        return None
    spec = doc.data.get("spec") if isinstance(doc.data, dict) else None
    return Profile.from_dict(name, spec if isinstance(spec, dict) else {})


def _missing_payload(root: Path, url: str) -> bool:
    """A relative `file:` URL whose file is not in the work tree (not a refusal: a depositor
    may commit the payload later, and the job fails until then)."""
    try:
        where = parse_url(url)
    except UrlRefused:
        return False  # refused by the URL check, at its line
    return where.scheme == "file" and not where.absolute and not (root / where.path()).is_file()


def _check_batch(file: Path, doc: LoadedDocument,
                 file_roots: Sequence[str | Path]) -> list[Finding]:
    spec = _spec_of(doc)
    root = _repository_root(file)
    if spec is None or root is None or check_document(doc, "Batch"):
        return []  # a batch that is not valid on its own is reported as such
    name = spec.get("profile")
    profile = _profile(root, name) if isinstance(name, str) and DNS_LABEL.fullmatch(name) else None
    found: list[Finding] = []
    for at, url in _batch_urls(doc):
        if at[-1] == "url" and len(at) > 3 and _missing_payload(root, url):
            found.append(Finding(Problem.at(doc, doc.position(at), (
                f"{format_path(at)}: {url} is not in the repository: the job fails until the"
                " file is committed")), WARNING))
    manifest_url = spec["manifest"].get("url")
    if profile is None or not isinstance(manifest_url, str):
        return found
    try:
        where = parse_url(manifest_url)
        check_url(manifest_url, profile.allowed_prefixes, file_roots=file_roots)
    except UrlRefused:
        return found  # said at its line by the file checks
    if where.scheme != "file" or where.absolute:
        return found  # downloaded at admission: not something to do offline
    at = ("spec", "manifest", "url")
    try:
        items = resolve_items(BatchSpec.from_dict(spec), profile,
                              repo=WorkTreeSnapshot(root, "work tree"), file_roots=file_roots,
                              max_bytes=profile.manifest_max_bytes,
                              timeout=profile.manifest_timeout)
    except ManifestError as exc:
        found.append(Finding(Problem.at(doc, doc.position(at), f"{format_path(at)}: {exc}")))
        return found
    for item in items:
        if _missing_payload(root, item.url):
            found.append(Finding(Problem.at(doc, doc.position(at), (
                f"{format_path(at)}: item {item.id!r}: {item.url} is not in the repository:"
                " the job fails until the file is committed")), WARNING))
    return found


def check_paths(paths: list[str], *, file_roots: Sequence[str | Path] = ()) -> list[Finding]:
    """`batchq validate`: every problem of the files and directories named, in file order."""
    found: list[Finding] = []
    read: list[Path] = []  # the files the reconciler would read: only they claim names
    named = {Path(p).absolute() for p in paths if not Path(p).is_dir()}
    for file in _files(paths):
        placed = _placement(file, file.absolute() in named)
        if isinstance(placed, Finding):
            found.append(placed)
        elif placed:
            read.append(file)
    found += [Finding(p) for p in validate_repo_paths([str(f) for f in read],
                                                      file_roots=file_roots)]
    for file in read:
        doc = _read(file)
        if not isinstance(doc, Problem):
            found += _check_batch(file, doc, file_roots)
    return sorted(found)


def count_files(paths: list[str]) -> int:
    """How many files `check_paths` looked at (for the one-line summary)."""
    named = {Path(p).absolute() for p in paths if not Path(p).is_dir()}
    return sum(_placement(f, f.absolute() in named) is not None for f in _files(paths))

