"""The CLI an operator expects (issue 10 §6): a status table, a clear exit for an unknown
batch, `--version`, and help for every option that never cites the design document."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

from reconciler.app.cli import parser
from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq, profile_doc


def test_status_prints_a_table_and_an_unknown_batch_exits_1(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/good.yaml", batch_doc([payloads.add("g1", b"one\n")]))
    half = [payloads.add(f"h{n}", f"{n}\n".encode()) for n in range(4)]
    for item in half[2:]:
        payloads.files[item["id"]] = b"not what the digest says\n"
    git_repo.write("batches/half.yaml", batch_doc(half))
    git_repo.write("batches/broken.yaml", "apiVersion: batchq.dev/v1\nkind: Batch\nspec: [\n")
    head = git_repo.commit("three batches")
    env = {"BATCHQ_STATE": str(tmp_path / "state"), "BATCHQ_SMTP": smtp.hostport}
    done = batchq("reconcile", "--repo", str(git_repo.path), "--until-idle", env=env)
    assert done.returncode == 0, done.stderr

    shown = batchq("status", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "JOBS", "DONE", "FAILED", "REVISION", "AGE",
                                "MESSAGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["good"][1:6] == ["Completed", "1", "1", "0", head[:12]]
    assert rows["half"][1:6] == ["Failed", "4", "2", "2", head[:12]]  # not "100%" done
    assert rows["broken"][1] == "Invalid"  # a file that never parsed is not Pending
    assert lines[1].endswith("   batches/broken.yaml:4:1: invalid YAML: did not find expected"
                             " node content (while parsing a flow node)"), shown.stdout
    assert "broken: Invalid (generation 1" in shown.stdout
    assert lines[4] == ""  # then each batch in full, as before
    assert any(line.startswith("half: Failed (generation 1") for line in lines)

    unknown = batchq("status", "nope", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr == "batchq: no batch named 'nope' (there are: broken, good, half)\n"
    assert batchq("status", "nope", "--json", env=env).returncode == 1
    one = json.loads(batchq("status", "half", "--json", env=env).stdout)
    assert [b["name"] for b in one["batches"]] == ["half"]


def test_version_and_help_for_every_option() -> None:
    out = batchq("--version")
    assert out.returncode == 0
    assert out.stdout == f"batchq {importlib.metadata.version('batchq')}\n"
    top = parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, sub in commands.choices.items():
        said = batchq(name, "--help")
        assert said.returncode == 0, said.stderr
        assert "DESIGN" not in said.stdout and "§" not in said.stdout, (name, said.stdout)
        missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []
    assert "DESIGN" not in batchq("--help").stdout
