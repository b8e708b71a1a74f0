"""The site is typed against `ReadStore`, so mypy refuses a write made from a page; this
keeps it so: no module of `web/` names the writable `Store` (or a backend class), and
`ReadStore` itself offers no method that writes."""

from __future__ import annotations

import ast
from pathlib import Path

from reconciler.store.base import ReadStore, Store

WEB = Path(__file__).resolve().parents[2] / "web"
WRITABLE = {"Store", "SqliteStore", "KubernetesStore"}


def names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           for a in node.names}
    out |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    out |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return out


def protocol_members(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_")} | set(
        getattr(cls, "__annotations__", {}))


def test_no_module_of_the_site_names_a_writable_store() -> None:
    files = sorted(WEB.rglob("*.py"))
    assert files
    offenders = {f"{p.relative_to(WEB.parent)}: {name}" for p in files
                 for name in names_used(p) & WRITABLE}
    assert not offenders, f"the site must read through ReadStore only: {sorted(offenders)}"


def test_read_store_has_only_reads_and_store_has_every_write() -> None:
    reads = protocol_members(ReadStore)
    writes = protocol_members(Store)
    assert reads and writes
    assert not reads & writes  # Store adds to ReadStore, it redefines nothing
    assert ReadStore in Store.__mro__
    write_verbs = ("set_", "save_", "apply_", "update_", "remove_", "create_", "delete_",
                   "record_", "add_", "transaction", "writes")
    assert not {m for m in reads if m.startswith(write_verbs)}
    assert {"save_sync_state", "apply_spec", "update_status", "create_job", "save_report",
            "record_delivery", "transaction", "writes"} <= writes
