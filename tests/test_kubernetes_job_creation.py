"""A pass's new Jobs are created several at a time (issue 9 §4), on a real API server.

`batchq reconcile` makes the Jobs of a 100-item batch with `--kube-concurrency 8`: per the
API server's audit log, creates were in flight together, each Job was created exactly
once, every item records its Job, and a second pass creates nothing. (A leader losing the
Lease in the middle of concurrent creates: tests/test_kubernetes_outages.py.)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import GitRepo, batch_doc, batchq, profile_doc
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
