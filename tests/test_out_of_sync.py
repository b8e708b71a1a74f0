"""A manifest edited after admission is never silently ignored (issue 10 §4).

The rule: items are fixed when a batch is admitted (its Jobs are immutable); a later edit of
`spec.manifest` is not applied to that batch, a restart re-runs an item as admitted, and
the batch says so as the condition OutOfSync, in `status`, on the page and in `plan`.
Corrected items run as a new batch, under a new metadata.name. The manifest-error email says
exactly that, and doing what it says works.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import (
    ADMIN,
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
)


def _run(repo: GitRepo, env: dict[str, str]) -> None:
    done = batchq("reconcile", "--repo", str(repo.path), "--until-idle", env=env)
    assert done.returncode == 0, done.stderr


def _batches(env: dict[str, str]) -> dict[str, Any]:
    doc = json.loads(batchq("status", "--json", env=env).stdout)
    return {b["name"]: b for b in doc["batches"]}


def _condition(batch: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in batch["conditions"] if c["type"] == kind), None)


def test_a_corrected_digest_after_admission_shows_out_of_sync_and_runs_as_a_new_batch(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    env = {"BATCHQ_STATE": str(tmp_path / "state"), "BATCHQ_SMTP": smtp.hostport}
    good = payloads.add("a", b"the payload\n")
    wrong = dict(good, digest={"algorithm": "sha256", "value": "0" * 64})
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/maps.yaml", batch_doc([wrong]))
    git_repo.commit("submit, with a wrong digest")
    _run(git_repo, env)
    assert _batches(env)["maps"]["state"] == "Failed"
    assert _condition(_batches(env)["maps"], "OutOfSync") is None  # in sync until an edit

    # the depositor corrects the digest, and an admin restarts the item, in one commit
    data = yaml.safe_load((git_repo.path / "batches/maps.yaml").read_text())
    data["spec"]["manifest"]["items"][0]["digest"]["value"] = hashlib.sha256(
        b"the payload\n").hexdigest()
    data["spec"]["restarts"] = {"a": 1}
    git_repo.write("batches/maps.yaml", data)
    git_repo.commit("fix the digest; restart a", who=ADMIN)
    planned = json.loads(batchq("plan", "--repo", str(git_repo.path), "--format", "json",
                                "HEAD~1..HEAD", env=env).stdout)
    assert [c["action"] for c in planned["changes"]] == ["restart", "out-of-sync"]
    _run(git_repo, env)
    maps = _batches(env)["maps"]
    said = ("items a changed in batches/maps.yaml after the batch was admitted: its jobs keep"
            " the items they were admitted with (jobs are immutable, and a restart re-runs an"
            " item as admitted). To ingest the corrected items, commit the corrected file with"
            " a new metadata.name (for example maps-2); batch maps is then retired as if its"
            " file were deleted, and the new batch starts afresh")
    assert _condition(maps, "OutOfSync") == {
        "type": "OutOfSync", "status": True, "reason": "ManifestChangedAfterAdmission",
        "message": said}
    [job] = maps["jobs"]
    assert (job["state"], job["attempt"]) == ("Failed", 2)  # re-run as admitted, as said
    assert "digest" in job["message"]
    shown = batchq("status", "maps", env=env).stdout
    assert f"  OutOfSync: {said}\n" in shown

    # doing what the message says runs the corrected item
    data["metadata"] = {"name": "maps-2"}
    data["spec"].pop("restarts")
    git_repo.write("batches/maps.yaml", data)
    git_repo.commit("resubmit as maps-2")
    _run(git_repo, env)
    after = _batches(env)
    assert after["maps"]["state"] == "Deleted"
    assert after["maps-2"]["state"] == "Completed"
    assert _condition(after["maps-2"], "OutOfSync") is None


def test_the_manifest_error_email_tells_the_truth(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    env = {"BATCHQ_STATE": str(tmp_path / "state"), "BATCHQ_SMTP": smtp.hostport}
    item = payloads.add("l1", b"letter\n")
    profile = profile_doc(payloads.base)
    profile["spec"]["allowedUrlPrefixes"].append("file:lists/")
    git_repo.write("profiles/test.yaml", profile)
    git_repo.write("lists/letters.yaml", "- {id: l1\n")  # broken YAML
    git_repo.write("batches/letters.yaml", batch_doc(url="file:lists/letters.yaml"))
    git_repo.commit("submit a broken manifest")
    _run(git_repo, env)
    assert _batches(env)["letters"]["state"] == "Failed"
    [mail] = smtp.mailbox.messages
    assert mail["Subject"] == "Ingest: FAIL -- Manifest Invalid: letters"
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    text = " ".join(body.get_payload(decode=True).decode().split())
    assert ("This batch will not run again: a batch's items are fixed when it is admitted,"
            " and a later edit of its manifest is not applied to it. To run the corrected"
            " manifest, fix it and commit the batch file with a new metadata.name (for example"
            " letters-2): this batch is then retired as if its file were deleted, and the new"
            " one starts afresh.") in text

    # a corrected manifest committed without a new name: OutOfSync says it is not run
    git_repo.write("lists/letters-v2.yaml", yaml.safe_dump([item]))
    data = batch_doc(url="file:lists/letters-v2.yaml")
    git_repo.write("batches/letters.yaml", data)
    git_repo.commit("fix the manifest")
    _run(git_repo, env)
    letters = _batches(env)["letters"]
    assert letters["state"] == "Failed" and letters["jobs"] == []
    assert _condition(letters, "OutOfSync") == {
        "type": "OutOfSync", "status": True, "reason": "ManifestChangedAfterAdmission",
        "message": "spec.manifest in batches/letters.yaml changed after its manifest could"
        " not be read; this batch is not admitted again (its items are fixed at admission)."
        " To run the corrected manifest, commit the corrected file with a new metadata.name"
        " (for example letters-2); batch letters is then retired as if its file were deleted,"
        " and the new batch starts afresh"}

    # the email's instruction, followed: a new metadata.name runs the corrected manifest
    data["metadata"] = {"name": "letters-2"}
    git_repo.write("batches/letters.yaml", data)
    git_repo.commit("resubmit as letters-2")
    _run(git_repo, env)
    after = _batches(env)
    assert after["letters-2"]["state"] == "Completed"
    assert after["letters"]["state"] == "Deleted"
    assert smtp.mailbox.subjects()[-1] == "Ingest: OK -- Submission Processed: letters-2"
