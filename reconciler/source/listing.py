"""The batch files at the synced commit, known from the diff where it can and listed from
the tree only when something asks about a file the diff did not touch.

After a diff sync the apply step asks about the files the diff touched (their batches are
new, edited or gone), so a commit that changes 1 file of 10,000 need not list 10,000
names; a full listing happens only for what needs every name (the access policy, a full
prune) or a file outside the diff (a batch name claimed by another file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Set


class BatchFiles(Set[str]):
    """Every `batches/` file at a commit, as a read-only set."""

    def __init__(self, known: Mapping[str, bool], list_all: Callable[[], set[str]]) -> None:
        self._known = dict(known)  # path -> present at the commit (what the diff says)
        self._list_all = list_all
        self._all: frozenset[str] | None = None

    def _listed(self) -> frozenset[str]:
        if self._all is None:
            self._all = frozenset(self._list_all())
        return self._all

    def __contains__(self, path: object) -> bool:
        if isinstance(path, str) and path in self._known:
            return self._known[path]
        return path in self._listed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed())

    def __len__(self) -> int:
        return len(self._listed())

    def __repr__(self) -> str:
        return f"BatchFiles({sorted(self._listed())!r})"
