"""One input never wedges the queue (issue 7 §2): each bad input becomes a visible condition
on its own batch or file, and every other batch goes on. Real Git repositories, a real SMTP
server, real payload servers and real worker processes throughout."""

from __future__ import annotations

import email
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.control.notify import deliver
from reconciler.store.backends import BackendSettings, store_factory
from reconciler.store.local.sqlite import SqliteStore
from tests.fixtures import (
    ADMIN,
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    free_port,
    profile_doc,
    queue_doc,
    wait_for,
)
from tests.harness import Harness
from web.app import create_app


@pytest.fixture
def h(git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> Iterator[Harness]:
    # one Job made ahead per slot (the default is three): the counts below stay short
    harness = Harness(git_repo, tmp_path / "state", smtp.hostport, jobs_ahead=1)
    yield harness
    harness.close()


def named(name: str, doc: dict[str, object]) -> dict[str, object]:
    return {**doc, "metadata": {"name": name}}


# --- Job names ---------------------------------------------------------------------------

def test_batches_whose_readable_job_names_meet_both_complete(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """`maps-2026` item `11-001` and `maps-2026-11` item `001` once shared a Job."""
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/a.yaml", named("maps-2026", batch_doc([
        {**payloads.add("11-001", b"first\n"), "id": "11-001"}])))
    h.repo.commit("the first batch")
    h.repo.write("batches/b.yaml", named("maps-2026-11", batch_doc([
        {**payloads.add("001", b"second\n"), "id": "001"}])))
    h.repo.commit("the second batch")
    h.until_idle(timeout=60)
    assert h.state("maps-2026") == "Completed" and h.state("maps-2026-11") == "Completed"
    names = h.job_names("maps-2026") + h.job_names("maps-2026-11")
    assert len(set(names)) == 2 and all(n.startswith("maps-2026-11-001-1--") for n in names)
    assert payloads.requests.count("11-001") == 1 and payloads.requests.count("001") == 1
    assert sorted(smtp.mailbox.subjects()) == [
        "Ingest: OK -- Submission Processed: maps-2026",
        "Ingest: OK -- Submission Processed: maps-2026-11"]


def test_jobs_created_under_the_old_names_are_not_run_again(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    """A store left by the previous naming scheme (`batch-item-attempt`, nothing else):
    its Jobs keep their names, and none runs a second time under a new one."""
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    items = [payloads.add(f"map-{i}", f"map {i}\n".encode()) for i in (1, 2)]
    h.repo.write("batches/old.yaml", named("old-maps", batch_doc(items)))
    h.repo.commit("submit")
    h.sync()
    h.reconcile()  # admitted
    h.reconcile()  # items read, one Job each, not started (no runner tick yet)
    with sqlite3.connect(h.settings.state_dir / "batchq.sqlite3") as db:
        for i in (1, 2):
            [(new,)] = db.execute("SELECT name FROM jobs WHERE item=?", (f"map-{i}",))
            old = f"old-maps-map-{i}-1"  # what the previous scheme called it
            assert new != old
            db.execute("UPDATE jobs SET name=? WHERE name=?", (old, new))
            db.execute("UPDATE items SET job_name=? WHERE item_id=?", (old, f"map-{i}"))
    h.until_idle(timeout=60)
    assert h.state("old-maps") == "Completed"
    assert h.job_names("old-maps") == ["old-maps-map-1-1", "old-maps-map-2-1"]
    assert [payloads.requests.count(f"map-{i}") for i in (1, 2)] == [1, 1]
    assert len(smtp.mailbox.messages) == 1


# --- file names that are not UTF-8 -------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_a_file_error_and_the_rest_syncs(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/naïve.yaml", named("naive", batch_doc([payloads.add("n", b"n\n")])))
    first = h.repo.commit("a batch whose file name is UTF-8 but not ASCII")
    h.until_idle(timeout=60)
    bad = os.fsencode(h.repo.path / "batches") + b"/\xff.yaml"
    with open(bad, "wb") as fh:
        fh.write(yaml.safe_dump(named("latin", batch_doc([payloads.add("l", b"l\n")]))).encode())
    h.repo.write("batches/good.yaml", batch_doc([payloads.add("g", b"g\n")]))
    h.repo.commit("a file named in Latin-1, and a good batch")
    h.until_idle(timeout=60)
    assert h.state("good") == "Completed" and h.state("naive") == "Completed"
    assert h.batch("naive").source_revision == first  # git's quoted names are read too
    assert "latin" not in {b.name for b in h.store.list_batches()}
    shown = batchq("status", "--state", str(h.settings.state_dir))
    assert shown.returncode == 0, shown.stderr
    assert ("error: batches/\\xff.yaml:1:1: file name is not UTF-8: rename it"
            in shown.stderr), shown.stderr
    assert "Traceback" not in shown.stderr
    assert h.store.load_sync_state().sync_error == ""

    h.repo.git("mv", os.fsdecode(bad), "batches/latin.yaml")
    h.repo.commit("renamed")
    h.until_idle(timeout=60)
    assert h.state("latin") == "Completed"
    assert "not UTF-8" not in batchq("status", "--state", str(h.settings.state_dir)).stderr
    assert sorted(smtp.mailbox.subjects()) == [
        f"Ingest: OK -- Submission Processed: {n}" for n in ("good", "latin", "naive")]


# --- email addresses ---------------------------------------------------------------------

BAD_ADDRESSES = {
    "list": ("a,b@example.org", "is a list of addresses; give exactly one address"),
    "group": ("undisclosed:x;y@example.org",
              "is a group of addresses (name: a, b;); give exactly one address"),
    "encoded": ("=?utf-8?q?ops=40evil.example?=@example.org",
                "contains an encoded word (=?...?=); write the address itself"),
    "comment": ("jane(admin)@example.org", "has a display name, comment or quotes"),
}


def with_email(doc: dict[str, Any], address: str) -> dict[str, Any]:
    doc["spec"]["depositor"]["email"] = address
    return doc


def test_an_address_field_must_be_one_address(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """Lists, groups, encoded words and comments in a depositor's address are file errors:
    a new batch never starts, a settled one keeps its last good spec, visibly, and costs
    no pass anything; the profile's address fields are held to the same rule."""
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/settled.yaml", batch_doc([payloads.add("s", b"s\n")]))
    h.repo.commit("a batch that will be settled")
    h.until_idle(timeout=60)
    assert h.state("settled") == "Completed"

    for name, (address, _) in BAD_ADDRESSES.items():
        h.repo.write(f"batches/{name}.yaml",
                     with_email(batch_doc([payloads.add(name, b"x\n")]), address))
    h.repo.write("batches/good.yaml", batch_doc([payloads.add("g", b"g\n")]))
    settled = with_email(batch_doc([payloads.add("s", b"s\n")]), BAD_ADDRESSES["group"][0])
    settled["spec"]["colour"] = "blue"  # and an unknown field, in a settled batch
    h.repo.write("batches/settled.yaml", settled)
    bad_profile = profile_doc(payloads.base, recipients=["ops,x@evil.example"])
    bad_profile["metadata"]["name"] = "other"
    h.repo.write("profiles/other.yaml", bad_profile)
    h.repo.commit("bad addresses")
    with caplog.at_level(logging.WARNING):
        h.until_idle(timeout=60)
    assert h.state("good") == "Completed"
    errors = h.store.load_sync_state().file_errors
    for name, (address, why) in BAD_ADDRESSES.items():
        b = h.batch(name)
        assert b.spec is None and h.job_names(name) == []
        assert f'spec.depositor.email: {json.dumps(address)} {why}' in b.spec_error
        assert errors[f"batches/{name}.yaml"] == b.spec_error
    assert re.fullmatch(r'profiles/other\.yaml:\d+:\d+: spec\.notification\.recipients\[0\]: '
                        r'"ops,x@evil\.example" is a list of addresses; .*',
                        errors["profiles/other.yaml"])
    s = h.batch("settled")
    assert s.status.state == "Completed" and s.spec is not None
    assert s.spec.depositor.email == "jane@example.org"  # the last good spec stays
    invalid = next(c for c in s.status.conditions if c.type == "Invalid")
    assert invalid.status and "is a group of addresses" in invalid.message
    assert 'unknown field "colour"' in invalid.message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    writes = h.store.writes
    h.full_pass()
    h.full_pass()
    assert h.store.writes == writes  # nothing is redone on later passes
    rcpts = sorted(r for _, to in smtp.mailbox.envelopes for r in to)
    assert rcpts == ["jane@example.org", "jane@example.org", "ops@example.org",
                     "ops@example.org"]  # the depositor and the profile's bcc, twice
    assert sorted(smtp.mailbox.subjects()) == [
        f"Ingest: OK -- Submission Processed: {n}" for n in ("good", "settled")]


# --- a profile removed under its batches -------------------------------------------------

def test_a_removed_profile_makes_its_batches_wait_visibly(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """Once raised an AssertionError every pass. Now: jobs already made finish (m2's and
    m3's were made ahead, waiting for a slot, as on Kubernetes a Job made runs), no new
    one is made, the report waits (the profile says who hears of it), all of it shown;
    the other profile's batch runs; the profile's return resumes the batches where they
    are."""
    other = profile_doc(payloads.base)
    other["metadata"]["name"] = "other"
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("profiles/other.yaml", other)
    h.repo.write("queue.yaml", queue_doc(maxActiveJobs=2))
    h.repo.write("batches/one.yaml", batch_doc([payloads.add("o1", b"o1\n", gated=True)]))
    h.repo.commit("a batch on profile test")
    h.repo.write("batches/many.yaml", batch_doc(
        [payloads.add(f"m{i}", f"m{i}\n".encode(), gated=True) for i in (1, 2, 3, 4)]))
    h.repo.commit("another, queued after it: the job limit leaves room for one job of it to"
                  " run and two to be made ahead")
    h.until(lambda: payloads.requests.count("m1") == 1 and payloads.requests.count("o1") == 1,
            "the first job of each batch to start")
    h.repo.remove("profiles/test.yaml")
    h.repo.write("batches/elsewhere.yaml", {**batch_doc([payloads.add("e1", b"e1\n")]),
                                            "spec": {**batch_doc([payloads.add("e1", b"e1\n")])
                                                     ["spec"], "profile": "other"}})
    h.repo.commit("profile test removed; a batch on profile other")
    with caplog.at_level(logging.WARNING):
        h.sync()
        payloads.release("m1", "o1", "m2", "m3")
        h.until(lambda: h.state("elsewhere") == "Completed", "the other profile's batch")
        h.until(lambda: h.jobs("many")["m3"] == "Completed" and h.state("one") == "Reporting",
                "the jobs made to finish")
        h.until_idle(timeout=60)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    missing = 'profile "test" not found (expected profiles/test.yaml): '
    fix = "; add the profile back or change spec.profile"
    for name, waits, state in (("many", "no new job starts", "Processing"),
                               ("one", "the report waits", "Reporting")):
        b = h.batch(name)
        assert str(b.status.state) == state
        stalled = next(c for c in b.status.conditions if c.type == "Stalled")
        assert (stalled.status, stalled.reason) == (True, "ProfileNotFound")
        assert stalled.message == missing + waits + fix
    assert h.jobs("many") == {"m1": "Completed", "m2": "Completed", "m3": "Completed",
                              "m4": "Pending"}
    assert h.job_names("many") == ["many-m1-1", "many-m2-1", "many-m3-1"]  # m4: no Job
    shown = batchq("status", "--state", str(h.settings.state_dir))
    assert f"  Stalled: {missing}no new job starts{fix}" in shown.stdout
    doc = json.loads(batchq("status", "one", "--json",
                            "--state", str(h.settings.state_dir)).stdout)
    assert {"type": "Stalled", "status": True, "reason": "ProfileNotFound",
            "message": missing + "the report waits" + fix} in doc["batches"][0]["conditions"]
    writes = h.store.writes
    h.full_pass()
    assert h.store.writes == writes
    assert smtp.mailbox.subjects() == ["Ingest: OK -- Submission Processed: elsewhere"]

    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.commit("profile test is back")
    payloads.release("m4")
    h.until_idle(timeout=60)
    assert h.state("many") == "Completed" and h.state("one") == "Completed"
    for name in ("many", "one"):
        stalled = next(c for c in h.batch(name).status.conditions if c.type == "Stalled")
        assert (stalled.status, stalled.reason, stalled.message) == (False, "Resolved", "")
    assert sorted(smtp.mailbox.subjects()) == [
        f"Ingest: OK -- Submission Processed: {n}" for n in ("elsewhere", "many", "one")]


# --- per-batch back-off ------------------------------------------------------------------

TRY_LINE = re.compile(r"batch broken: step failed; the others go on: FailPoint: fail point "
                      r"step@broken reached \(try (\d+) failed; next try at \S+Z, in (\d+) s, "
                      r"or at once on a new commit\)")


def test_a_batch_whose_step_raises_backs_off_alone_and_shows_it(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    """`batchq run` with every step of one batch raising: the other batch completes; the
    broken one is tried after 1 s, 2 s, 4 s …, logged once per try (not per pass), and
    status, status --json and the page show the error and the next try."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/broken.yaml", batch_doc([payloads.add("b1", b"b1\n")]))
    git_repo.write("batches/fine.yaml", batch_doc([payloads.add("f1", b"f1\n")]))
    git_repo.commit("two batches")
    state = tmp_path / "state"
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--repo", str(git_repo.path),
             "--state", str(state), "--smtp", smtp.hostport, "--interval", "0.2",
             "--web", f"127.0.0.1:{port}"],
            env={**os.environ, "BATCHQ_FAILPOINTS": "step@broken:raise"},
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        def tries() -> list[tuple[int, int]]:
            return [(int(n), int(d)) for n, d in TRY_LINE.findall(log.read_text())]

        wait_for(lambda: len(tries()) >= 3 and bool(smtp.mailbox.messages), timeout=60,
                 what="three tries of the broken batch and the fine one's report")
        doc = json.loads(batchq("status", "--json", "--state", str(state)).stdout)
        by_name = {b["name"]: b for b in doc["batches"]}
        assert by_name["fine"]["state"] == "Completed"
        assert by_name["broken"]["state"] == "Pending" and by_name["broken"]["jobs"] == []
        [shown] = [c for c in by_name["broken"]["conditions"] if c["type"] == "ReconcileError"]
        assert shown["status"] is True and shown["reason"] == "FailPoint"
        assert re.fullmatch(r"FailPoint: fail point step@broken reached \(try \d+ failed; next"
                            r" try at \S+Z, in \d+ s, or at once on a new commit\)",
                            shown["message"]), shown["message"]
        text = batchq("status", "broken", "--state", str(state)).stdout
        assert "  ReconcileError: FailPoint: fail point step@broken reached (try" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/batches/broken", timeout=10) as r:
            page = r.read().decode()
        assert "ReconcileError" in page and "fail point step@broken reached" in page
        seen = tries()
        assert [n for n, _ in seen] == list(range(1, len(seen) + 1))  # once per try
        assert [d for _, d in seen] == [min(2 ** (n - 1), 300) for n, _ in seen]
    finally:
        proc.terminate()
        proc.wait(30)
    assert smtp.mailbox.subjects() == ["Ingest: OK -- Submission Processed: fine"]

    # the cause gone (here: a process without the fail point), the batch runs and the
    # error is cleared
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    doc = json.loads(batchq("status", "broken", "--json", "--state", str(state)).stdout)
    [b] = doc["batches"]
    assert b["state"] == "Completed"
    assert {"type": "ReconcileError", "status": False, "reason": "Resolved",
            "message": ""} in b["conditions"]


# --- renaming metadata.name --------------------------------------------------------------

def test_renaming_a_batch_retires_the_old_name_as_deleting_its_file_does(
        h: Harness, payloads: PayloadServer, smtp: SmtpServer) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", queue_doc(maxDeletesPerSync=2, maxActiveBatches=10))
    h.repo.write("batches/a.yaml", named("a", batch_doc([payloads.add("a1", b"a\n",
                                                                       gated=True)])))
    h.repo.write("batches/b.yaml", named("b", batch_doc([payloads.add("b1", b"b\n")])))
    h.repo.write("batches/c.yaml", named("c", batch_doc([payloads.add("c1", b"c\n")])))
    h.repo.commit("three batches")
    h.until(lambda: payloads.requests.count("a1") == 1 and h.state("b") == "Completed"
            and h.state("c") == "Completed", "a's job to run, b and c to complete")

    h.repo.write("batches/a.yaml", named("a2", batch_doc([payloads.add("a1", b"a\n",
                                                                        gated=True)])))
    h.repo.write("batches/b.yaml", named("b2", batch_doc([payloads.add("b1", b"b\n")])))
    h.repo.remove("batches/c.yaml")
    h.repo.commit("rename a and b, delete c: three retirements", who=ADMIN)
    h.sync()
    h.reconcile()
    refused = h.store.load_sync_state().deletion_refused
    assert "refused to delete 3 batches" in refused and "maxDeletesPerSync=2" in refused
    assert [h.state(n) for n in "abc"] == ["Processing", "Completed", "Completed"]

    h.repo.write("queue.yaml", queue_doc(maxDeletesPerSync=3, maxActiveBatches=10))
    h.repo.commit("allow it", who=ADMIN)
    h.sync()
    h.reconcile()
    assert [h.state(n) for n in "abc"] == ["Deleted"] * 3
    assert h.job_names("a") == []  # its running job was stopped and deleted
    renamed = ("batch renamed: batches/{0}.yaml now names batch {0}2; this one is retired"
               " as if its file were deleted")
    assert h.batch("a").status.message == renamed.format("a")
    assert h.batch("b").status.message == renamed.format("b")
    assert h.batch("c").status.message == "batch file deleted"
    assert [e.reason for e in h.store.list_events("a")][-1] == "Deleted"
    payloads.release("a1")
    h.until_idle(timeout=60)
    assert h.state("a2") == "Completed" and h.state("b2") == "Completed"
    assert [h.state(n) for n in "abc"] == ["Deleted"] * 3
    shown = batchq("status", "a", "--state", str(h.settings.state_dir)).stdout
    assert "a: Deleted" in shown and renamed.format("a") in shown
    assert sorted(smtp.mailbox.subjects()) == [
        f"Ingest: OK -- Submission Processed: {n}" for n in ("a2", "b", "b2", "c")]


# --- a deleted batch's name used again ---------------------------------------------------

MESSAGE_ID = re.compile(r"<x\.([0-9a-f]{12})\.1@([^>]+)>")


@pytest.mark.parametrize("delivery", ["smtp", "eml"])
def test_a_reused_name_is_a_new_batch_whose_reports_never_meet_the_old_ones(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path,
        delivery: str) -> None:
    """x reports, is deleted, is committed again with other items and reports: two emails
    with two Message-IDs (of this installation's domain, configured or its own), two .eml
    files, and x shows only the new batch's jobs and report."""
    state = tmp_path / "state"
    args = ["reconcile", "--repo", str(git_repo.path), "--state", str(state), "--until-idle",
            "--timeout", "60"]
    env = {}
    if delivery == "smtp":
        args += ["--smtp", smtp.hostport]
        env["BATCHQ_MESSAGE_ID_DOMAIN"] = "reports.example.org"

    def reconcile() -> None:
        done = batchq(*args, env=env)
        assert done.returncode == 0, done.stderr

    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/x.yaml", batch_doc([payloads.add("old-1", b"old\n")]))
    git_repo.commit("x")
    reconcile()
    git_repo.remove("batches/x.yaml")
    git_repo.commit("x deleted", who=ADMIN)
    reconcile()
    git_repo.write("batches/x.yaml", batch_doc([payloads.add("new-1", b"new\n"),
                                                payloads.add("new-2", b"new\n")]))
    git_repo.commit("x again, other items")
    reconcile()

    if delivery == "smtp":
        messages = [bytes(m) for m in smtp.mailbox.messages]
    else:
        emls = sorted((state / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime)
        assert [re.sub(r"[0-9a-f]{12}", "<uid>", p.name) for p in emls] == ["x_<uid>_1.eml"] * 2
        messages = [p.read_bytes() for p in emls]
    parsed = [email.message_from_bytes(m) for m in messages]
    assert [m["Subject"] for m in parsed] == ["Ingest: OK -- Submission Processed: x"] * 2
    ids = [MESSAGE_ID.fullmatch(str(m["Message-ID"])) for m in parsed]
    assert all(ids) and ids[0] != ids[1], [m["Message-ID"] for m in parsed]
    old_uid, new_uid = (i.group(1) for i in ids if i)
    assert old_uid != new_uid
    domains = {i.group(2) for i in ids if i}
    with sqlite3.connect(state / "batchq.sqlite3") as db:
        own = db.execute("SELECT value FROM meta WHERE key='message_id_domain'").fetchone()
    if delivery == "smtp":
        assert domains == {"reports.example.org"} and own is None
    else:
        assert domains == {own[0]} and re.fullmatch(r"[0-9a-f]{16}\.batchq\.invalid", own[0])
    assert "new-1" in parsed[1].get_payload(0).get_payload()
    assert "old-1" not in parsed[1].get_payload(0).get_payload()

    doc = json.loads(batchq("status", "x", "--json", "--state", str(state)).stdout)
    [x] = doc["batches"]
    assert [j["item"] for j in x["jobs"]] == ["new-1", "new-2"]
    assert [r["kind"] for r in x["reports"]] == ["initial"]
    app = create_app({"STORE_FACTORY": store_factory(BackendSettings(state_dir=state))[0],
                      "STATE_DIR": state, "TESTING": True})
    api = app.test_client().get("/api/batches/x").get_json()
    assert [r["round"] for r in api["reports"]] == ["1"]
    assert "new-1" in api["reports"][0]["body"] and "old-1" not in api["reports"][0]["body"]
    page = app.test_client().get("/batches/x/reports/1.eml").data
    assert email.message_from_bytes(page)["Message-ID"] == parsed[1]["Message-ID"]

    if delivery == "eml":  # another installation's ids differ for the very same batch
        other = tmp_path / "other"
        done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(other),
                      "--until-idle", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        [again] = (other / "outbox").glob("*.eml")
        assert email.message_from_bytes(again.read_bytes())["Message-ID"] not in {
            m["Message-ID"] for m in parsed}


def test_a_message_id_domain_must_be_a_domain(git_repo: GitRepo, tmp_path: Path) -> None:
    bad = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                 "--message-id-domain", "x y@z")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert ("batchq: --message-id-domain (or BATCHQ_MESSAGE_ID_DOMAIN) 'x y@z' is not a"
            " domain name; give one such as batchq.example.org") in bad.stderr


def test_email_waiting_for_a_removed_batch_still_goes_out(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    """A batch deleted and removed (retention 0) while its report waits for the SMTP server,
    then its name used again: both reports go out once the server is back, under two
    Message-IDs."""
    smtp = SmtpServer()  # not started yet: connections are refused
    h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    try:
        h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
        h.repo.write("queue.yaml", queue_doc(deletedRetentionSeconds=0))
        h.repo.write("batches/x.yaml", batch_doc([payloads.add("one", b"1\n")]))
        h.repo.commit("x")
        h.until_idle()
        assert h.state("x") == "Completed" and len(h.store.pending_outbox(now=1e12)) == 1
        h.repo.remove("batches/x.yaml")
        h.repo.commit("x deleted", who=ADMIN)
        h.until_idle()
        assert h.store.get_batch("x") is None  # removed after its (zero) retention
        h.repo.write("batches/x.yaml", batch_doc([payloads.add("two", b"2\n")]))
        h.repo.commit("x again")
        h.until_idle()
        assert h.state("x") == "Completed"
        smtp.start()
        # the loop delivers once the back-off is due; `now` stands in for the wait
        assert deliver(h.store, smtp=smtp.hostport, outbox_dir=tmp_path / "x", now=1e12) == 2
        assert smtp.mailbox.subjects() == ["Ingest: OK -- Submission Processed: x"] * 2
        assert len({m["Message-ID"] for m in smtp.mailbox.messages}) == 2
        stats = h.store.outbox_stats()
        assert (stats["delivered"], stats["waiting"]) == (2, 0)
    finally:
        smtp.stop()
        h.close()


def test_a_state_dir_from_before_incarnations_is_upgraded_in_place(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    """The batches table as the previous version made it: the uid column is added (a row
    stored then reads uid "" and keeps report ids without one), new batches get one."""
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "batchq.sqlite3") as db:
        db.execute("""CREATE TABLE batches (
            name TEXT PRIMARY KEY, spec_json TEXT, generation INTEGER NOT NULL,
            source_path TEXT NOT NULL, source_revision TEXT NOT NULL, submitted_at REAL NOT NULL,
            status_json TEXT NOT NULL, state TEXT NOT NULL, spec_error TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL)""")
        db.execute("INSERT INTO batches VALUES ('before', NULL, 1, 'batches/before.yaml', 'r',"
                   " 0, '{}', 'Pending', 'broken', 0)")
    old = SqliteStore(state / "batchq.sqlite3")
    before = old.get_batch("before")
    old.close()
    assert before is not None and before.uid == ""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/after.yaml", batch_doc([payloads.add("a", b"a\n")]))
    git_repo.commit("a batch")
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state),
                  "--smtp", smtp.hostport, "--until-idle", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(state / "batchq.sqlite3") as db:
        uids = dict(db.execute("SELECT name, uid FROM batches"))
        [(report,)] = db.execute("SELECT id FROM reports")
    assert re.fullmatch(r"[0-9a-f]{12}", uids["after"]) and report == f"after:{uids['after']}:1"
    assert smtp.mailbox.subjects() == ["Ingest: OK -- Submission Processed: after"]
