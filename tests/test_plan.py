"""`batchq plan BASE..HEAD` on every admin action of the seed's stories (issue 10 §3).

The real reconciler runs the stories; before each admin commit lands in the store, `plan`
says what it will do, and the test then lets the reconciler do it and checks that the plan
was right: restarts with their attempt numbers, an UpdateReporting with an email (job3
changed) and one without (nothing changed), deletions refused by the mass-deletion guard
(named) and then carried out. `plan` writes nothing: the state dir and the repository are
byte for byte the same after it.
"""

from __future__ import annotations

import hashlib
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


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file under the roots with its content hash (what 'writes nothing' means)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


class Story:
    def __init__(self, repo: GitRepo, state: Path, smtp: SmtpServer) -> None:
        self.repo, self.state = repo, state
        self.env = {"BATCHQ_STATE": str(state), "BATCHQ_SMTP": smtp.hostport}

    def reconcile(self) -> None:
        done = batchq("reconcile", "--repo", str(self.repo.path), "--until-idle", env=self.env)
        assert done.returncode == 0, done.stderr

    def plan(self, rng: str, fmt: str = "json") -> Any:
        before = _snapshot(self.repo.path, self.state) if self.state.exists() else {}
        out = batchq("plan", "--repo", str(self.repo.path), "--format", fmt, rng, env=self.env)
        assert out.returncode == 0, out.stderr
        after = _snapshot(self.repo.path, self.state) if self.state.exists() else {}
        assert after == before  # read only: not a byte of the store or the repo changed
        return json.loads(out.stdout) if fmt == "json" else out.stdout

    def batches(self) -> dict[str, Any]:
        doc = json.loads(batchq("status", "--json", env=self.env).stdout)
        return {b["name"]: b for b in doc["batches"]}


def _actions(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["action"], c["batch"], c["message"]) for c in plan["changes"]]


def test_plan_says_what_each_admin_action_of_the_seed_stories_will_do(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    story = Story(git_repo, tmp_path / "state", smtp)
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"maxDeletesPerSync": 1}})
    for name in ("retry-ok", "retry-bad"):  # stories 3 and 4: job3 fails at first
        items = [payloads.add(f"{name}-job{i}", f"{name} {i}\n".encode()) for i in (1, 2, 3)]
        payloads.files[f"{name}-job3"] = b"not uploaded yet\n"
        git_repo.write(f"batches/{name}.yaml", batch_doc(items))
    git_repo.commit("depositors: submit manifests with 3 items")

    first = story.plan("HEAD")  # no state dir yet: what a first sync would do
    assert ("add", "retry-ok", "add batch retry-ok: 3 items") in _actions(first)
    assert not story.state.exists()
    story.reconcile()
    assert {n: b["state"] for n, b in story.batches().items()} == {
        "retry-bad": "Failed", "retry-ok": "Failed"}

    # admin: restart job3 of both (the payload of retry-ok was uploaded meanwhile)
    payloads.files["retry-ok-job3"] = b"retry-ok 3\n"
    for name in ("retry-ok", "retry-bad"):
        git_repo.edit_batch(f"batches/{name}.yaml", restarts={f"{name}-job3": 1})
    restart = story.plan("HEAD~2..HEAD")
    assert sorted(_actions(restart)) == [
        ("restart", "retry-bad", "restart retry-bad-job3: attempt 2 (restarts 1, used 0);"
         " the batch stays Failed"),
        ("restart", "retry-ok", "restart retry-ok-job3: attempt 2 (restarts 1, used 0); the"
         " batch stays Failed")]
    assert {c["details"]["attempt"] for c in restart["changes"]} == {2}
    story.reconcile()
    jobs = {n: {j["item"]: (j["state"], j["attempt"]) for j in b["jobs"]}
            for n, b in story.batches().items()}
    assert jobs["retry-ok"]["retry-ok-job3"] == ("Completed", 2)
    assert jobs["retry-bad"]["retry-bad-job3"] == ("Failed", 2)
    assert story.plan("HEAD")["changes"] == []  # synced: nothing left to do

    # admin: UpdateReporting on both: one email (job3 changed), none for the other
    for name in ("retry-ok", "retry-bad"):
        git_repo.edit_batch(f"batches/{name}.yaml", state="UpdateReporting")
    update = story.plan("HEAD~2..HEAD")
    assert sorted(_actions(update)) == [
        ("update-reporting", "retry-bad", "UpdateReporting: no email (no job changed since"
         " the last report)"),
        ("update-reporting", "retry-ok", "UpdateReporting: an update email would go out"
         " (retry-ok-job3: Failed -> Completed)")]
    text = story.plan("HEAD~2..HEAD", "text")
    assert "  update-reporting batches/retry-ok.yaml: UpdateReporting: an update email would" \
           " go out (retry-ok-job3: Failed -> Completed)\n" in text
    md = story.plan("HEAD~2..HEAD", "markdown")
    assert md.startswith("### batchq plan `")
    assert ("| update-reporting | `batches/retry-bad.yaml` | retry-bad | UpdateReporting: no"
            " email (no job changed since the last report) |") in md
    mails = len(smtp.mailbox.messages)
    story.reconcile()
    subjects = smtp.mailbox.subjects()[mails:]
    assert [s for s in subjects if "Updated" in s] == [
        "Ingest: OK -- Submission Updated: retry-ok"]  # the plan was right: one email
    assert not any("retry-bad" in s for s in subjects)

    # admin: delete both files: the guard (maxDeletesPerSync 1) refuses, naming them
    git_repo.remove("batches/retry-ok.yaml")
    git_repo.remove("batches/retry-bad.yaml")
    git_repo.commit("admin: delete both", who=ADMIN)
    refused = story.plan("HEAD~1..HEAD")
    assert _actions(refused) == [
        ("refuse", "", "the mass-deletion guard would refuse to delete 2 batches (retry-bad,"
         " retry-ok): more than maxDeletesPerSync=1; nothing is deleted")]
    story.reconcile()
    assert {b["state"] for b in story.batches().values()} == {"Completed", "Failed"}
    shown = batchq("status", env=story.env).stderr
    assert "refused to delete 2 batches at" in shown and "(retry-bad, retry-ok)" in shown

    # admin: raise the guard: both deletions would go ahead, and do
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"maxDeletesPerSync": 5}})
    git_repo.commit("admin: allow the deletion", who=ADMIN)
    allowed = story.plan("HEAD~1..HEAD")
    assert [a[:2] for a in _actions(allowed)] == [
        ("change", ""), ("delete", "retry-bad"), ("delete", "retry-ok")]
    assert "maxDeletesPerSync: 1 -> 5" in allowed["changes"][0]["message"]
    story.reconcile()
    assert {b["state"] for b in story.batches().values()} == {"Deleted"}


def test_plan_of_a_hold_a_release_an_invalid_file_and_a_bad_range(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    story = Story(git_repo, tmp_path / "state", smtp)
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/slow.yaml", batch_doc([payloads.add("s1", b"s\n")]))
    git_repo.commit("submit")
    story.reconcile()
    git_repo.edit_batch("batches/slow.yaml", state="Held")
    git_repo.write("batches/broken.yaml", "apiVersion: batchq.dev/v1\nkind: Batch\nspec: [\n")
    git_repo.commit("hold, and a broken file")
    plan = story.plan("HEAD~2..HEAD")
    assert _actions(plan) == [
        ("refuse", "broken", "refused; it shows as Invalid: batches/broken.yaml:4:1: invalid"
         " YAML: did not find expected node content (while parsing a flow node)"),
        ("hold", "slow", "hold slow: it is Completed; restarts asked for while it is held"
         " wait")]
    story.reconcile()
    git_repo.edit_batch("batches/slow.yaml", state="Active")
    assert _actions(story.plan("HEAD~1..HEAD")) == [
        ("release", "slow", "release slow: it is Completed; restarts that waited start")]
    # a batch waiting in a paused queue: held, then released
    git_repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                  "spec": {"paused": True}})
    git_repo.write("batches/waiting.yaml", batch_doc([payloads.add("w1", b"w\n")]))
    git_repo.commit("pause; submit waiting")
    story.reconcile()
    git_repo.edit_batch("batches/waiting.yaml", state="Held")
    assert _actions(story.plan("HEAD~1..HEAD")) == [
        ("hold", "waiting", "hold waiting: it is not admitted until released")]
    story.reconcile()
    assert story.batches()["waiting"]["state"] == "Held"
    git_repo.edit_batch("batches/waiting.yaml", state="Active")
    assert _actions(story.plan("HEAD~1..HEAD")) == [
        ("release", "waiting", "release waiting: it queues again and resumes")]
    bad = batchq("plan", "--repo", str(git_repo.path), "nope..HEAD", env=story.env)
    assert bad.returncode == 1
    assert bad.stderr == ("batchq: unknown revision 'nope': give BASE..HEAD as commits,"
                          " branches or tags of the repository\n")
