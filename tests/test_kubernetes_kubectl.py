"""The Batch object speaks kubectl (issue 9 §1): Events, Flux-style conditions, printer
columns, RFC 3339 times, `kubectl wait`, `kubectl explain`, against the real API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.kubernetes.events import EventRecorder
from reconciler.store.kubernetes.store import KubernetesStore
from tests.fixtures import ADMIN, GitRepo, SmtpServer, batch_doc, profile_doc, wait_for
from tests.harness import Harness
from tests.test_seed_stories import BATCH, submit_three
from tests.world import KubeWorld

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def h(k8s_cluster: Any, k8s_namespace: str, git_repo: GitRepo, smtp: SmtpServer,
      tmp_path: Path) -> Iterator[Harness]:
    api = k8s_cluster.api_client()
    h = Harness(git_repo, tmp_path / "state", smtp.hostport, backend="kubernetes",
                namespace=k8s_namespace, kubeconfig=str(k8s_cluster.kubeconfig),
                leader_election=False)
    h.world, h.cluster = KubeWorld(api, k8s_namespace), k8s_cluster
    try:
        yield h
    finally:
        h.close()
        h.world.close()
        api.close()


def connections_opened(api: Any) -> int:
    """How many connections the client's pool has opened so far, to any server."""
    pools = api.rest_client.pool_manager.pools
    # urllib3's pool container refuses iteration itself; its keys() is the way
    return sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118


def cr(h: Harness, name: str) -> dict[str, Any]:
    return dict(h.cluster.request("GET", f"/apis/batchq.dev/v1/namespaces/{h.settings.namespace}"
                                         f"/batches/{name}"))


def condition(h: Harness, name: str, type_: str) -> dict[str, Any]:
    return next(c for c in cr(h, name)["status"]["conditions"] if c["type"] == type_)


def events(h: Harness, name: str) -> list[dict[str, Any]]:
    """The events.k8s.io/v1 Events regarding the Batch, oldest first."""
    found = h.cluster.request("GET", f"/apis/events.k8s.io/v1/namespaces/"
                                     f"{h.settings.namespace}/events")["items"]
    mine = [e for e in found if e["regarding"]["kind"] == "Batch"
            and e["regarding"]["name"] == name]
    return sorted(mine, key=lambda e: e["eventTime"])


def reasons(h: Harness, name: str) -> list[str]:
    return [e["reason"] for e in events(h, name)]


def kubectl(h: Harness, *args: str, check: bool = True) -> Any:
    return h.cluster.kubectl("-n", h.settings.namespace, *args, check=check)


def test_a_failed_batch_and_its_retry_tell_their_story(h: Harness, smtp: SmtpServer) -> None:
    """Seed story 3 (failed batch, successful retry), with what kubectl shows at each step."""
    submit_three(h, fail_third=True)
    # User submits manifest with 3 items -> Batch: Pending (applied; no pass has run yet)
    h.sync()
    assert "status" not in cr(h, "maps") and reasons(h, "maps") == ["SpecApplied"]
    # Batch Queue starts Batch -> Processing: Admitted
    h.reconcile()
    shown(h, ready=("False", "Processing"), reconciling="True",
          events=["SpecApplied", "Admitted"])
    # jobs run; job2 completes, job3 fails: JobFailed (a Warning) while still Processing
    h.until(lambda: set(h.jobs("maps").values()) == {"Processing"}, "every job to start")
    h.world.release("job2", "job3")
    h.until(lambda: h.jobs("maps")["job3"] == "Failed", "job3 to fail")
    shown(h, ready=("False", "Processing"), reconciling="True",
          events=["SpecApplied", "Admitted", "JobFailed"])
    # job1 completes -> Reporting -> the report -> Failed
    h.world.release("job1")
    h.until(lambda: h.state("maps") == "Failed", "the first report")
    assert h.rec.deliver() == 1 and len(smtp.mailbox.messages) == 1
    # Failed: Ready False (it was True with reason Failed before), the story in Events
    ready = condition(h, "maps", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Failed")
    assert ready["message"].startswith("2 of 3 jobs completed, 1 failed (first: job3: digest"
                                       " mismatch"), ready["message"]
    status = cr(h, "maps")["status"]
    assert ready["observedGeneration"] == status["observedGeneration"] == 1
    assert condition(h, "maps", "Reconciling")["status"] == "False"
    for key in ("startedAt", "finishedAt"):  # RFC 3339, not a float
        assert isinstance(status[key], str) and status[key].endswith("Z"), status
        assert abs(time.time() - _seconds(status[key])) < 600
    wait_for(lambda: "ReportSent" in reasons(h, "maps"), 20, what="the ReportSent event")
    story = reasons(h, "maps")
    assert story[0] == "SpecApplied"
    assert story.index("Admitted") < story.index("JobFailed") < story.index("Failed")
    by_reason = {e["reason"]: e for e in events(h, "maps")}
    failed = by_reason["JobFailed"]
    assert failed["type"] == "Warning" and failed["note"].startswith("job failed: job3"
                                                                     " (attempt 1): digest")
    assert failed["reportingController"] == "batchq.dev/reconciler"
    assert failed["regarding"]["uid"] == cr(h, "maps")["metadata"]["uid"]
    assert "jane@example.org" in by_reason["ReportSent"]["note"]
    # what a person runs
    described = kubectl(h, "describe", "batch", "maps").stdout
    assert "JobFailed" in described and "Admitted" in described, described
    told = kubectl(h, "events", "--for", "batch/maps").stdout
    assert "ReportSent" in told and "Failed" in told, told
    table = kubectl(h, "get", "batches").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "READY", "JOBS", "COMPLETED", "FAILED",
                                "REVISION", "AGE", "MESSAGE"]
    row = table[1].split()
    revision = cr(h, "maps")["metadata"]["annotations"]["batchq.dev/source-revision"]
    assert row[:7] == ["maps", "Failed", "False", "3", "2", "1", revision]
    assert " ".join(row[8:]).startswith("2 of 3 jobs completed, 1 failed")
    wide = kubectl(h, "get", "batches", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["PROFILE", "DEPOSITOR"]
    assert wide[1].split()[-2:] == ["test", "jane@example.org"]
    # a failed batch is not Ready: kubectl wait gives up at its timeout
    waited = kubectl(h, "wait", "--for=condition=Ready", "--timeout=2s", "batch/maps",
                     check=False)
    assert waited.returncode != 0 and "timed out" in waited.stderr, waited

    # the payload arrives, the admin restarts job3: Restarted, and the batch stays Failed
    h.world.set_outcome("job3", fail=False)
    h.repo.edit_batch(BATCH, restarts={"job3": 1})
    h.sync()
    h.reconcile()
    assert "Restarted" in reasons(h, "maps")
    assert by_note(h, "Restarted") == "job3: attempt 2"
    h.world.release("job3")
    h.until(lambda: h.jobs("maps")["job3"] == "Completed", "the restarted job3")
    assert h.state("maps") == "Failed"
    assert condition(h, "maps", "Ready")["status"] == "False"
    # UpdateReporting: Completed, and now kubectl wait returns at once
    h.repo.edit_batch(BATCH, state="UpdateReporting")
    h.sync()
    h.until(lambda: h.state("maps") == "Completed", "the update report")
    ready = condition(h, "maps", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    assert ready["observedGeneration"] == 3
    done = kubectl(h, "wait", "--for=condition=Ready", "--timeout=30s", "batch/maps")
    assert "condition met" in done.stdout
    story = reasons(h, "maps")
    assert story.index("Restarted") < story.index("UpdateReporting") < story.index("Completed")
    # every answer was read to its end, so the whole story went over a few kept-alive
    # connections: the three watches, the three Jobs created at once, and the loop's and
    # the mailer's own requests (6 here; 15 when Events' answers were left unread)
    assert isinstance(h.store, KubernetesStore)
    assert connections_opened(h.store.api) <= 3 + 3 + 2


def shown(h: Harness, *, ready: tuple[str, str], reconciling: str, events: list[str]) -> None:
    """What kubectl shows of the batch after a step: Ready, Reconciling, the Events so far
    (each condition at the status's observedGeneration)."""
    status = cr(h, "maps")["status"]
    got = condition(h, "maps", "Ready")
    assert (got["status"], got["reason"]) == ready, got
    assert condition(h, "maps", "Reconciling")["status"] == reconciling
    assert all(c["observedGeneration"] == status["observedGeneration"]
               for c in status["conditions"])
    assert reasons(h, "maps") == events


def by_note(h: Harness, reason: str) -> str:
    return str(next(e for e in events(h, "maps") if e["reason"] == reason)["note"])


def test_held_and_released_are_events(h: Harness) -> None:
    items = [h.world.item("held1", gated=False)]
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    doc = batch_doc(items)
    doc["spec"]["state"] = "Held"
    h.repo.write("batches/hold.yaml", doc)
    h.repo.commit("submit held")
    h.sync()
    h.reconcile()
    assert h.state("hold") == "Held"
    ready = condition(h, "hold", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Held")
    h.repo.edit_batch("batches/hold.yaml", who=ADMIN, state="Active")
    h.sync()
    h.until(lambda: h.state("hold") == "Completed", "the released batch")
    story = reasons(h, "hold")
    assert story.index("Held") < story.index("Released") < story.index("Admitted")
    assert story[-1] == "Completed"


def test_the_same_event_again_is_counted_not_repeated(h: Harness) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    h.repo.write("batches/d.yaml", batch_doc([h.world.item("d1", gated=False)]))
    h.repo.commit("submit")
    h.sync()
    obj = cr(h, "d")
    for restart in (False, False, True):
        if restart:
            h.restart()  # a new process counts on from what the API server holds
        assert isinstance(h.store, KubernetesStore)
        h.store.recorder.record(obj, "DeletionRefused", "refused to delete 11 batches")
    [refused] = [e for e in events(h, "d") if e["reason"] == "DeletionRefused"]
    assert refused["series"]["count"] == 3 and refused["type"] == "Warning"


def test_explain_shows_the_schema_descriptions(h: Harness) -> None:
    out = h.cluster.kubectl("explain", "batches.spec").stdout
    assert "The desired state of the batch" in out, out
    assert "profile" in out
    field = h.cluster.kubectl("explain", "batches.status.startedAt").stdout
    assert "RFC 3339" in field and "string" in field, field


def _seconds(text: str) -> float:
    from reconciler.support.timefmt import parse_rfc3339

    return parse_rfc3339(text)


def test_a_file_that_never_parsed_is_a_batch_kubectl_lists(h: Harness) -> None:
    h.repo.write("profiles/test.yaml", profile_doc(h.world.prefix))
    h.repo.write("batches/fine.yaml", batch_doc([h.world.item("f1", gated=False)]))
    (h.repo.path / "batches" / "broken.yaml").write_text(
        "apiVersion: batchq.dev/v1\nkind: Batch\nspec:\n  profile: [test\n")
    h.repo.commit("submit one good and one broken batch")
    h.sync()
    h.until(lambda: h.state("fine") == "Completed", "the good batch, untouched by the other")
    broken = cr(h, "broken")
    assert "spec" not in broken  # nothing of it was ever valid
    invalid = condition(h, "broken", "Invalid")
    assert invalid["status"] == "True" and invalid["message"].startswith(
        "batches/broken.yaml:5:1: invalid YAML"), invalid
    ready = condition(h, "broken", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Invalid")
    assert ready["message"] == invalid["message"].splitlines()[0]
    rows = {r.split()[0]: r.split() for r in kubectl(h, "get", "batches").stdout.splitlines()}
    assert rows["broken"][2] == "False" and "batches/broken.yaml:5:1:" in " ".join(rows["broken"])
    [told] = [e for e in events(h, "broken") if e["reason"] == "Invalid"]
    assert told["type"] == "Warning"
    assert told["note"].startswith("batches/broken.yaml:5:1: invalid YAML")
    # fixed: the same object takes the spec, and the batch runs
    uid = broken["metadata"]["uid"]
    h.repo.write("batches/broken.yaml", batch_doc([h.world.item("b1", gated=False)]))
    h.repo.commit("fix the broken batch")
    h.sync()
    h.until(lambda: h.state("broken") == "Completed", "the fixed batch")
    fixed = cr(h, "broken")
    assert fixed["metadata"]["uid"] == uid and fixed["spec"]["profile"] == "test"
    assert condition(h, "broken", "Invalid")["status"] == "False"
    assert condition(h, "broken", "Ready")["status"] == "True"


def test_events_are_written_over_one_kept_alive_connection(k8s_cluster: Any,
                                                           k8s_namespace: str) -> None:
    """Each Event's answer is read to its end, so the connection goes back to the pool:
    left unread, every Event opened a new TLS connection and left the old socket for the
    garbage collector to close (a ResourceWarning in whatever test it ran in, if the
    socket was in a reference cycle)."""
    batch = {"metadata": {"name": "b", "namespace": k8s_namespace,
                          "uid": "6f1c1a52-0000-4000-8000-000000000001"}}
    with k8s_cluster.api_client() as api:
        recorder = EventRecorder(api, k8s_namespace)
        for n in range(4):
            for _ in range(2):  # made, then counted in its series
                recorder.record(batch, "DeletionRefused", f"refused to delete {n + 11} batches")
        opened = connections_opened(api)
    found = k8s_cluster.request(
        "GET", f"/apis/events.k8s.io/v1/namespaces/{k8s_namespace}/events")["items"]
    assert sorted((e["note"], e["series"]["count"]) for e in found) == [
        (f"refused to delete {n} batches", 2) for n in range(11, 15)]
    assert opened == 1
