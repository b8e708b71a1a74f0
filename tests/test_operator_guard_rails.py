"""Guard rails an operator expects (issue 7 §4), each through the real `batchq` command:
a commit of hundreds of batch files, job deadlines, hostile text in names, titles and
messages, and a state dir that runs out of space."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures import ADMIN, GitRepo, SmtpServer

QUEUE_PAUSED = {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": {"paused": True}}


def batchq(*args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "batchq.sqlite3")


def plain_profile(prefix: str = "http://127.0.0.1/", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Profile", "metadata": {"name": "test"},
            "spec": {"allowedUrlPrefixes": [prefix],
                     "notification": {"from": "batchq@example.org"}, **spec}}


def numbered_batch(n: int, version: int) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Batch",
            "spec": {"profile": "test", "depositor": {"name": "D", "email": "d@example.org"},
                     "manifest": {"items": [{"id": "item-1",
                                             "url": f"http://127.0.0.1/{n}/v{version}"}]}}}


# --- a commit of many files -----------------------------------------------------------------
def test_hundreds_of_files_sync_each_with_the_commit_that_last_changed_it(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """300 files over three commits, read whole (first sync) and then as a diff: every batch
    gets its own content and the revision of the commit that last touched its file."""
    git_repo.write("profiles/test.yaml", plain_profile())
    git_repo.write("queue.yaml", QUEUE_PAUSED)  # nothing runs: this is about the sync
    for n in range(300):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 1))
    first = git_repo.commit("add 300 batches")
    for n in range(0, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 2))
    second = git_repo.commit("edit every third batch", who=ADMIN)
    state = tmp_path / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--once"]
    assert (done := batchq(*args)).returncode == 0, done.stderr

    def stored() -> dict[str, tuple[str, str, int]]:
        with db(state) as c:
            rows = c.execute("SELECT name, source_revision, spec_json, generation FROM batches")
            return {name: (rev, json.loads(spec)["manifest"]["items"][0]["url"], gen)
                    for name, rev, spec, gen in rows}

    def url(n: int, version: int) -> str:
        return f"http://127.0.0.1/{n}/v{version}"

    assert stored() == {f"b-{n:03d}": (second, url(n, 2), 1) if n % 3 == 0
                        else (first, url(n, 1), 1) for n in range(300)}

    for n in range(1, 300, 3):
        git_repo.write(f"batches/b-{n:03d}.yaml", numbered_batch(n, 3))
    third = git_repo.commit("edit the next third")
    assert (done := batchq(*args)).returncode == 0, done.stderr
    expected = {}
    for n in range(300):
        expected[f"b-{n:03d}"] = ((second, url(n, 2), 1) if n % 3 == 0
                                  else (third, url(n, 3), 2) if n % 3 == 1
                                  else (first, url(n, 1), 1))
    assert stored() == expected


# --- control characters in names, titles and messages ---------------------------------------
HOSTILE = ["\x1b[2J", "\r\nSubject: forged", "\u202e"]
# any of these left raw in output could clear the screen, forge a line or reverse text
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FAILING_JOB = [sys.executable, "-c",
               "import os, sys\n"
               "if os.environ['BATCHQ_ITEM_ID'] == 'fails':\n"
               "    sys.stderr.write('boom \\x1b[2J\\x07 gone \\u202e reversed\\n')\n"
               "    sys.exit(1)\n"]


def hostile_repo(repo: GitRepo) -> None:
    repo.write("profiles/test.yaml", plain_profile(job={"command": FAILING_JOB}))
    items = [{"id": "clears", "url": "http://127.0.0.1/1", "title": f"Map {HOSTILE[0]} one"},
             {"id": "forges", "url": "http://127.0.0.1/2", "title": f"Map{HOSTILE[1]} two"},
             {"id": "fails", "url": "http://127.0.0.1/3", "title": f"{HOSTILE[2]}owt paM"}]
    doc = numbered_batch(0, 1)
    doc["spec"]["manifest"]["items"] = items
    doc["spec"]["depositor"]["name"] = f"Jane{HOSTILE[1]}"
    repo.write("batches/hostile.yaml", doc)
    # a file whose name and item id hold them: refused, and the error names both
    bad = numbered_batch(1, 1)
    bad["spec"]["manifest"]["items"][0]["id"] = "id\x1b[2J\u202e"
    repo.write("batches/evil\x1b[2J\u202e.yaml", bad)
    repo.commit("hostile text everywhere")


def test_control_characters_are_escaped_in_the_cli_and_flattened_in_the_email(
        git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> None:
    hostile_repo(git_repo)
    state = tmp_path / "state"
    run = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state), "--smtp",
                 smtp.hostport, "--until-idle", "--timeout", "60")
    assert run.returncode == 0, run.stderr

    shown = batchq("status", "--state", str(state))
    assert shown.returncode == 0, shown.stderr
    for stream in (shown.stdout, shown.stderr):
        assert not RAW_CONTROL.search(stream), stream
    out = shown.stdout.splitlines()
    assert out[0].startswith("evil\\x1b[2J\\u202e: Pending")
    assert any(line.startswith("  file error: batches/evil\\x1b[2J\\u202e.yaml:")
               and '"id\\u001b[2J\\u202e" is not a valid item id' in line for line in out), out
    assert "hostile: Failed" in shown.stdout
    assert ("  fails                Failed      attempt 1  boom \\x1b[2J\\x07 gone \\u202e"
            " reversed") in out
    assert shown.stderr.startswith("error: batches/evil\\x1b[2J\\u202e.yaml:")

    checked = batchq("validate", str(git_repo.path))
    assert checked.returncode == 1
    assert not RAW_CONTROL.search(checked.stdout)
    assert checked.stdout.startswith(f"{git_repo.path}/batches/evil\\x1b[2J\\u202e.yaml:1:1: ")

    [mail] = smtp.mailbox.messages
    assert mail.get_all("Subject") == ["Ingest: FAIL -- Submission Failed: hostile"]
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    text = body.get_payload(decode=True).decode().replace("\r\n", "\n")  # SMTP line ends
    lines = text.split("\n")
    assert not RAW_CONTROL.search(text), text
    assert not [line for line in lines if line.lstrip().startswith("Subject")], text
    assert "Depositor:  Jane\\r\\nSubject: forged <d@example.org>" in lines
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in
            (["clears"], ["forges"], ["fails"])}
    assert "Map \\x1b[2J one" in rows["clears"]
    assert "Map\\r\\nSubject: forged two" in rows["forges"]
    assert "\\u202eowt paM" in rows["fails"]
    assert rows["fails"].endswith("boom \\x1b[2J\\x07 gone \\u202e reversed")
