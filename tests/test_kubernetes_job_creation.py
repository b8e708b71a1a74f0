"""A pass's new Jobs are created several at a time (issue 9 §4), on a real API server.

`batchq reconcile` makes the Jobs of a 100-item batch with `--kube-concurrency 8`: per the
API server's audit log, creates were in flight together, each Job was created exactly
once, every item records its Job, and a second pass creates nothing. When the API server
refuses some of the creates (a ResourceQuota on Jobs, a real 403), the Jobs that were made
are recorded all the same, and the rest come on a later pass, once each. (A leader losing
the Lease in the middle of concurrent creates: tests/test_kubernetes_outages.py.)
Counted at the client (its own REST layer, noting each Job POST as it goes out): creates
never exceed `--kube-concurrency` in flight, nor `--kube-burst` + `--kube-qps` a second,
and each Job the API server holds is its item's own (owner, labels, finalizer, env).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import rest

from tests.fixtures import GitRepo, batch_doc, batchq, profile_doc
from tests.harness import Harness
from tests.test_kubernetes_outages import created_jobs, jobs_of, queue_doc, writes
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes
USER = "batchq-replica-a"


def most_in_flight(events: list[dict[str, Any]]) -> int:
    """The most requests the API server was serving at one time, per its audit log."""
    edges = sorted([(e["requestReceivedTimestamp"], 1) for e in events]
                   + [(e["stageTimestamp"], -1) for e in events], key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def reconcile_once(cp: Any, ns: str, repo: GitRepo, state: Path) -> str:
    out = batchq("reconcile", "--backend", "kubernetes", "--namespace", ns, "--kubeconfig",
                 str(cp.user_kubeconfig(USER)), "--repo", str(repo.path), "--state", str(state),
                 "--once", "--kube-concurrency", "8", "--kube-qps", "0", timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stderr


def recorded_jobs(cp: Any, ns: str, batch: str, state: Path) -> dict[str, str]:
    """Item -> the Job name its record holds, per `batchq status --json`."""
    out = batchq("status", batch, "--json", "--backend", "kubernetes", "--namespace", ns,
                 "--kubeconfig", str(cp.kubeconfig), "--state", str(state), timeout=120)
    assert out.returncode == 0, out.stderr
    return {r["item"]: r["name"] for r in json.loads(out.stdout)["batches"][0]["jobs"]
            if r["name"]}


def set_job_quota(cp: Any, ns: str, count: int, used: int) -> None:
    """A ResourceQuota on Jobs, its status set by hand (no quota controller runs here):
    the API server's quota admission counts every create against it from then on."""
    path = f"/api/v1/namespaces/{ns}/resourcequotas"
    hard = {"count/jobs.batch": str(count)}
    try:
        quota = cp.request("GET", f"{path}/jobs")
    except OSError:
        quota = cp.request("POST", path, {"metadata": {"name": "jobs"}, "spec": {"hard": hard}})
    quota["spec"] = {"hard": hard}
    quota = cp.request("PUT", f"{path}/jobs", quota)
    quota["status"] = {"hard": hard, "used": {"count/jobs.batch": str(used)}}
    cp.request("PUT", f"{path}/jobs/status", quota)


def test_jobs_made_before_a_refused_create_are_recorded_and_the_rest_come_later(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, tmp_path: Path) -> None:
    ns, state = k8s_namespace, tmp_path / "state"
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"q{n:03d}" for n in range(60)]
    try:
        set_job_quota(k8s_cluster, ns, 25, 0)
        git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
        git_repo.write("queue.yaml", queue_doc(len(names)))
        git_repo.write("batches/quota.yaml", batch_doc([world.item(n) for n in names]))
        git_repo.commit("a batch of 60")
        reconcile_once(k8s_cluster, ns, git_repo, state)  # synced and admitted
        reconcile_once(k8s_cluster, ns, git_repo, state)  # its Jobs made
        made = {j["metadata"]["labels"]["batchq.dev/item"]: j["metadata"]["name"]
                for j in jobs_of(k8s_cluster, ns, "quota")}
        assert len(made) == 25  # the quota's worth; the 26th create was refused (403)
        assert recorded_jobs(k8s_cluster, ns, "quota", state) == made

        set_job_quota(k8s_cluster, ns, 1000, 25)
        reconcile_once(k8s_cluster, ns, git_repo, state)
        jobs = jobs_of(k8s_cluster, ns, "quota")
        per_item = Counter(j["metadata"]["labels"]["batchq.dev/item"] for j in jobs)
        assert per_item == dict.fromkeys(names, 1), per_item
        assert Counter(created_jobs(k8s_cluster, ns, USER)) == Counter(
            j["metadata"]["name"] for j in jobs)  # every Job created once
        assert recorded_jobs(k8s_cluster, ns, "quota", state) == {
            j["metadata"]["labels"]["batchq.dev/item"]: j["metadata"]["name"] for j in jobs}
    finally:
        world.close()


def test_a_hundred_jobs_created_eight_at_a_time_each_exactly_once(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, tmp_path: Path) -> None:
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"i{n:03d}" for n in range(100)]
    try:
        git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
        git_repo.write("queue.yaml", queue_doc(len(names)))
        git_repo.write("batches/many.yaml", batch_doc([world.item(n) for n in names]))
        git_repo.commit("a batch of 100")  # gated: the Jobs stay unfinished
        cmd = ("reconcile", "--backend", "kubernetes", "--namespace", ns, "--kubeconfig",
               str(k8s_cluster.user_kubeconfig(USER)), "--repo", str(git_repo.path),
               "--state", str(tmp_path / "state"), "--once", "--kube-concurrency", "8",
               "--kube-qps", "0")
        for _ in range(2):  # the second pass adopts what it sees and creates nothing
            out = batchq(*cmd, timeout=300)
            assert out.returncode == 0, out.stderr

        creates = [e for e in writes(k8s_cluster, ns, USER, resource="jobs")
                   if e["verb"] == "create"]
        assert len(creates) == len(names), Counter(
            (e.get("responseStatus") or {}).get("code") for e in creates)
        assert most_in_flight(creates) > 1  # the creates did overlap
        jobs = jobs_of(k8s_cluster, ns, "many")
        per_item = Counter(j["metadata"]["labels"]["batchq.dev/item"] for j in jobs)
        assert per_item == dict.fromkeys(names, 1), per_item
        assert Counter(created_jobs(k8s_cluster, ns, USER)) == Counter(
            j["metadata"]["name"] for j in jobs)  # every Job created once

        status = batchq("status", "many", "--json", "--backend", "kubernetes", "--namespace",
                        ns, "--kubeconfig", str(k8s_cluster.kubeconfig),
                        "--state", str(tmp_path / "state"), timeout=120)
        assert status.returncode == 0, status.stderr
        recorded = json.loads(status.stdout)["batches"][0]["jobs"]
        assert sorted((r["item"], r["name"]) for r in recorded) == sorted(
            (j["metadata"]["labels"]["batchq.dev/item"], j["metadata"]["name"]) for j in jobs)
        assert {r["state"] for r in recorded} <= {"Pending", "Processing"}
    finally:
        world.close()


class CountingRest(rest.RESTClientObject):  # type: ignore[misc]
    """The client's own REST layer, unchanged, that also notes each Job create as it goes
    out: when it started, and how many were in flight at once (seen from the client, where
    a limit on concurrency applies)."""

    def __init__(self, configuration: Any) -> None:
        super().__init__(configuration)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.started: list[float] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method != "POST" or not url.endswith("/jobs"):
            return super().request(method, url, *args, **kwargs)
        with self.lock:
            self.started.append(time.monotonic())
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            resp = super().request(method, url, *args, **kwargs)
            resp.read()  # the whole answer, as the store reads it
            return resp
        finally:
            with self.lock:
                self.in_flight -= 1


def counted_harness(cp: Any, ns: str, repo: GitRepo, state: Path,
                    **limits: Any) -> tuple[Harness, CountingRest]:
    h = Harness(repo, state, None, backend="kubernetes", namespace=ns,  # audited user
                kubeconfig=str(cp.user_kubeconfig(USER)), leader_election=False, **limits)
    counting = CountingRest(h.store.api.configuration)
    h.store.api.rest_client = counting
    return h, counting


def assert_one_right_job_per_item(cp: Any, ns: str, batch: str, names: list[str]) -> None:
    """Each item has exactly one Job, created once, with its own body: the Batch as its
    controller owner, its labels, the result finalizer, its item's URL in the env."""
    uid = cp.request("GET", f"/apis/batchq.dev/v1/namespaces/{ns}/batches/{batch}")[
        "metadata"]["uid"]
    jobs = jobs_of(cp, ns, batch)
    per_item = Counter(j["metadata"]["labels"]["batchq.dev/item"] for j in jobs)
    assert per_item == dict.fromkeys(names, 1), per_item
    assert Counter(created_jobs(cp, ns, USER)) == Counter(j["metadata"]["name"] for j in jobs)
    for job in jobs:
        meta = job["metadata"]
        item = meta["annotations"]["batchq.dev/item-id"]
        assert meta["labels"]["batchq.dev/batch"] == batch
        assert meta["labels"]["batchq.dev/attempt"] == "1"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "batchq"
        assert meta["ownerReferences"] == [{
            "apiVersion": "batchq.dev/v1", "kind": "Batch", "name": batch, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}]
        assert meta["finalizers"] == ["batchq.dev/result"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["BATCHQ_BATCH"] == batch
        assert env["BATCHQ_ITEM_ID"] == item
        assert env["BATCHQ_ITEM_URL"] == f"http://payloads.invalid/{item}"
        assert env["BATCHQ_ATTEMPT"] == "1"


def test_creates_never_exceed_the_concurrency_and_each_job_has_its_own_body(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, tmp_path: Path) -> None:
    """40 creates, 3 at a time at most (counted at the client), no rate limit."""
    ns = k8s_namespace
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"c{n:03d}" for n in range(40)]
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("queue.yaml", queue_doc(len(names)))
    git_repo.write("batches/three.yaml", batch_doc([world.item(n) for n in names]))
    git_repo.commit("a batch of 40")
    h, counting = counted_harness(k8s_cluster, ns, git_repo, tmp_path / "state",
                                  kube_concurrency=3, kube_qps=0)
    try:
        h.full_pass()  # synced and admitted
        h.full_pass()  # its Jobs made
        assert len(counting.started) == len(names)
        assert 1 < counting.most <= 3, counting.most
        assert_one_right_job_per_item(k8s_cluster, ns, "three", names)
        h.full_pass()  # nothing more to make
        assert len(counting.started) == len(names)
    finally:
        h.close()
        world.close()


def test_creates_keep_to_the_rate_limit(
        k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, tmp_path: Path) -> None:
    """--kube-qps 5 --kube-burst 3: from t0 (the creating pass starts; no write of the pass
    before is still waiting for a token) to any moment t, at most 3 + 5 * (t - t0) creates
    start, however fast the server answers. Without the limit, all 20 would start long
    before the 3.4 s that allows."""
    ns = k8s_namespace
    qps, burst = 5.0, 3
    world = KubeWorld(k8s_cluster.api_client(), ns)
    names = [f"r{n:03d}" for n in range(20)]
    git_repo.write("profiles/test.yaml", profile_doc(world.prefix))
    git_repo.write("queue.yaml", queue_doc(len(names)))
    git_repo.write("batches/paced.yaml", batch_doc([world.item(n) for n in names]))
    git_repo.commit("a batch of 20")
    h, counting = counted_harness(k8s_cluster, ns, git_repo, tmp_path / "state",
                                  kube_concurrency=8, kube_qps=qps, kube_burst=burst)
    try:
        h.full_pass()  # synced and admitted
        t0 = time.monotonic()
        h.full_pass()  # its Jobs made
        assert len(counting.started) == len(names)
        for k, started in enumerate(sorted(counting.started), start=1):
            allowed = burst + qps * (started - t0)
            assert k <= allowed + 1e-6, (k, round(started - t0, 3))
        assert_one_right_job_per_item(k8s_cluster, ns, "paced", names)
    finally:
        h.close()
        world.close()
