"""`batchq validate`: the findings of `repocheck` as text, GitHub workflow commands or JSON.

Text is `file:line:col: message`, one a line, as compilers print them, and one summary line
when nothing is wrong; `github` is what a GitHub Actions step prints to annotate a pull
request's lines; `json` is a list for other tools.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler.manifests.repocheck import ERROR, WARNING, Finding, check_paths, count_files
from reconciler.support.controlchars import escape_controls

FORMATS = ("text", "github", "json")


def _github_escape(text: str, *, prop: bool = False) -> str:
    """GitHub's workflow-command escaping (data: %, CR, LF; properties also : and ,)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def github_line(f: Finding) -> str:
    p = f.problem
    return (f"::{f.severity} file={_github_escape(p.path, prop=True)},line={p.line},"
            f"col={p.col}::{_github_escape(escape_controls(p.message))}")


def summary(files: int, findings: list[Finding]) -> str:
    """One line: how many files, and how many errors and warnings."""
    errors = sum(f.severity == ERROR for f in findings)
    warnings = sum(f.severity == WARNING for f in findings)
    noun = "file" if files == 1 else "files"
    if not errors:
        tail = "" if not warnings else f" ({warnings} warning{'s' if warnings > 1 else ''})"
        return f"{files} {noun} valid{tail}"
    bad = len({f.problem.path for f in findings if f.severity == ERROR})
    return (f"{errors} error{'s' if errors > 1 else ''} in {bad} of {files} {noun}"
            + (f", {warnings} warning{'s' if warnings > 1 else ''}" if warnings else ""))


def validate_command(paths: list[str], *, file_roots: Sequence[str | Path] = (),
                     output: str = "text", extra: Sequence[Finding] = ()) -> int:
    """Print the findings in `output` format (`extra` first: e.g. the access policy's);
    exit 1 when any is an error."""
    findings = [*extra, *check_paths(paths, file_roots=file_roots)]
    failed = any(f.severity == ERROR for f in findings)
    if output == "json":
        json.dump({"valid": not failed, "files": count_files(paths), "problems": [
            {"file": f.problem.path, "line": f.problem.line, "col": f.problem.col,
             "severity": f.severity, "message": f.problem.message} for f in findings]},
            sys.stdout, indent=2)
        print()
        return 1 if failed else 0
    for f in findings:
        print(github_line(f) if output == "github" else escape_controls(str(f)))
    line = summary(count_files(paths), findings)
    if failed:
        print(line, file=sys.stderr)  # stdout stays one finding a line, for tools
    else:
        print(line)
    return 1 if failed else 0
