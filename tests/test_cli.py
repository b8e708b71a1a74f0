"""The `batchq` command as other tools drive it (DESIGN §7), as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from reconciler.support.heartbeat import read_heartbeat
from tests.fixtures import (
    ADMIN,
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    free_port,
    profile_doc,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent



def test_demo_runs_the_whole_story_within_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    out = batchq("demo", "--keep", str(tmp_path / "demo"), timeout=60)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 60
    text = out.stdout
    assert "Subject: Ingest: OK -- Submission Processed: maps-2026-11" in text
    assert "Subject: Ingest: FAIL -- Submission Failed: letters-2026-11" in text
    assert "Subject: Ingest: OK -- Submission Updated: letters-2026-11" in text
    assert "letter-003: Failed -> Completed" in text
    assert "letters-2026-11: Completed\n  maps-2026-11: Completed" in text
    emls = sorted(p.name for p in (tmp_path / "demo" / "state" / "outbox").glob("*.eml"))
    # batch _ incarnation _ report round
    assert [re.sub(r"_[0-9a-f]{12}_", "_<uid>_", e) for e in emls] == [
        "letters-2026-11_<uid>_1.eml", "letters-2026-11_<uid>_2.eml", "maps-2026-11_<uid>_1.eml"]


def test_reconcile_and_status_json(git_repo: GitRepo, tmp_path: Path, payloads: PayloadServer,
                                   smtp: SmtpServer) -> None:
    items = [payloads.add("s1", b"one\n"), payloads.add("s2", b"two\n")]
    payloads.files["s2"] = b"bad\n"
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/st.yaml", batch_doc(items))
    rev = git_repo.commit("submit")
    state = str(tmp_path / "state")
    env = {"BATCHQ_STATE": state, "BATCHQ_SMTP": smtp.hostport}
    once = batchq("reconcile", "--repo", str(git_repo.path), "--once", env=env)
    assert once.returncode == 0, once.stderr
    doc = json.loads(batchq("status", "--json", env=env).stdout)
    assert doc["batches"][0]["state"] == "Pending" or doc["batches"][0]["state"] == "Processing"
    idle = batchq("reconcile", "--repo", str(git_repo.path), "--until-idle", env=env)
    assert idle.returncode == 0, idle.stderr
    git_repo.edit_batch("batches/st.yaml", state="UpdateReporting")
    assert batchq("reconcile", "--repo", str(git_repo.path), "--until-idle",
                  env=env).returncode == 0
    doc = json.loads(batchq("status", "st", "--json", env=env).stdout)
    assert list(doc) == ["batches"]
    [b] = doc["batches"]
    assert list(b)[:7] == ["name", "state", "generation", "observedGeneration",
                           "sourceRevision", "jobs", "reports"]  # DESIGN §7, then more
    assert list(b)[7:] == ["message", "conditions"]
    assert (b["name"], b["state"], b["generation"], b["observedGeneration"]) == (
        "st", "Failed", 2, 2)
    assert b["sourceRevision"] != rev and len(b["sourceRevision"]) == 40
    # DESIGN §7's keys first; the object's file count and identifiers added at the end
    one_file = {"files": 1, "primaryId": None, "localIds": []}
    assert b["jobs"] == [
        {"item": "s1", "name": "st-s1-1", "state": "Completed", "attempt": 1, "message": "",
         **one_file},
        {"item": "s2", "name": "st-s2-1", "state": "Failed", "attempt": 1,
         "message": b["jobs"][1]["message"], **one_file},
    ]
    assert list(b["jobs"][0])[:5] == ["item", "name", "state", "attempt", "message"]
    assert b["jobs"][1]["message"].startswith("digest mismatch")
    # DESIGN §7's keys first; per-recipient delivery added at the end
    assert [list(r) for r in b["reports"]] == [
        ["kind", "createdAt", "emailed", "changed", "delivery"]] * 2
    assert [d["state"] for d in b["reports"][0]["delivery"]] == ["delivered"] * 2
    assert b["reports"][1]["delivery"] == []
    assert [(r["kind"], r["emailed"], r["changed"]) for r in b["reports"]] == [
        ("initial", True, []), ("update", False, [])]
    assert b["reports"][0]["createdAt"].endswith("Z")
    text = batchq("status", env=env).stdout
    assert "st: Failed (generation 2" in text and "digest mismatch" in text
    assert len(smtp.mailbox.messages) == 1


def test_validate_exit_codes_and_lines(tmp_path: Path) -> None:
    ok = batchq("validate", str(ROOT / "manifests"))
    assert ok.returncode == 0 and ok.stdout == "4 files valid\n"
    bad = tmp_path / "batches" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: nope\n"
                   "  depositor: {email: a@b.org}\n  manifest: {items: [{id: ../x, url: "
                   "'http://h/x'}]}\n")
    out = batchq("validate", str(bad))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith(f"{bad}:6:") and "../x" in line for line in lines), lines
    assert any(f"{bad}:4:" in line and 'profile "nope" not found' in line for line in lines)


def test_admin_identity_is_kept_in_the_timeline(git_repo: GitRepo, tmp_path: Path,
                                                payloads: PayloadServer) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/t.yaml", batch_doc([payloads.add("t1", b"t\n")], state="Held"))
    git_repo.commit("submit held")
    held_rev = git_repo.git("rev-parse", "HEAD")
    env = {"BATCHQ_STATE": str(tmp_path / "state")}
    assert batchq("reconcile", "--repo", str(git_repo.path), "--until-idle",
                  env=env).returncode == 0
    git_repo.edit_batch("batches/t.yaml", who=ADMIN, state="Active")
    assert batchq("reconcile", "--repo", str(git_repo.path), "--until-idle",
                  env=env).returncode == 0
    from reconciler.store.backends import local_db_path
    from reconciler.store.local.sqlite import SqliteStore

    store = SqliteStore(local_db_path(tmp_path / "state"))
    events = [(e.reason, e.revision) for e in store.list_events("t")]
    store.close()
    assert events[1] == ("Held", held_rev)
    assert events[-1][0] == "Completed"


def test_run_loop_syncs_at_once_when_asked(git_repo: GitRepo, tmp_path: Path,
                                           payloads: PayloadServer) -> None:
    """`batchq run` with a long interval acts within seconds of a sync request."""
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.commit("profile only")
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--repo",
                             str(git_repo.path), "--state", str(state), "--interval", "120"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the first pass is over: the loop now sleeps its 120 s unless asked
        wait_for(lambda: "lastPass" in read_heartbeat(state), what="the loop's first pass")
        git_repo.write("batches/now.yaml", batch_doc([payloads.add("n1", b"n\n")]))
        git_repo.commit("submit")
        (state / "sync-requested").touch()
        wait_for(lambda: '"state": "Completed"' in batchq(
            "status", "--json", env={"BATCHQ_STATE": str(state)}).stdout,
            timeout=20, interval=0.3, what="the batch to complete long before the interval")
        assert not (state / "sync-requested").exists()
    finally:
        proc.terminate()
        proc.wait(10)


def test_run_with_web_serves_pages_and_a_webhook_wakes_the_loop(
        git_repo: GitRepo, tmp_path: Path, payloads: PayloadServer) -> None:
    import urllib.error
    import urllib.request

    from tests.fixtures import free_port

    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.commit("profile only")
    state = tmp_path / "state"
    port = free_port()
    env = {**os.environ, "BATCHQ_GITLAB_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--repo",
                             str(git_repo.path), "--state", str(state), "--interval", "120",
                             "--web", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(healthy, interval=0.2, what="the site to answer /healthz")
        git_repo.write("batches/hook.yaml", batch_doc([payloads.add("h1", b"h\n")]))
        git_repo.commit("submit")
        bad = urllib.request.Request(base + "/hooks/git", data=b"{}", method="POST",
                                     headers={"X-Gitlab-Token": "nope"})
        try:
            urllib.request.urlopen(bad, timeout=5)
            raise AssertionError("a bad token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        good = urllib.request.Request(base + "/hooks/git", data=b"{}", method="POST",
                                      headers={"X-Gitlab-Token": "tok"})
        with urllib.request.urlopen(good, timeout=5) as r:
            assert r.status == 202
        def batch_page() -> str:
            try:
                with urllib.request.urlopen(base + "/batches/hook", timeout=5) as r:
                    return str(r.read().decode())
            except urllib.error.HTTPError:  # 404 until the sync has seen the file
                return ""

        wait_for(lambda: "Completed" in batch_page(), timeout=20, interval=0.3,
                 what="the page to show the batch Completed long before the interval")
    finally:
        proc.terminate()
        proc.wait(10)


def test_lease_timings_that_cannot_work_are_refused_before_anything_starts(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """As client-go: retry period < renew deadline < lease duration, or a leader could act
    after a stand-by took its Lease over. Refused at start, naming the flags."""
    out = batchq("run", "--backend", "kubernetes", "--repo", str(git_repo.path), "--state",
                 str(tmp_path / "state"), "--lease-duration", "5", "--renew-deadline", "10",
                 timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "batchq: lease timings must satisfy 0 < retry period (2 s) < renew deadline (10 s)"
        " < lease duration (5 s): change --lease-duration, --renew-deadline or"
        " --retry-period")


def test_reconcile_says_in_one_line_that_the_api_server_cannot_be_reached(
        git_repo: GitRepo, tmp_path: Path) -> None:
    """Nothing listens on the kubeconfig's port (127.0.0.1): `reconcile --once` waits for
    its caches as long as it would for a slow server, then exits 1 with one line."""
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    out = batchq("reconcile", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                 "--repo", str(git_repo.path), "--state", str(tmp_path / "state"), "--once",
                 timeout=90)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("batchq: the batches cache did not sync in 30 s: cannot reach"
                               " the API server: "), lines[0]
    assert f"port={port}" in lines[0] and "Connection refused" in lines[0], lines[0]
