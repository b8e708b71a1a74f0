"""Safe YAML loading for files that arrive from Git: positions kept, hostile input refused.

Batch files are written by depositors, so the loader treats every file as untrusted:

- the size is checked before anything is parsed (`max_bytes`), and bytes must be UTF-8;
- an event pass counts nodes and nesting depth before nodes are composed, because the C
  composer recurses per nesting level (a deep enough `[[[[...` crashes the interpreter) and
  keeps every node in memory;
- Python values are constructed here, not by PyYAML's constructor; first each node's
  expanded size is measured once per distinct node (an alias counts as a full copy of
  what it names), so a "billion laughs" document over `max_nodes` is refused before
  anything is expanded, and a recursive alias is refused;
- duplicate keys (PyYAML silently keeps the last), non-string keys (`yes:` is a boolean in
  YAML 1.1), more than one document and non-standard tags are errors.

Scalars resolve as `yaml.SafeLoader` resolves them (YAML 1.1: int, float, bool, null,
str), except that timestamps stay strings so the result is plain JSON-like data. Merge keys
(`<<: *base`) work as in SafeLoader. Every value's position is kept so that later errors
(schema, semantics) can point at `file:line:col`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    ScalarEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    _LOADER: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _LOADER = yaml.SafeLoader

DEFAULT_MAX_BYTES = 1_048_576
DEFAULT_MAX_NODES = 200_000
DEFAULT_MAX_DEPTH = 100

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"
# Tags whose scalar text is kept as a string: timestamps stay text (JSON has no dates), and
# `=` (the YAML 1.1 "value" key) has no SafeLoader constructor but is harmless text.
_TEXT_TAGS = {_TAG + "str", _TAG + "timestamp", _TAG + "value"}
# The characters PyYAML's reader accepts; checked here so both loaders report them alike.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
# SafeConstructor's scalar methods need no stream: reusing them keeps int/float/bool
# resolution (0x1F, 1_000, 1:30, .inf, yes/no, ...) identical to SafeLoader's.
_SCALARS = SafeConstructor()


class DocumentError(ValueError):
    """A file that cannot be loaded, with the position the reader should look at."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(path, line, col, message)
        self.path = path
        self.line = line
        self.col = col
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


@dataclass(slots=True)
class _Pos:
    """Where one value starts; `key` is where its mapping key starts, if it has one."""

    line: int
    col: int
    key: tuple[int, int] | None = None
    children: dict[str, _Pos] | list[_Pos] | None = None


@dataclass(frozen=True)
class LoadedDocument:
    """A loaded file: plain data plus the position of every value in it."""

    path: str
    data: Any
    _root: _Pos | None

    def _find(self, json_path: tuple[str | int, ...]) -> tuple[_Pos | None, bool]:
        """The deepest existing node along `json_path`, and whether it is the node itself."""
        node = self._root
        if node is None:
            return None, False
        for part in json_path:
            children = node.children
            found: _Pos | None = None
            if isinstance(children, dict) and isinstance(part, str):
                found = children.get(part)
            elif isinstance(children, list) and isinstance(part, int) and 0 <= part < len(children):
                found = children[part]
            if found is None:
                return node, False
            node = found
        return node, True

    def position(self, json_path: tuple[str | int, ...] = ()) -> tuple[int, int]:
        """1-based (line, column) of the value at `json_path`, else of its nearest parent."""
        node, _ = self._find(json_path)
        return (node.line, node.col) if node else (1, 1)

    def key_position(self, json_path: tuple[str | int, ...]) -> tuple[int, int]:
        """Like `position`, but a mapping entry points at its key: "unknown field" errors
        belong on the key's line, and so do errors about a block value under it."""
        node, exact = self._find(json_path)
        if node is None:
            return (1, 1)
        if exact and node.key is not None:
            return node.key
        return (node.line, node.col)


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index (for errors found before PyYAML runs)."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _mark(item: Node | Event) -> tuple[int, int]:
    """1-based (line, column) where a node or event starts."""
    mark = item.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _yaml_error(path: str, exc: yaml.YAMLError) -> DocumentError:
    """Map a PyYAML error to the position PyYAML reports, in words a depositor can act on."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        ctx = exc.context_mark
        if exc.context and exc.problem:
            where = ""
            if ctx is not None and mark is not None and ctx.index != mark.index:
                where = f" at line {ctx.line + 1}, column {ctx.column + 1}"
            message = f"{message} ({exc.context}{where})"
        if mark is not None:
            return DocumentError(path, mark.line + 1, mark.column + 1, f"invalid YAML: {message}")
    return DocumentError(path, 1, 1, f"invalid YAML: {exc}")


def _decode(data: bytes | str, path: str, max_bytes: int) -> str:
    """The document's text, refused when too large (before any parsing) or not UTF-8."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    check_size(size, path, max_bytes)
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            prefix = data[: exc.start]
            line_start = prefix.rfind(b"\n") + 1
            col = len(prefix[line_start:].decode("utf-8", "replace")) + 1
            raise DocumentError(
                path,
                prefix.count(b"\n") + 1,
                col,
                f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    bad = _NON_PRINTABLE.search(text)
    if bad:
        line, col = _line_col(text, bad.start())
        raise DocumentError(
            path, line, col, f"character U+{ord(bad.group()):04X} is not allowed in YAML"
        )
    return text


def check_size(size: int, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Refuse a document by its size alone, so callers can check before reading a file."""
    if size > max_bytes:
        raise DocumentError(path, 1, 1, f"file is {size} bytes; the limit is {max_bytes} bytes")


def _preflight(text: str, path: str, max_nodes: int, max_depth: int) -> None:
    """Walk the event stream once, in constant memory, before composing nodes.

    The composer (C or Python) recurses once per nesting level and holds every node, so
    nesting, node count and document count are bounded here, before it runs.

    libyaml scans ahead of the events it hands out and, from PyYAML 6.0.4 on, refuses deep
    nesting itself with a message of its own. So when the C parser refuses a document, the
    pure-Python parser walks it again: if one of our bounds is crossed first, that error is
    the one reported, whichever libyaml is installed; otherwise the C parser's error stands.
    """
    try:
        _walk_events(text, path, max_nodes, max_depth, _LOADER)
    except yaml.YAMLError as exc:
        if _LOADER is not yaml.SafeLoader:
            with contextlib.suppress(yaml.YAMLError):
                _walk_events(text, path, max_nodes, max_depth, yaml.SafeLoader)
        raise _yaml_error(path, exc) from None


def within_bounds_by_its_text(text: str, max_nodes: int, max_depth: int) -> bool:
    """Is `text` too short to cross the bounds, so that neither the event walk
    (`_preflight`) nor, without an anchor, `_Builder.measure` need run? (They were half
    the time of loading a 10-item batch file.) A text makes a few nodes a character at
    most (4 a character and 16 more are allowed: tested on fuzzed texts), and each
    level of nesting takes one of `[`, `{`, `-`, `:` or `?`: a sequence starts
    with `[` or an entry's `-`, a mapping with `{` or a key's `:` or `?`. The count of
    those characters is below `max_depth`, so a scalar under the deepest collection is
    within it too."""
    return 4 * len(text) + 16 <= max_nodes and nesting_bound(text) < max_depth


def nesting_bound(text: str) -> int:
    """At least as many as the levels `text` can nest (`within_bounds_by_its_text`)."""
    return sum(map(text.count, "[{-:?"))


def _walk_events(text: str, path: str, max_nodes: int, max_depth: int, loader: Any) -> None:
    """Count nodes, depth and documents; raise DocumentError at the first bound crossed."""
    depth = nodes = documents = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, ScalarEvent | AliasEvent):
            nodes += 1
        elif isinstance(event, CollectionStartEvent):
            nodes += 1
            depth += 1
            if depth > max_depth:
                line, col = _mark(event)
                raise DocumentError(
                    path, line, col, f"nested more than {max_depth} levels deep"
                )
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
        elif isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                line, col = _mark(event)
                raise DocumentError(
                    path,
                    line,
                    col,
                    "a second YAML document starts here; a file holds exactly one",
                )
        if nodes > max_nodes:
            line, col = _mark(event)
            raise DocumentError(path, line, col, f"more than {max_nodes} YAML nodes")


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


class _Builder:
    """Constructs plain values from composed nodes, refusing what the data model cannot
    hold.

    Composed nodes form a graph, not a tree: an alias is the very node its anchor names.
    Before anything is built, `measure` computes each node's expanded size once per
    distinct node, so a "billion laughs" document is refused in microseconds with the
    position of the alias list that blows the budget, and cycles are found.
    """

    def __init__(self, path: str, max_nodes: int, max_depth: int) -> None:
        self.path = path
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
        self.open: set[int] = set()  # nodes being measured: meeting one again is a cycle

    def error(self, node: Node, message: str) -> DocumentError:
        line, col = _mark(node)
        return DocumentError(self.path, line, col, message)

    def measure(self, node: Node) -> tuple[int, int]:
        """How many nodes `node` expands to (aliases counted as full copies), and how deep.

        Recursion here follows the document's own nesting: an alias can only name an
        anchor that appeared earlier, which is measured by then, unless it contains the
        alias (a cycle).
        """
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, ScalarNode):
            return 1, 1
        if id(node) in self.open:
            raise self.error(node, "an alias refers to a node that contains it (a cycle)")
        self.open.add(id(node))
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value
        size = height = 1
        for child in children:
            child_size, child_height = self.measure(child)
            size += child_size
            height = max(height, child_height + 1)
            if size > self.max_nodes:
                # Bottom-up, so this is the innermost collection that alone is too big.
                raise self.error(
                    node,
                    f"document expands to more than {self.max_nodes} nodes "
                    "(an alias counts as a copy of what it refers to)",
                )
        if height > self.max_depth:
            raise self.error(node, f"nested more than {self.max_depth} levels deep")
        self.open.discard(id(node))
        self.sizes[id(node)] = (size, height)
        return size, height

    def build(self, node: Node) -> tuple[Any, _Pos]:
        """The node's value and position tree (after `measure` bounded its size)."""
        pos = _Pos(*_mark(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node), pos
        if isinstance(node, SequenceNode) and node.tag == _TAG + "seq":
            values: list[Any] = []
            positions: list[_Pos] = []
            for child in node.value:
                value, child_pos = self.build(child)
                values.append(value)
                positions.append(child_pos)
            pos.children = positions
            return values, pos
        if isinstance(node, MappingNode) and node.tag == _TAG + "map":
            return self.mapping(node, pos)
        raise self.error(node, f"unsupported YAML tag {_tag_name(node.tag)}")

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        if tag in _TEXT_TAGS:
            return str(node.value)
        try:
            if tag == _TAG + "null":
                return None
            if tag == _TAG + "bool":
                return _SCALARS.construct_yaml_bool(node)
            if tag == _TAG + "int":
                return _SCALARS.construct_yaml_int(node)
            if tag == _TAG + "float":
                return _SCALARS.construct_yaml_float(node)
        except (ValueError, KeyError):
            # explicit tags on odd text (`!!int abc`), or more digits than Python converts
            raise self.error(node, f"cannot read {node.value[:40]!r} as {_tag_name(tag)}") from None
        raise self.error(node, f"unsupported YAML tag {_tag_name(tag)}")

    def key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            kind = "a mapping" if isinstance(node, MappingNode) else "a list"
            raise self.error(node, f"a mapping key must be text, not {kind}")
        value = self.scalar(node)
        if not isinstance(value, str):
            kind = {bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "null")
            raise self.error(
                node,
                f"key {node.value or '(empty)'} is read as {kind}; "
                f'quote it ("{node.value}") to use it as a field name',
            )
        return value

    def mapping(self, node: MappingNode, pos: _Pos) -> tuple[Any, _Pos]:
        own: dict[str, Any] = {}
        own_pos: dict[str, _Pos] = {}
        merged: list[tuple[dict[str, Any], dict[str, _Pos]]] = []
        merge_seen = False
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                if merge_seen:
                    raise self.error(key_node, 'duplicate key "<<"')
                merge_seen = True
                merged.extend(self.merge_sources(value_node))
                continue
            key = self.key(key_node)
            if key in own:
                first = own_pos[key].key or (own_pos[key].line, own_pos[key].col)
                raise self.error(key_node, f'duplicate key "{key}" (first at line {first[0]})')
            value, value_pos = self.build(value_node)
            value_pos.key = _mark(key_node)
            own[key] = value
            own_pos[key] = value_pos
        if not merged:
            pos.children = own_pos
            return own, pos
        # As in SafeLoader: explicit keys win over merged ones, earlier sources over later.
        result: dict[str, Any] = {}
        result_pos: dict[str, _Pos] = {}
        for values, positions in [*reversed(merged), (own, own_pos)]:
            result.update(values)
            result_pos.update(positions)
        pos.children = result_pos
        return result, pos

    def merge_sources(self, node: Node) -> list[tuple[dict[str, Any], dict[str, _Pos]]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        out = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise self.error(source, '"<<" takes a mapping or a list of mappings')
            value, pos = self.build(source)
            assert isinstance(pos.children, dict)
            out.append((value, pos.children))
        return out


def load_document(
    data: bytes | str,
    path: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> LoadedDocument:
    """Load one YAML (or JSON) document from untrusted text; raise `DocumentError`.

    `path` is only used in messages. An empty document loads as `None`.
    """
    text = _decode(data, path, max_bytes)
    small = within_bounds_by_its_text(text, max_nodes, max_depth)
    if not small:
        _preflight(text, path, max_nodes, max_depth)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        if small:  # what the walk finds first (a second document) is what is reported
            _preflight(text, path, max_nodes, max_depth)
        raise _yaml_error(path, exc) from None
    if root is None:
        return LoadedDocument(path, None, None)
    builder = _Builder(path, max_nodes, max_depth)
    if not (small and "&" not in text):  # without an anchor there is no alias to expand
        builder.measure(root)
    value, pos = builder.build(root)
    return LoadedDocument(path, value, pos)


def read_document(
    file: str | os.PathLike[str],
    display_path: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> LoadedDocument:
    """Load a file, refusing an oversized one by its size before reading it.

    OSError propagates: an unreadable file is the caller's kind of problem.
    """
    name = display_path if display_path is not None else os.fspath(file)
    with Path(file).open("rb") as fh:
        check_size(os.fstat(fh.fileno()).st_size, name, max_bytes)
        data = fh.read(max_bytes + 1)  # the file may have grown since fstat
    return load_document(data, name, max_bytes=max_bytes, max_nodes=max_nodes)
