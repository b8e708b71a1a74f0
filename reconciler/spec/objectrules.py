"""Rules of an item's object that JSON Schema cannot say (issue 8 §2), for inline items
(`validation`, reported at their line) and resolved manifest items (`manifests.resolve`).

- An item is exactly one of: `url` (one file), `files`, `container`; with `files` or a
  container, digest and size belong to each file or to the container.
- File names are safe paths within the object (`domain.objects.name_problem`) and unique.
- A file's or container's digest has as many hex digits as its algorithm gives.
- What a job is given of its object (`BATCHQ_OBJECT`, JSON) is at most `MAX_OBJECT_BYTES`:
  an environment variable is capped by the kernel (128 KiB on Linux) and a Job object by
  etcd, so a larger object is refused here, at admission, with the bound in the message,
  rather than failing in its job.
"""

from __future__ import annotations

from typing import Any

from reconciler.domain.model import DIGEST_HEX_DIGITS
from reconciler.domain.objects import MAX_OBJECT_BYTES, name_problem, object_json

Where = tuple[str | int, ...]


def object_problems(item: dict[str, Any]) -> list[tuple[Where, str]]:
    """What is wrong with a schema-shaped item's object, each with the path (within the
    item) where it is; [] when nothing is."""
    given = [k for k in ("url", "files", "container") if k in item]
    if len(given) > 1:
        return [((given[1],), f"give only one of url (an object of one file), files or"
                              f" container, not {' and '.join(given)}")]
    problems: list[tuple[Where, str]] = []
    if given and given[0] != "url":
        for key in ("digest", "size"):
            if key in item:
                problems.append(((key,), f"{key} belongs to each file (files[n].{key}) or"
                                         f" to the container (container.{key})"))
    container = item.get("container")
    if isinstance(container, dict):
        problems += _digest_length(container.get("digest"), ("container", "digest", "value"))
    files = item.get("files")
    if isinstance(files, list):
        first: dict[str, int] = {}
        for n, entry in enumerate(files):
            if not isinstance(entry, dict):
                continue
            problems += _digest_length(entry.get("digest"), ("files", n, "digest", "value"))
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            problem = name_problem(name)
            if problem:
                problems.append((("files", n, "name"), f"file name {name!r} {problem}"))
            elif name in first:
                problems.append((("files", n, "name"), f"file name {name!r} is already used by"
                                                       f" files[{first[name]}]; names are"
                                                       " unique within an object"))
            else:
                first[name] = n
        size = len(object_json(files, None))
        if size > MAX_OBJECT_BYTES:
            problems.append((("files",), f"the object's {len(files)} files take {size} bytes"
                                         f" to describe, more than the {MAX_OBJECT_BYTES}"
                                         " a job is given; split it into several objects"))
    return problems


def _digest_length(digest: Any, at: Where) -> list[tuple[Where, str]]:
    if not isinstance(digest, dict):
        return []
    algorithm, value = digest.get("algorithm"), digest.get("value")
    digits = DIGEST_HEX_DIGITS.get(algorithm) if isinstance(algorithm, str) else None
    if digits is None or not isinstance(value, str) or len(value) == digits:
        return []
    return [(at, f"{algorithm} digests have {digits} hex digits, not {len(value)}")]
