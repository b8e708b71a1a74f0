"""Who may change what (issue 11): every commit since the last sync verified by git with
real SSH keys (ssh-keygen) and judged against its own signer's rights.

Real parts: Git repositories whose commits are signed with `git commit -S`
(gpg.format=ssh), the SQLite store, local worker processes fetching from a loopback
payload server, and the `batchq` command in processes of its own for what an operator sees.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.spec.policy import load_policy
from tests.fixtures import (
    ADMIN,
    DEPOSITOR,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    profile_doc,
)
from tests.harness import Harness
from tests.signing import FORGE, OTHER, STRANGER, Keyring, SignedRepo, policy_doc
from tests.world import LocalWorld

BATCH = "batches/maps.yaml"
OTHER_BATCH = "batches/other.yaml"


class Setup:
    def __init__(self, tmp: Path, payloads: PayloadServer, smtp: SmtpServer) -> None:
        self.tmp = tmp
        self.keys = Keyring(tmp / "keys")
        self.repo = SignedRepo(tmp / "repo", self.keys)
        self.world = LocalWorld(payloads)
        self.smtp = smtp
        self.state = tmp / "state"
        self.policy = tmp / "policy.yaml"
        self.h: Harness | None = None

    def start(self, mode: str = "enforce", **policy: Any) -> Harness:
        self.policy.write_text(policy_doc(self.keys, mode, **policy))
        if self.h is not None:
            self.h.close()
        self.h = Harness(self.repo, self.state, self.smtp.hostport,
                         access_policy=load_policy(self.policy))
        self.h.world = self.world
        return self.h

    def admin_profile(self, **job: Any) -> None:
        doc = profile_doc(self.world.prefix)
        if job:
            doc["spec"]["job"] = job
        self.repo.write("profiles/test.yaml", doc)
        self.repo.commit("admin: profile", who=ADMIN)

    def deposit(self, *items: str, who: tuple[str, str] = DEPOSITOR, path: str = BATCH,
                **spec: Any) -> str:
        doc = batch_doc([self.world.item(i, gated=False) for i in items], **spec)
        doc["spec"]["depositor"] = {"name": who[0], "email": who[1]}
        self.repo.write(path, doc)
        return self.repo.commit(f"deposit {path}", who=who)

    def edit(self, who: tuple[str, str], path: str = BATCH, **spec: Any) -> str:
        data = yaml.safe_load((self.repo.path / path).read_text())
        data["spec"].update(spec)
        self.repo.write(path, data)
        return self.repo.commit(f"edit {path}: {spec}", who=who)

    def status(self) -> tuple[dict[str, Any], str]:
        """`batchq status --json` and the text form's stderr, from processes of their own."""
        doc = batchq("status", "--json", "--state", str(self.state))
        text = batchq("status", "--state", str(self.state))
        assert doc.returncode == 0 and text.returncode == 0, doc.stderr + text.stderr
        return json.loads(doc.stdout), text.stdout + text.stderr


@pytest.fixture
def s(tmp_path: Path, payloads: PayloadServer, smtp: SmtpServer) -> Iterator[Setup]:
    setup = Setup(tmp_path, payloads, smtp)
    yield setup
    if setup.h is not None:
        setup.h.close()


def refusals(setup: Setup) -> list[dict[str, Any]]:
    assert setup.h is not None
    rows = setup.h.store.load_sync_state().access_refusals
    return [r for path_rows in rows.values() for r in path_rows]


def test_a_depositor_adds_a_batch_and_it_runs(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1", "a2")
    h.until_idle()
    assert h.state("maps") == "Completed"
    assert refusals(s) == []


def test_a_depositor_cannot_set_state_or_restarts(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    before = h.batch("maps")
    state_commit = s.edit(DEPOSITOR, state="UpdateReporting")
    restarts_commit = s.edit(DEPOSITOR, restarts={"a1": 1})
    h.until_idle()
    after = h.batch("maps")
    assert (after.generation, after.spec, after.source_revision) == (
        before.generation, before.spec, before.source_revision)
    assert h.state("maps") == "Completed" and h.attempts("maps") == {"a1": 1}
    doc, text = s.status()
    shown = doc["batches"][0]["refused"]
    assert [(r["commit"], r["signer"], r["field"]) for r in shown] == [
        (state_commit, DEPOSITOR[1], "spec.state"),
        (restarts_commit, DEPOSITOR[1], "spec.restarts")]
    assert (f"refused: commit {restarts_commit[:12]} by jane@example.org: {BATCH}"
            " spec.restarts: only an admin may change spec.restarts; not applied") in text


def test_a_depositor_cannot_change_a_profile_command_and_nothing_runs(s: Setup) -> None:
    marker = s.tmp / "depositor-code-ran"
    h = s.start()
    s.admin_profile()
    s.repo.write("profiles/test.yaml", profile_doc(s.world.prefix) | {"spec": {
        **profile_doc(s.world.prefix)["spec"],
        "job": {"command": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]}}})
    evil = s.repo.commit("depositor: my own worker", who=DEPOSITOR)
    s.deposit("a1")
    h.until_idle()
    assert h.state("maps") == "Completed"  # by the admin's profile, the batchq worker
    assert not marker.exists()
    assert "job" not in h.store.load_sync_state().profiles["test"]
    [refusal] = refusals(s)
    assert (refusal["commit"], refusal["path"], refusal["signer"]) == (
        evil, "profiles/test.yaml", DEPOSITOR[1])
    assert "only an admin may change a profile" in refusal["why"]


def test_an_unsigned_commit_and_a_stranger_key_change_nothing(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.repo.unsigned.add(DEPOSITOR[1])
    unsigned = s.deposit("a1")
    stranger = s.deposit("b1", who=STRANGER, path="batches/other.yaml")
    h.until_idle()
    assert h.store.get_batch("maps") is None and h.store.get_batch("other") is None
    doc, text = s.status()
    assert [(r["commit"], r["signer"]) for r in doc["refused"]] == [
        (unsigned, "unsigned"),
        (stranger, "unsigned (key SHA256:"
         + stranger_fingerprint(s) + " is not in the access policy)")]
    assert f"refused: commit {unsigned[:12]} by unsigned: {BATCH}:" in text


def stranger_fingerprint(s: Setup) -> str:
    import subprocess

    out = subprocess.run(["ssh-keygen", "-lf", f"{s.keys.key(STRANGER[1])}.pub"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1].removeprefix("SHA256:")


def test_an_admin_restart_on_top_of_an_unsigned_change_does_not_carry_it(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.world.payloads.add("a1", b"payload of a1\n", gated=False)
    item = s.world.item("a1", fail=True, gated=False)
    doc = batch_doc([item, s.world.item("a2", gated=False)])
    doc["spec"] = {"profile": "test", "priority": 5, **doc["spec"]}  # far from restarts
    s.repo.write(BATCH, doc)
    s.repo.commit("deposit", who=DEPOSITOR)
    h.until_idle()
    assert h.jobs("maps")["a1"] == "Failed"
    s.world.set_outcome("a1", fail=False)
    # an unsigned commit raises the priority (an admin field) and retitles an item
    s.repo.unsigned.add(DEPOSITOR[1])
    text = (s.repo.path / BATCH).read_text()
    s.repo.write(BATCH, text.replace("priority: 5", "priority: 1"))
    sneaky = s.repo.commit("unsigned: jump the queue", who=DEPOSITOR)
    restart = s.edit(ADMIN, restarts={"a1": 1})  # the admin signs a restart on top of it
    h.until_idle()
    b = h.batch("maps")
    assert b.spec is not None
    assert b.spec.restarts == {"a1": 1} and b.spec.priority == 5
    assert b.source_revision == restart
    assert h.attempts("maps")["a1"] == 2 and h.jobs("maps")["a1"] == "Completed"
    [refusal] = refusals(s)
    assert (refusal["commit"], refusal["signer"]) == (sneaky, "unsigned")
    assert refusal["field"] == "spec.priority"


def test_a_forge_merge_is_judged_by_the_commits_it_merges(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.repo.git("checkout", "-q", "-b", "jane/maps")
    good = s.deposit("a1")
    s.repo.git("checkout", "-q", "-b", "olga/sneak", "main")
    s.repo.write("profiles/test.yaml", profile_doc(s.world.prefix, fromName="Olga"))
    sneak = s.repo.commit("olga: tweak the profile", who=OTHER)
    s.repo.git("checkout", "-q", "main")
    s.repo.merge("jane/maps", FORGE, "Merge pull request #1 from jane/maps")
    s.repo.merge("olga/sneak", FORGE, "Merge pull request #2 from olga/sneak")
    # a merge that changes a file itself (as a conflict resolution would): only an admin's
    s.repo.git("checkout", "-q", "-b", "side", "main")
    s.repo.commit("empty", who=OTHER)
    s.repo.git("checkout", "-q", "main")
    s.repo.git(*s.repo.signing(FORGE), "merge", "-q", "--no-ff", "--no-commit", "side",
               who=FORGE)
    s.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"paused": True}})
    evil = s.repo.commit("Merge side (with a change of its own)", who=FORGE)
    s.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"maxActiveJobs": 1}})
    web_edit = s.repo.commit("Update queue.yaml (web editor)", who=FORGE)
    h.until_idle()
    assert h.state("maps") == "Completed"
    assert h.batch("maps").source_revision == good
    state = h.store.load_sync_state()
    assert state.queue == {} and "fromName" not in state.profiles["test"]["notification"]
    rows = {(r["commit"], r["path"], r["signer"]) for r in refusals(s)}
    assert rows == {(sneak, "profiles/test.yaml", OTHER[1]),
                    (evil, "queue.yaml", FORGE[1]), (web_edit, "queue.yaml", FORGE[1])}
    why = {r["commit"]: r["why"] for r in refusals(s)}
    assert why[evil].startswith("a merge commit may only combine its parents")
    assert why[web_edit] == "a forge key signs merge commits only"


def test_a_revoked_key_signs_nothing(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    h = s.start(revoked=(ADMIN[1],))  # the operator revokes the admin's key
    held = s.edit(ADMIN, state="Held")
    h.until_idle()
    assert h.batch("maps").spec.state == "Active"  # type: ignore[union-attr]
    [refusal] = refusals(s)
    assert (refusal["commit"], refusal["signer"]) == (
        held, "unsigned (the signature is bad, or its key is revoked)")


def test_a_depositor_cannot_edit_or_delete_another_depositors_batch(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    retitle = s.edit(OTHER, manifest={"items": [s.world.item("z9", gated=False)]})
    s.repo.remove(BATCH)
    delete = s.repo.commit("olga deletes jane's batch", who=OTHER)
    h.until_idle()
    assert h.state("maps") == "Completed"
    assert list(h.attempts("maps")) == ["a1"]
    rows = [(r["commit"], r["why"]) for r in refusals(s)]
    assert rows == [
        (retitle, "only its depositor (jane@example.org) or an admin may edit this batch"),
        (delete, "only an admin may delete a batch file")]
    # an admin accepts the deletion: restores the file, then deletes it, both signed
    s.repo.git("checkout", delete + "~1", "--", BATCH)
    s.repo.commit("admin: restore maps", who=ADMIN)
    s.repo.remove(BATCH)
    s.repo.commit("admin: delete maps", who=ADMIN)
    h.until_idle()
    assert h.state("maps") == "Deleted"
    assert refusals(s) == []


def test_a_force_push_is_verified_and_deletes_nothing_authorized(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    base = s.repo.git("rev-parse", "HEAD")
    deposit = s.deposit("a1")
    h.until_idle()
    assert h.state("maps") == "Completed"
    # the branch is rewritten: the batch's commit is gone, an unsigned one comes instead
    s.repo.git("reset", "-q", "--hard", base)
    s.repo.unsigned.add(DEPOSITOR[1])
    sneaky = s.deposit("b1", path="batches/new.yaml")
    h.until_idle()
    assert h.state("maps") == "Completed"  # not deleted by a rewrite
    assert h.store.get_batch("new") is None
    rows = {(r["commit"], r["path"], r["signer"]) for r in refusals(s)}
    assert rows == {(sneaky, "batches/new.yaml", "unsigned"),
                    (sneaky, BATCH, "no commit (the branch was rewritten)")}
    # an admin's signed commits delete it for real: restored (as authorized), then deleted
    s.repo.unsigned.clear()
    s.repo.git("checkout", deposit, "--", BATCH)
    s.repo.commit("admin: restore maps", who=ADMIN)
    s.repo.remove(BATCH)
    s.repo.commit("admin: maps is gone for good", who=ADMIN)
    h.until_idle()
    assert h.state("maps") == "Deleted"


def test_warn_mode_applies_and_shows(s: Setup) -> None:
    h = s.start("warn")
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    hold = s.edit(DEPOSITOR, state="Held")
    h.until_idle()
    assert h.batch("maps").spec.state == "Held"  # type: ignore[union-attr]
    doc, text = s.status()
    assert [(r["commit"], r["applied"]) for r in doc["refused"]] == [(hold, True)]
    assert "applied anyway (mode warn)" in text
    s.edit(ADMIN, state="Active")  # an allowed change to the file clears it
    h.until_idle()
    assert refusals(s) == []


def test_refusals_on_the_page_and_in_metrics(s: Setup) -> None:
    from web.app import create_app

    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    hold = s.edit(DEPOSITOR, state="Held")
    h.until_idle()
    app = create_app({"STATE_DIR": s.state, "TESTING": True})
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert "refused by the access policy" in page
    assert f"commit {hold[:12]} by jane@example.org: {BATCH} spec.state" in page
    batch_page = client.get("/batches/maps").get_data(as_text=True)
    assert "AccessRefused" in batch_page and f"commit {hold[:12]}" in batch_page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'batchq_access_refusals{{applied="0",path="{BATCH}"}} 1.0' in metrics


def test_the_policy_file_is_validated_at_its_lines(s: Setup, tmp_path: Path) -> None:
    bad = tmp_path / "bad-policy.yaml"
    key = s.keys.public(ADMIN[1])
    bad.write_text("apiVersion: batchq.dev/v1\nkind: AccessPolicy\nspec:\n  mode: strict\n"
                   "  signers:\n    - principal: admin@example.org\n      role: admin\n"
                   f"      keys: [\"{key}\"]\n    - principal: admin@example.org\n"
                   "      role: root\n      keys: [\"not a key\"]\n")
    s.repo.write("profiles/test.yaml", profile_doc(s.world.prefix))
    s.repo.commit("profile", who=ADMIN)
    out = batchq("validate", "--access-policy", str(bad), str(s.repo.path))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f'{bad}:4:9: spec.mode: "strict" is not one of "off", "warn", "enforce"',
        f'{bad}:10:13: spec.signers[1].role: "root" is not one of "depositor", "admin",'
        ' "forge"',
        f'{bad}:11:14: spec.signers[1].keys[0]: "not a key" is not an SSH public key line'
        " (paste the whole .pub file: type, base64 key, optional comment)",
    ]
    run = batchq("reconcile", "--once", "--repo", str(s.repo.path), "--state",
                 str(tmp_path / "st"), "--access-policy", str(bad))
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == (
        f'batchq: {bad}:4:9: spec.mode: "strict" is not one of "off", "warn", "enforce"')
    assert not (tmp_path / "st").exists()
    twice = tmp_path / "twice.yaml"
    twice.write_text("apiVersion: batchq.dev/v1\nkind: AccessPolicy\nspec:\n  mode: enforce\n"
                     "  signers:\n    - principal: admin@example.org\n      role: admin\n"
                     f"      keys: [\"{key}\"]\n    - principal: jane@example.org\n"
                     f"      role: depositor\n      keys: [\"{key}\"]\n")
    out = batchq("validate", "--access-policy", str(twice), str(s.repo.path))
    assert out.stdout.splitlines() == [
        f'{twice}:11:14: spec.signers[1].keys[0]: this key is also "admin@example.org"\'s;'
        " a key belongs to one principal"]
    bare = tmp_path / "bare-off.yaml"
    bare.write_text("apiVersion: batchq.dev/v1\nkind: AccessPolicy\nspec:\n  mode: off\n")
    out = batchq("validate", "--access-policy", str(bare), str(s.repo.path))
    assert out.stdout.splitlines() == [
        f'{bare}:4:9: spec.mode: write "off" in quotes (YAML reads a bare off as false)']


def test_reconcile_command_enforces_the_policy_file(s: Setup) -> None:
    """The operator's path: `batchq reconcile --access-policy FILE` in a process."""
    s.policy.write_text(policy_doc(s.keys))
    s.admin_profile()
    s.deposit("a1")
    s.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"paused": True}})
    pause = s.repo.commit("depositor pauses the queue", who=DEPOSITOR)
    run = batchq("reconcile", "--until-idle", "--repo", str(s.repo.path), "--state",
                 str(s.state), env={"BATCHQ_ACCESS_POLICY": str(s.policy)})
    assert run.returncode == 0, run.stderr
    doc, text = s.status()
    assert doc["batches"][0]["state"] == "Completed"  # the queue was not paused
    assert [(r["commit"], r["path"]) for r in doc["refused"]] == [(pause, "queue.yaml")]
    assert f"refused: commit {pause[:12]} by jane@example.org: queue.yaml:" in text


def test_a_clean_merge_of_two_branches_that_touched_one_file_adds_nothing(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    s.repo.git("checkout", "-q", "-b", "jane/rename")
    text = (s.repo.path / BATCH).read_text()
    s.repo.write(BATCH, text.replace("name: Jane Depositor", "name: Jane Q. Depositor"))
    s.repo.commit("jane: my full name", who=DEPOSITOR)
    s.repo.git("checkout", "-q", "main")
    s.edit(ADMIN, state="Held")  # meanwhile, on main, at the other end of the file
    merge = s.repo.merge("jane/rename", FORGE, "Merge pull request #3 from jane/rename")
    h.until_idle()
    b = h.batch("maps")
    assert b.spec is not None
    assert (b.spec.depositor.name, b.spec.state) == ("Jane Q. Depositor", "Held")
    assert h.store.load_sync_state().synced_commit == merge
    assert refusals(s) == [] and h.store.load_sync_state().access_held == {}


def test_an_admin_change_that_conflicts_with_a_refused_one_waits_for_a_revert(
        s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1", priority=5)
    h.until_idle()
    s.repo.unsigned.add(DEPOSITOR[1])
    sneaky = s.edit(DEPOSITOR, priority=1)
    clash = s.edit(ADMIN, priority=3)  # the same line: no clean three-way merge
    h.until_idle()
    assert h.batch("maps").spec.priority == 5  # type: ignore[union-attr]
    assert [(r["commit"], r["why"].split(":")[0]) for r in refusals(s)] == [
        (sneaky, "a change must be signed by a key of the access policy"),
        (clash, "this change does not apply cleanly to the version last authorized"
                " (an earlier change to the file was refused)")]
    s.repo.unsigned.clear()
    s.edit(ADMIN, priority=2)  # still on top of the refused line: still refused
    h.until_idle()
    assert h.batch("maps").spec.priority == 5  # type: ignore[union-attr]
    s.edit(ADMIN, priority=5)  # reverted to the authorized version: the file is free again
    s.edit(ADMIN, priority=2)
    h.until_idle()
    assert h.batch("maps").spec.priority == 2  # type: ignore[union-attr]
    assert refusals(s) == [] and h.store.load_sync_state().access_held == {}


def test_turning_the_policy_off_applies_the_branch_as_it_is(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    s.edit(DEPOSITOR, priority=1)
    h.until_idle()
    assert h.batch("maps").spec.priority == 5  # type: ignore[union-attr]
    h = s.start("off")
    h.until_idle()
    assert h.batch("maps").spec.priority == 1  # type: ignore[union-attr]
    state = h.store.load_sync_state()
    assert (state.access_refusals, state.access_held) == ({}, {})


def test_the_deployed_policy_is_valid_and_mounted_where_the_reconciler_reads_it(
        tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "deploy"
    config_map = yaml.safe_load((root / "access-policy.yaml").read_text())
    policy = tmp_path / "policy.yaml"
    policy.write_text(config_map["data"]["policy.yaml"])
    assert load_policy(policy).mode == "off"
    deployment = next(doc for doc in yaml.safe_load_all((root / "reconciler.yaml").read_text())
                      if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["BATCHQ_ACCESS_POLICY"] == f"{mounts['access-policy']}/policy.yaml"
    assert volumes["access-policy"]["configMap"] == {"name": config_map["metadata"]["name"]}
    assert "access-policy.yaml" in (root / "kustomization.yaml").read_text()


def test_the_plan_hook_lists_what_a_range_would_have_refused(s: Setup) -> None:
    from reconciler.source.access import refusals_between

    h = s.start()
    s.admin_profile()
    base = s.deposit("a1")
    restart = s.edit(DEPOSITOR, restarts={"a1": 1})
    h.rec.source.fetch()
    found = refusals_between(h.rec.source.repo(), h.settings.access_policy, base, restart,
                             timeout=60)
    assert [(r.commit, r.field) for r in found] == [(restart, "spec.restarts")]
    assert h.store.get_batch("maps") is None  # nothing was synced or applied


def test_a_file_name_that_is_not_utf8_stops_no_other_batch(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    (s.repo.path / "batches").mkdir()
    odd = bytes(s.repo.path) + b"/batches/caf\xe9.yaml"
    with open(odd, "wb") as fh:
        fh.write(b"kind: Batch\n")
    s.deposit("a1")
    h.until_idle()
    assert h.state("maps") == "Completed"
    errors = h.store.load_sync_state().file_errors
    assert errors == {"batches/caf\\xe9.yaml": "batches/caf\\xe9.yaml:1:1: file name is not"
                      " UTF-8: rename it (batches/<name>.yaml, with the name in lowercase"
                      " letters, digits and '-')"}
    assert h.rec.last_sync_error == ""


def test_a_trusted_commit_starts_verification_after_unsigned_history(s: Setup) -> None:
    s.repo.unsigned.update({DEPOSITOR[1], ADMIN[1]})
    s.admin_profile()
    trusted = s.deposit("a1", priority=5)  # history from before the policy: unsigned
    sneaky = s.edit(DEPOSITOR, priority=1)  # after it: judged
    s.repo.unsigned.clear()
    s.deposit("b1", path="batches/other.yaml")
    s.policy.write_text(policy_doc(s.keys).replace(
        "  signers:", f"  trustedCommit: {trusted}\n  signers:", 1))
    policy = load_policy(s.policy)
    assert policy.trusted_commit == trusted
    h = s.h = Harness(s.repo, s.state, s.smtp.hostport, access_policy=policy)
    h.world = s.world
    h.until_idle()
    assert h.state("maps") == "Completed" and h.state("other") == "Completed"
    assert h.batch("maps").spec.priority == 5  # type: ignore[union-attr]
    assert h.batch("maps").source_revision == trusted
    assert [(r["commit"], r["field"]) for r in refusals(s)] == [(sneaky, "spec.priority")]


def test_the_policy_schema_is_valid_and_every_pattern_has_words() -> None:
    from jsonschema import Draft202012Validator

    from reconciler.spec.validation import PATTERN_HINTS, load_schema

    schema = load_schema("AccessPolicy")
    Draft202012Validator.check_schema(schema)
    patterns = set(re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', json.dumps(schema, indent=1)))
    assert patterns and {json.loads(p) for p in patterns} <= set(PATTERN_HINTS)


def test_an_edit_on_a_refused_addition_is_judged_as_the_addition(s: Setup) -> None:
    h = s.start()
    s.admin_profile()
    s.repo.unsigned.add(DEPOSITOR[1])
    s.deposit("a1", priority=1)  # unsigned, and jumping the queue
    s.repo.unsigned.clear()
    signed = s.edit(DEPOSITOR, depositor={"name": "Jane", "email": DEPOSITOR[1]})
    h.until_idle()
    assert h.store.get_batch("maps") is None  # her signed edit does not launder priority: 1
    assert [(r["signer"], r["field"]) for r in refusals(s)] == [
        ("unsigned", "spec.priority"), (DEPOSITOR[1], "spec.priority")]
    assert refusals(s)[1]["commit"] == signed
    s.edit(DEPOSITOR, priority=5)  # signed, with the admin field at its default: it counts
    h.until_idle()
    assert h.state("maps") == "Completed" and refusals(s) == []


@pytest.mark.parametrize("failpoint", ["after-apply", "after-sync"])
def test_a_reconciler_killed_while_syncing_refuses_the_same_after_restart(
        s: Setup, failpoint: str) -> None:
    env = {"BATCHQ_ACCESS_POLICY": str(s.policy)}
    run = ["reconcile", "--until-idle", "--repo", str(s.repo.path), "--state", str(s.state)]
    s.policy.write_text(policy_doc(s.keys))
    s.admin_profile()
    s.deposit("a1")
    assert batchq(*run, env=env).returncode == 0
    hold = s.edit(DEPOSITOR, state="Held")  # refused
    s.deposit("b1", who=OTHER, path="batches/olga.yaml")  # allowed, in the same push
    killed = batchq(*run, env=env, failpoint=failpoint)
    assert killed.returncode == -9, killed.stderr
    assert batchq(*run, env=env).returncode == 0
    doc, text = s.status()
    states = {b["name"]: (b["state"], b["generation"]) for b in doc["batches"]}
    assert states == {"maps": ("Completed", 1), "olga": ("Completed", 1)}
    assert [(r["commit"], r["field"]) for r in doc["refused"]] == [(hold, "spec.state")]
    assert f"refused: commit {hold[:12]} by jane@example.org" in text


def test_a_changed_policy_file_takes_over_without_a_restart(
        s: Setup, caplog: pytest.LogCaptureFixture) -> None:
    s.policy.write_text(policy_doc(s.keys))
    h = s.h = Harness(s.repo, s.state, s.smtp.hostport, access_policy=load_policy(s.policy),
                      access_policy_file=str(s.policy))
    h.world = s.world
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    revoked = s.tmp / "policy.new"  # swapped in whole, as kubelet updates a ConfigMap
    revoked.write_text(policy_doc(s.keys, revoked=(ADMIN[1],)))
    revoked.replace(s.policy)
    held = s.edit(ADMIN, state="Held")
    h.until_idle()
    assert h.batch("maps").spec.state == "Active"  # type: ignore[union-attr]
    assert [r["commit"] for r in refusals(s)] == [held]
    broken = s.tmp / "policy.broken"
    broken.write_text("apiVersion: batchq.dev/v1\nkind: AccessPolicy\nspec: {mode: lax}\n")
    broken.replace(s.policy)
    s.edit(ADMIN, priority=1)
    h.until_idle()
    assert h.batch("maps").spec.priority == 5  # type: ignore[union-attr]  # still revoked
    assert (f"access policy {s.policy} changed but cannot be used; the last valid one stays:"
            f'\n{s.policy}:3:14: spec.mode: "lax" is not one of "off", "warn", "enforce"'
            ) in caplog.text


def test_plan_shows_the_refusals_a_push_would_get_and_what_enforce_applies(
        s: Setup) -> None:
    """`batchq plan` on a push of three commits: a depositor's priority change and an
    unsigned profile change are refused (commit, signer, path and field shown), the admin's
    hold is planned, and the plan writes nothing; the sync then refuses the same."""
    h = s.start()
    s.admin_profile()
    s.deposit("a1")
    s.deposit("b1", who=OTHER, path=OTHER_BATCH)
    h.until_idle()
    before_priority = h.batch("maps").spec.priority  # type: ignore[union-attr]
    priority = s.edit(DEPOSITOR, priority=1)
    s.repo.write("profiles/test.yaml", profile_doc(s.world.prefix) | {"spec": {
        **profile_doc(s.world.prefix)["spec"], "job": {"command": ["/bin/true"]}}})
    profile = s.repo.commit("a profile, unsigned", who=ADMIN, sign=False)
    hold = s.edit(ADMIN, path=OTHER_BATCH, state="Held")
    h.close()  # the reconciler is stopped while the plan runs: nothing else writes
    s.h = None
    before = {p: p.read_bytes() for p in sorted(s.state.rglob("*")) if p.is_file()}
    out = batchq("plan", "--repo", str(s.repo.path), "--state", str(s.state),
                 "--access-policy", str(s.policy), "--format", "json", "HEAD")
    assert out.returncode == 0, out.stderr
    changes = json.loads(out.stdout)["changes"]
    shown = [(c["details"]["commit"], c["details"]["signer"], c["path"], c["details"]["field"])
             for c in changes if c["action"] == "unauthorized"]
    assert shown == [(priority, DEPOSITOR[1], BATCH, "spec.priority"),
                     (profile, "unsigned", "profiles/test.yaml", "")]
    # enforce: what is planned is what would be applied, without the refused changes
    assert [(c["action"], c["path"]) for c in changes if c["action"] != "unauthorized"] == [
        ("hold", OTHER_BATCH)]
    text = batchq("plan", "--repo", str(s.repo.path), "--state", str(s.state),
                  "--access-policy", str(s.policy), "HEAD")
    assert (f"unauthorized     {BATCH}: the access policy refuses commit {priority[:12]} by"
            f" jane@example.org: {BATCH} spec.priority: only an admin may change"
            " spec.priority; not applied") in text.stdout
    assert f"commit {profile[:12]} by unsigned: profiles/test.yaml:" in text.stdout
    assert {p: p.read_bytes() for p in sorted(s.state.rglob("*")) if p.is_file()} == before
    assert hold  # the sync then makes the refusals the plan showed
    h = s.start()
    h.until_idle()
    assert [(r["commit"], r["signer"], r["path"], r["field"]) for r in refusals(s)] == shown
    assert h.batch("other").spec.state == "Held"  # type: ignore[union-attr]
    assert h.batch("maps").spec.priority == before_priority  # type: ignore[union-attr]


def test_plan_without_a_policy_or_in_mode_off_verifies_nothing(s: Setup) -> None:
    h = s.start("off")
    s.admin_profile()
    s.deposit("a1")
    h.until_idle()
    priority = s.edit(DEPOSITOR, priority=1)
    for extra in ([], ["--access-policy", str(s.policy)]):
        out = batchq("plan", "--repo", str(s.repo.path), "--state", str(s.state), *extra,
                     "--format", "json", "HEAD")
        assert out.returncode == 0, out.stderr
        changes = json.loads(out.stdout)["changes"]
        assert [c["action"] for c in changes] == ["change"], changes
    assert priority
