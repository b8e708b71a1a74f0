"""`batchq validate` refuses what the reconciler refuses, at the same place (issue 10 §1).

One repository holds a corpus of broken files, one of each class the reconciler can refuse
from the repository alone, beside good ones. The real reconciler runs over the commit, the
real `batchq validate` over the work tree, and the two are compared generically: every
refusal of the reconciler (a file error, a batch failed before any job ran, a batch file it
never read) is an error of `validate` on that file, in the same words; and every file
`validate` calls wrong is one the reconciler refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq, profile_doc


def _corpus(repo: GitRepo, payloads: PayloadServer) -> None:
    good = payloads.add("good", b"good\n")
    repo.write("profiles/test.yaml", profile_doc(payloads.base))
    broken_profile = profile_doc(payloads.base)
    broken_profile["metadata"]["name"] = "broken"
    broken_profile["spec"]["storage"] = {"path": "/etc"}
    repo.write("profiles/broken.yaml", broken_profile)
    repo.write("batches/ok.yaml", batch_doc([good]))
    repo.write("batches/outside.yaml", batch_doc([{"id": "x", "url": "http://127.0.0.1:9/x"}]))
    repo.write("batches/uses-broken.yaml", batch_doc([good], profile="broken"))
    repo.write("batches/2026/nested.yaml", batch_doc([good]))
    typo = batch_doc([good])
    typo["spec"]["stat"] = "Held"
    repo.write("batches/typo.yaml", typo)
    repo.write("lists/broken.yaml", "- id: a\n  url: 'file:payloads/a.txt'\n- {id: b\n")
    repo.write("batches/local-broken.yaml", batch_doc(url="file:lists/broken.yaml"))
    repo.write("lists/outside.yaml", "- id: a\n  url: 'http://127.0.0.1:9/a'\n")
    repo.write("batches/local-outside.yaml", batch_doc(url="file:lists/outside.yaml"))
    repo.write("lists/fine.yaml", f"- id: a\n  url: '{good['url']}'\n")
    repo.write("batches/local-fine.yaml", batch_doc(url="file:lists/fine.yaml"))
    repo.write("batches/no-payload.yaml", batch_doc([{"id": "p", "url": "file:payloads/p.txt"}]))


def _profile_allowing_files(repo: GitRepo, base: str) -> None:
    doc = profile_doc(base)
    doc["spec"]["allowedUrlPrefixes"] = [base, "file:payloads/", "file:lists/"]
    repo.write("profiles/test.yaml", doc)


def _reconciler_refusals(repo: GitRepo, state: Path, smtp: SmtpServer) -> dict[str, list[str]]:
    """What the reconciler refused, by file: its file errors (`file:line:col: message`),
    the message of a batch that failed before any job ran, and batch files it never read."""
    env = {"BATCHQ_STATE": str(state), "BATCHQ_SMTP": smtp.hostport}
    run = batchq("reconcile", "--repo", str(repo.path), "--until-idle", env=env)
    assert run.returncode == 0, run.stderr
    status = batchq("status", env=env)
    doc: dict[str, Any] = json.loads(batchq("status", "--json", env=env).stdout)
    refused: dict[str, list[str]] = {}
    for line in status.stderr.splitlines():
        if line.startswith("error: "):
            where = line.removeprefix("error: ")
            refused.setdefault(where.split(":")[0], []).append(where)
    seen = set()
    for b in doc["batches"]:
        path = f"batches/{b['name']}.yaml"
        seen.add(path)
        if b["state"] == "Failed" and not b["jobs"]:
            refused.setdefault(path, []).append(b["message"])
    for file in sorted((repo.path / "batches").rglob("*.yaml")):
        rel = file.relative_to(repo.path).as_posix()
        if rel.count("/") > 1 and rel not in seen:
            refused.setdefault(rel, []).append("never read")
    return refused


def test_validate_refuses_exactly_what_the_reconciler_refuses(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    _corpus(git_repo, payloads)
    _profile_allowing_files(git_repo, payloads.base)
    git_repo.commit("the corpus")
    refused = _reconciler_refusals(git_repo, tmp_path / "state", smtp)

    checked = batchq("validate", "--format", "json", str(git_repo.path))
    assert checked.returncode == 1, checked.stderr
    report = json.loads(checked.stdout)
    errors: dict[str, list[str]] = {}
    warnings: dict[str, list[str]] = {}
    for p in report["problems"]:
        into = errors if p["severity"] == "error" else warnings
        rel = p["file"].removeprefix(f"{git_repo.path}/")  # as the reconciler names files
        into.setdefault(rel, []).append(f"{rel}:{p['line']}:{p['col']}: {p['message']}")

    # each class of the corpus is refused by the reconciler (the corpus is not stale) ...
    assert set(refused) == {
        "profiles/broken.yaml", "batches/outside.yaml", "batches/uses-broken.yaml",
        "batches/2026/nested.yaml", "batches/typo.yaml", "batches/local-broken.yaml",
        "batches/local-outside.yaml"}, refused
    # ... and validate names the same files, no more, no fewer
    assert set(errors) == set(refused), (errors, refused)
    for path, said in refused.items():
        for message in said:
            if message == "never read":
                assert any("is ignored" in e for e in errors[path]), errors[path]
            elif message.startswith(path + ":"):  # a file error: the very same line
                assert message in errors[path], (message, errors[path])
            else:  # a batch that failed at admission: its message, at the manifest's line
                # (validate says which item by the line of an inline one)
                core = message.removeprefix("manifest error: ")
                inline = core.split(": ", 1)[-1] if core.startswith("item ") else core
                assert any(core in e or inline in e for e in errors[path]), (message,
                                                                            errors[path])
    # a payload not committed yet is a warning only: the job fails at run time, not the file
    assert list(warnings) == ["batches/no-payload.yaml"]
    assert "file:payloads/p.txt is not in the repository" in warnings["batches/no-payload.yaml"][0]


def test_validate_prints_one_line_on_success_and_annotations_for_github(
        git_repo: GitRepo, payloads: PayloadServer) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/ok.yaml", batch_doc([payloads.add("a", b"a\n")]))
    ok = batchq("validate", str(git_repo.path))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "2 files valid\n", "")

    typo = batch_doc([payloads.add("b", b"b\n")])
    typo["spec"]["stat"] = "Held"
    git_repo.write("batches/typo.yaml", typo)
    line = next(n for n, text in enumerate(
        (git_repo.path / "batches/typo.yaml").read_text().splitlines(), 1)
        if text.startswith("  stat:"))
    text = batchq("validate", str(git_repo.path))
    assert text.returncode == 1
    [said] = text.stdout.splitlines()
    assert said.startswith(f"{git_repo.path}/batches/typo.yaml:{line}:3: ")
    assert "stat" in said
    assert text.stderr == "1 error in 1 of 3 files\n"
    github = batchq("validate", "--format", "github", str(git_repo.path))
    assert github.returncode == 1
    path = f"{git_repo.path}/batches/typo.yaml".replace(":", "%3A").replace(",", "%2C")
    assert github.stdout.splitlines() == [
        f"::error file={path},line={line},col=3::{said.split(': ', 1)[1]}"]
