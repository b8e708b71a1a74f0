"""Every surface answers "why" and "what next" (issue 10 §5), through the CLI and the API.

Why a batch has not started (paused queue, held, a slot taken and N batches ahead, a missing
profile, a file that never parsed: Invalid, not Pending), and the next step for a Failed
batch whose restarted jobs completed (commit UpdateReporting, with the snippet). The page
shows the same words (tests/test_web_guidance_browser.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures import (
    ADMIN,
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
)
from web.app import create_app


def _queue(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batchq.dev/v1", "kind": "Queue", "spec": spec}


def _status(env: dict[str, str], *args: str) -> str:
    out = batchq("status", *args, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _api(state: Path, name: str) -> dict[str, Any]:
    client = create_app({"STATE_DIR": state, "TESTING": True}).test_client()
    return dict(client.get(f"/api/batches/{name}").get_json())


def test_why_a_batch_has_not_started(git_repo: GitRepo, payloads: PayloadServer,
                                     smtp: SmtpServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"BATCHQ_STATE": str(state), "BATCHQ_SMTP": smtp.hostport}
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", _queue(maxActiveBatches=1))
    for name, priority in (("first", 1), ("second", 2), ("third", 3)):
        git_repo.write(f"batches/{name}.yaml", batch_doc(
            [payloads.add(f"{name}-1", b"x\n", gated=True)], priority=priority))
    git_repo.write("batches/held.yaml", batch_doc([payloads.add("h1", b"h\n")], state="Held"))
    git_repo.write("batches/orphan.yaml", batch_doc([payloads.add("o1", b"o\n")],
                                                    profile="gone"))
    git_repo.write("batches/broken.yaml", "apiVersion: batchq.dev/v1\nkind: Batch\nspec: [\n")
    git_repo.commit("six batches")
    once = batchq("reconcile", "--repo", str(git_repo.path), "--once", env=env)
    assert once.returncode == 0, once.stderr

    said = _status(env)
    rows = {line.split()[0]: line for line in said.splitlines()[1:7]}
    assert rows["second"].endswith("   waiting for a free slot: 1 batches are active"
                                   " (maxActiveBatches=1); 0 batches ahead in the queue")
    assert rows["third"].endswith("   waiting for a free slot: 1 batches are active"
                                  " (maxActiveBatches=1); 1 batch ahead in the queue")
    assert rows["held"].endswith("   Held by an admin (spec.state: Held): no job starts until"
                                 " spec.state: Active is committed")
    assert "  Invalid  " in rows["broken"] or " Invalid " in rows["broken"]
    orphan = _status(env, "orphan")
    assert "  file error: batches/orphan.yaml:" in orphan  # the reconciler refused the file
    assert "  why it has not started: Invalid: batches/orphan.yaml never parsed" in orphan
    assert _api(state, "third")["why"] == (
        "waiting for a free slot: 1 batches are active (maxActiveBatches=1); 1 batch ahead"
        " in the queue")
    assert _api(state, "broken")["state"] == "Invalid"

    git_repo.write("queue.yaml", _queue(maxActiveBatches=1, paused=True))
    git_repo.commit("pause the queue", who=ADMIN)
    assert batchq("reconcile", "--repo", str(git_repo.path), "--once", env=env).returncode == 0
    assert ("  why it has not started: the queue is paused (queue.yaml: paused: true); nothing"
            " is admitted until it is not\n") in _status(env, "second")


def test_the_next_step_of_a_failed_batch_whose_restart_completed(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"BATCHQ_STATE": str(state), "BATCHQ_SMTP": smtp.hostport}
    items = [payloads.add(f"m{i}", f"{i}\n".encode()) for i in range(1, 5)]
    for bad in ("m3", "m4"):
        payloads.files[bad] = b"x\n"
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/maps.yaml", batch_doc(items))
    git_repo.commit("submit")
    run = ["reconcile", "--repo", str(git_repo.path), "--until-idle"]
    assert batchq(*run, env=env).returncode == 0
    table = _status(env).splitlines()
    assert table[1].split()[:5] == ["maps", "Failed", "4", "2", "2"]  # 2 done, 2 failed
    assert "next step" not in _status(env, "maps")  # nothing changed since the report

    payloads.files["m3"] = b"3\n"  # re-uploaded; m4 stays broken
    git_repo.edit_batch("batches/maps.yaml", restarts={"m3": 1, "m4": 1})
    assert batchq(*run, env=env).returncode == 0
    shown = _status(env, "maps")
    assert ("  next step: 1 job(s) changed since the last report (m3); 3 done, 1 failed. Next:"
            " send the update report by committing, in batches/maps.yaml:\n"
            "      spec:\n        state: UpdateReporting\n") in shown
    assert _api(state, "maps")["next"].endswith(":\n  spec:\n    state: UpdateReporting")
    first = _status(env).splitlines()[1]
    assert first.endswith("   1 job(s) changed since the last report (m3); 3 done, 1 failed."
                          " Next: send the update report by committing, in batches/maps.yaml:")

    git_repo.edit_batch("batches/maps.yaml", state="UpdateReporting")
    assert batchq(*run, env=env).returncode == 0
    assert "next step" not in _status(env, "maps")  # done: the update report went out
    doc = json.loads(batchq("status", "--json", env=env).stdout)
    assert [r["kind"] for r in doc["batches"][0]["reports"]] == ["initial", "update"]
