"""The CLI and logs an operator expects (issue 10 §6): `batchq reconcile-now`, one
structured INFO line per transition (text or JSON), and no HTTP access lines by default.
Everything runs as real processes against a real repository and a real SMTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.support.heartbeat import read_heartbeat
from tests.fixtures import (
    GitRepo,
    PayloadServer,
    SmtpServer,
    batch_doc,
    batchq,
    free_port,
    profile_doc,
    wait_for,
)


@contextmanager
def running(log: Path, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`batchq run ...` in a process of its own, its log in `log`, stopped with SIGINT (as
    Ctrl-C) after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", *args],
                                env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_reconcile_now_asks_the_running_loop_and_waits_for_the_head(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"BATCHQ_STATE": str(state), "BATCHQ_SMTP": smtp.hostport}
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/first.yaml", batch_doc([payloads.add("f1", b"f\n")]))
    first = git_repo.commit("first")
    port = free_port()
    log = tmp_path / "run.log"
    with running(log, "--repo", str(git_repo.path), "--interval", "3600", "--web",
                 f"127.0.0.1:{port}", env=env):
        wait_for(lambda: read_heartbeat(state).get("head") == first, timeout=60,
                 what="the loop's first sync")
        for _ in range(3):  # the site is read, as a probe or a person would
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10):
                pass
        git_repo.write("batches/second.yaml", batch_doc([payloads.add("s1", b"s\n")]))
        second = git_repo.commit("second")
        now = batchq("reconcile-now", "--repo", str(git_repo.path), "--timeout", "60", env=env)
        assert now.returncode == 0, now.stderr  # long before the 3600 s interval
        assert now.stdout == f"reconciled: the reconciler has synced {second[:12]} of main\n"
        doc = json.loads(batchq("status", "--json", env=env).stdout)
        assert {b["name"] for b in doc["batches"]} == {"first", "second"}
        wait_for(lambda: all(b["state"] == "Completed" for b in json.loads(batchq(
            "status", "--json", env=env).stdout)["batches"]), timeout=60,
            what="both batches to complete")
    logged = log.read_text()
    # `run` logs each transition at INFO without -v, and no HTTP access line
    assert "GET /healthz" not in logged, logged
    lines = [line for line in logged.splitlines()
             if " INFO reconciler.control.controller: " in line]
    assert any("batch batch=second from=Processing to=Reporting reason=\"every job is"
               " terminal\" commit=" + second in line for line in lines), logged
    assert any("job batch=second item=s1 attempt=1 from=Processing to=Completed job=" in line
               for line in lines), logged


def test_reconcile_now_without_a_running_reconciler_says_so(
        git_repo: GitRepo, payloads: PayloadServer, tmp_path: Path) -> None:
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.commit("profile")
    state = tmp_path / "state"
    out = batchq("reconcile-now", "--repo", str(git_repo.path), "--state", str(state),
                 "--timeout", "1")
    assert (out.returncode, out.stderr) == (1, f"batchq: no reconciler state in {state}: start"
                                               " `batchq run` with this --state first\n")
    once = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(state), "--once")
    assert once.returncode == 0, once.stderr
    git_repo.write("batches/x.yaml", batch_doc([payloads.add("x1", b"x\n")]))
    head = git_repo.commit("x")
    late = batchq("reconcile-now", "--repo", str(git_repo.path), "--state", str(state),
                  "--timeout", "1")
    assert late.returncode == 1
    assert late.stderr.startswith(f"batchq: the reconciler did not sync {head[:12]} within 1 s")
    assert (state / "sync-requested").exists()  # the request waits for the loop


def test_one_json_line_per_transition(git_repo: GitRepo, payloads: PayloadServer,
                                      smtp: SmtpServer, tmp_path: Path) -> None:
    items = [payloads.add("ok", b"fine\n"), payloads.add("bad", b"good\n")]
    payloads.files["bad"] = b"evil\n"
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/mixed.yaml", batch_doc(items))
    head = git_repo.commit("submit")
    done = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                  "--smtp", smtp.hostport, "--until-idle", "-v", "--log-format", "json")
    assert done.returncode == 0, done.stderr
    records: list[dict[str, Any]] = [json.loads(line) for line in done.stderr.splitlines()]
    moves = [(r["event"], r.get("item"), r.get("from"), r["to"]) for r in records
             if r.get("event") in ("batch", "job")]
    assert [m for m in moves if m[0] == "batch"] == [
        ("batch", None, "Pending", "Processing"), ("batch", None, "Processing", "Reporting"),
        ("batch", None, "Reporting", "Failed")]
    # a fast job may finish before any pass saw it running: Pending -> Completed is one move
    assert {m[2] for m in moves if m[:2] == ("job", "ok") and m[3] == "Completed"} & {
        "Pending", "Processing"}
    assert {m[2] for m in moves if m[:2] == ("job", "bad") and m[3] == "Failed"} & {
        "Pending", "Processing"}
    failed = next(r for r in records if r.get("item") == "bad" and r["to"] == "Failed")
    assert failed["batch"] == "mixed" and failed["attempt"] == 1 and failed["commit"] == head
    assert "digest" in failed["reason"] or "mismatch" in failed["reason"]
    assert failed["level"] == "INFO" and failed["time"].endswith("Z")
