"""Which files of a repository the reconciler reads: one rule, used by the Git source and by
`batchq validate`, so a file that validates is never silently skipped at run time."""

from __future__ import annotations

EXTENSIONS = (".yaml", ".yml", ".json")
FOLDERS = ("batches", "profiles")


def is_relevant(path: str) -> bool:
    """`queue.yaml`, and `batches/<name>.<ext>` / `profiles/<name>.<ext>` one level down."""
    if path == "queue.yaml":
        return True
    parts = path.split("/")
    return len(parts) == 2 and parts[0] in FOLDERS and path.endswith(EXTENSIONS)


def ignored_reason(path: str) -> str | None:
    """Why the reconciler never reads a YAML/JSON file that looks meant for it (a batch in a
    subfolder, `queue.yml`), or None when it reads the file or the file is not its business."""
    if is_relevant(path) or not path.endswith(EXTENSIONS):
        return None
    parts = path.split("/")
    if parts[0] in FOLDERS and len(parts) > 2:
        return (f"the reconciler reads only {parts[0]}/<name>.yaml, not subfolders: this file"
                f" is ignored; move it to {parts[0]}/{parts[-1]}")
    if len(parts) == 1 and parts[0].startswith("queue.") and parts[0] != "queue.yaml":
        return "the reconciler reads queue.yaml only: this file is ignored; rename it queue.yaml"
    return None
