"""Benchmark: the Lease and outages, with client-go's default timings (15 s / 10 s / 2 s).

Starts the test control plane, then two `batchq run` replicas (users batchq-replica-a and
-b, so the API server's audit log tells their writes apart) and measures:
1. Lease writes per minute of an idle leader (renewed on a timer, not per pass);
2. the hand-over on SIGTERM: from the signal to the Lease held by the stand-by, and to
   its first write for a batch committed at the same moment;
3. an outage: the API server killed for 20 s under the new leader; from its restart to
   the leader's first write for a batch committed during the outage (the replica must
   live through it).
Run: `python bench/bench_leader.py [KEEP_DIR]`; figures in bench/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import commit_all  # noqa: E402

from tests.cluster.controlplane import ControlPlane, find_or_build_binaries  # noqa: E402

NS = "lead"


def git(repo: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True)


def add_batch(repo: Path, name: str) -> None:
    (repo / "batches" / f"{name}.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Batch",
        "spec": {"profile": "k", "depositor": {"email": "b@example.org"},
                 "manifest": {"items": [{"id": "i1", "url": "http://payloads.invalid/1"}]}}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)


def replica(cp: ControlPlane, repo: Path, tmp: Path, user: str, identity: str
            ) -> subprocess.Popen[bytes]:
    log = (tmp / f"{identity}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--backend", "kubernetes", "--namespace",
         NS, "--kubeconfig", str(cp.user_kubeconfig(user)), "--repo", str(repo), "--state",
         str(tmp / f"state-{identity}"), "--interval", "1", "--leader-identity", identity],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def until(pred: Any, timeout: float = 120.0) -> float:
    """Seconds until `pred()` holds (polled every 0.05 s)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out: {pred}")
        time.sleep(0.05)
    return time.monotonic() - t0


def holder(cp: ControlPlane) -> str:
    try:
        lease = cp.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/"
                                  "batchq-reconciler")
    except OSError:
        return ""
    return str(lease["spec"].get("holderIdentity") or "")


def writes(cp: ControlPlane, user: str, *, leases: bool = False) -> list[dict[str, Any]]:
    return [e for e in cp.audited_writes()
            if e["user"]["username"] == user
            and (e.get("objectRef") or {}).get("namespace") == NS
            and ((e["objectRef"].get("resource") == "leases") == leases)]


def stamp(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp()


def main() -> None:
    bin_dir = find_or_build_binaries(build=True)
    assert bin_dir is not None
    keep = sys.argv[1] if len(sys.argv) > 1 else None  # a directory: keep the logs there
    tmp = Path(tempfile.mkdtemp(dir=keep))
    try:
        result = measure(ControlPlane(bin_dir, tmp / "cp"), tmp)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if not result["alive_through_20_s_api_outage"] or result["old_leader_exit_code"] or (
            result["leader_exit_code"]):
        sys.exit(1)


def measure(cp: ControlPlane, tmp: Path) -> dict[str, Any]:
    with cp:
        cp.kubectl("apply", "-f", str(ROOT / "deploy/crds/batches.batchq.dev.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/batches.batchq.dev")
        cp.kubectl("create", "namespace", NS)
        repo = tmp / "repo"
        (repo / "batches").mkdir(parents=True)
        (repo / "profiles").mkdir()
        (repo / "profiles" / "k.yaml").write_text(yaml.safe_dump({
            "apiVersion": "batchq.dev/v1", "kind": "Profile",
            "spec": {"allowedUrlPrefixes": ["http://payloads.invalid/"]}}))
        commit_all(repo)
        a = replica(cp, repo, tmp, "batchq-replica-a", "a")
        until(lambda: holder(cp) == "a")
        b = replica(cp, repo, tmp, "batchq-replica-b", "b")
        time.sleep(5)  # both up, the leader idle
        before = len(writes(cp, "batchq-replica-a", leases=True))
        window = 60.0
        time.sleep(window)
        renewals = len(writes(cp, "batchq-replica-a", leases=True)) - before

        a.send_signal(signal.SIGTERM)
        signalled = time.time()
        add_batch(repo, "second")
        to_lease = until(lambda: holder(cp) == "b")
        until(lambda: bool(writes(cp, "batchq-replica-b")))
        first_b = min(stamp(e) for e in writes(cp, "batchq-replica-b")) - signalled
        a_exit = a.wait(30)

        cp.kill_apiserver()
        killed = time.time()
        add_batch(repo, "during-the-outage")
        time.sleep(20)
        alive_after_outage = b.poll() is None
        restarted = time.time()
        cp.start_apiserver_again()
        ready = time.time() - restarted

        def after_outage() -> list[float]:
            return [stamp(e) for e in writes(cp, "batchq-replica-b") if stamp(e) > killed]

        until(after_outage, 120)
        first_after = min(after_outage()) - restarted
        b.send_signal(signal.SIGTERM)
        b_exit = b.wait(30)
    return {
        "idle_leader_lease_writes_per_minute": round(renewals * 60 / window, 1),
        "sigterm_to_standby_holding_lease_s": round(to_lease, 2),
        "sigterm_to_standby_first_write_s": round(first_b, 2),
        "old_leader_exit_code": a_exit,
        "alive_through_20_s_api_outage": alive_after_outage,
        "api_restart_to_ready_s": round(ready, 2),
        "api_restart_to_first_write_s": round(first_after, 2),
        "leader_exit_code": b_exit,
    }


if __name__ == "__main__":
    main()
