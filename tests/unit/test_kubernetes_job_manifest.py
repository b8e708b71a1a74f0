"""The batch/v1 Job body and the reading back of a Job's state, as pure functions
(`reconciler/store/kubernetes/jobs.py`): no API server, so every field DESIGN §8 asks of a
Job is checked here, row by row, and the cluster tests only check that the API server and
the Job controller accept and act on it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.control.jobs import build_job, job_name
from reconciler.domain.model import Item, Profile
from reconciler.domain.states import JobState
from reconciler.store.base import JobSpec, deadline_message
from reconciler.store.kubernetes.jobs import job_from_k8s, job_manifest
from reconciler.store.kubernetes.names import credentials_secret, label_value

OWNER = [{"apiVersion": "batchq.dev/v1", "kind": "Batch", "name": "b", "uid": "u-1",
          "controller": True, "blockOwnerDeletion": True}]
CREATED = datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp()
LONG_ITEM = "ark:/13030/" + "m5" * 40  # not a label value, and too long for a plain name


def spec(batch: str = "b", item: str = "x", attempt: int = 1, **kw: Any) -> JobSpec:
    return JobSpec(name=job_name(batch, item, attempt), batch=batch, item=item,
                   attempt=attempt, command=("python", "-m", "reconciler.worker"),
                   env={"BATCHQ_URL": "http://127.0.0.1/x", "A_FIRST": "1"}, **kw)


def container(body: dict[str, Any]) -> dict[str, Any]:
    (only,) = body["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_a_plain_job_is_owned_labelled_and_never_restarted_in_place() -> None:
    body = job_manifest(spec(), OWNER)
    assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
    meta = body["metadata"]
    assert meta["name"] == "b-x-1"
    assert meta["ownerReferences"] == OWNER
    labels = {"batchq.dev/batch": "b", "batchq.dev/item": "x", "batchq.dev/attempt": "1",
              "app.kubernetes.io/managed-by": "batchq"}
    assert meta["labels"] == labels
    assert meta["annotations"] == {"batchq.dev/item-id": "x",
                                   "kube-score/ignore": "container-image-pull-policy"}
    assert meta["finalizers"] == ["batchq.dev/result"]  # kept until its result is recorded
    job = body["spec"]
    assert job["suspend"] is False and job["backoffLimit"] == 0
    assert "activeDeadlineSeconds" not in job
    assert job["template"]["metadata"]["labels"] == labels
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    c = container(body)
    assert c["name"] == "worker" and c["image"] == "batchq:0.1.0"
    assert c["command"] == ["python", "-m", "reconciler.worker"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # hardened (kube-score clean): non-root above 10000, read-only root, no token
    pod = job["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 10000 < pod["securityContext"]["runAsGroup"]
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "4Gi"}}


def test_evictions_do_not_spend_retries_and_a_worker_failure_fails_the_job() -> None:
    rules = job_manifest(spec(), OWNER)["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "NotIn",
                                              "values": [0]}},
    ]
    # the rule names the container the Job really has
    assert rules[1]["onExitCodes"]["containerName"] == container(job_manifest(spec(), []))["name"]


def test_env_is_sorted_and_ends_with_the_termination_log_and_credentials_file() -> None:
    env = container(job_manifest(spec(), OWNER))["env"]
    assert env == [
        {"name": "A_FIRST", "value": "1"},
        {"name": "BATCHQ_URL", "value": "http://127.0.0.1/x"},
        {"name": "BATCHQ_TERMINATION_LOG", "value": "/dev/termination-log"},
        {"name": "BATCHQ_CREDENTIALS_FILE", "value": "/var/run/secrets/batchq/userinfo"},
        {"name": "TMPDIR", "value": "/tmp"},  # an emptyDir: the root filesystem is read-only
    ]


@pytest.mark.parametrize(("kw", "field", "expected"), [
    ({"suspended": True}, "suspend", True),
    ({"suspended": False}, "suspend", False),
    ({"backoff_limit": 3}, "backoffLimit", 3),
    ({"deadline_seconds": 600}, "activeDeadlineSeconds", 600),
    ({"ttl_seconds_after_finished": 86400}, "ttlSecondsAfterFinished", 86400),
    ({"ttl_seconds_after_finished": 0}, "ttlSecondsAfterFinished", 0),
])
def test_job_spec_fields_follow_the_job_spec(kw: dict[str, Any], field: str,
                                             expected: object) -> None:
    assert job_manifest(spec(**kw), OWNER)["spec"][field] == expected


def test_no_deadline_means_no_active_deadline_seconds() -> None:
    for seconds in (None, 0):
        assert "activeDeadlineSeconds" not in job_manifest(
            spec(deadline_seconds=seconds), OWNER)["spec"]


def test_the_profiles_ttl_reaches_the_job_and_defaults_to_a_day() -> None:
    item = Item(id="x", url="http://127.0.0.1/x")
    for job, expected in (({}, 86400), ({"ttlSecondsAfterFinished": 60}, 60)):
        built = build_job("b", item, 1, Profile.from_dict("p", {"job": job}), suspended=False,
                          git_dir=None, commit="c", file_roots=(), storage_root="/s")
        assert job_manifest(built, OWNER)["spec"]["ttlSecondsAfterFinished"] == expected


def test_profile_image_resources_and_item_annotations_reach_the_pod() -> None:
    resources = {"limits": {"memory": "256Mi"}, "requests": {"cpu": "2"}}
    body = job_manifest(spec(image="reg.example/ingest:2", resources=resources,
                             annotations={"batchq.dev/title": "Map"}), OWNER)
    c = container(body)
    # what the profile gave stands; its other side follows it (a request never exceeds its
    # limit); a resource it left out gets both defaults
    assert c["image"] == "reg.example/ingest:2" and c["resources"] == {
        "limits": {"memory": "256Mi", "cpu": "2", "ephemeral-storage": "4Gi"},
        "requests": {"cpu": "2", "memory": "256Mi", "ephemeral-storage": "256Mi"}}
    assert resources == {"limits": {"memory": "256Mi"}, "requests": {"cpu": "2"}}  # not changed
    assert body["spec"]["template"]["metadata"]["annotations"] == {
        "batchq.dev/item-id": "x", "batchq.dev/title": "Map"}
    assert body["metadata"]["annotations"]["batchq.dev/item-id"] == "x"


def test_a_long_or_odd_item_gets_a_hashed_name_and_label_but_keeps_its_id() -> None:
    body = job_manifest(spec(batch="maps-2026-11", item=LONG_ITEM, attempt=2), OWNER)
    meta = body["metadata"]
    assert meta["name"] == job_name("maps-2026-11", LONG_ITEM, 2)
    assert len(meta["name"]) <= 63 and "--" in meta["name"]
    assert meta["labels"]["batchq.dev/item"] == (
        "h-" + hashlib.sha256(LONG_ITEM.encode()).hexdigest()[:40])
    assert meta["labels"]["batchq.dev/attempt"] == "2"
    assert meta["annotations"]["batchq.dev/item-id"] == LONG_ITEM


@pytest.mark.parametrize(("value", "plain"), [
    ("map-001", True), ("a" * 63, True), ("a" * 64, False), ("-x", False), ("x.", False),
    ("", False), (LONG_ITEM, False),
])
def test_label_values_are_kept_only_when_kubernetes_accepts_them(value: str,
                                                                 plain: bool) -> None:
    out = label_value(value)
    assert (out == value) is plain
    assert len(out) <= 63 and out[:1].isalnum() and out[-1:].isalnum()


def test_a_pod_mounts_only_its_own_items_key_of_its_batchs_secret_read_only() -> None:
    for item in ("x", "y", LONG_ITEM):
        body = job_manifest(spec(item=item), OWNER)
        volume, *scratch = body["spec"]["template"]["spec"]["volumes"]
        assert volume == {"name": "credentials", "secret": {
            "secretName": credentials_secret("b", item), "optional": True,
            "defaultMode": 0o444, "items": [{"key": item, "path": "userinfo"}]}}
        assert all(set(v) == {"name", "emptyDir"} for v in scratch)  # the writable places
        assert container(body)["volumeMounts"][0] == {
            "name": "credentials", "mountPath": "/var/run/secrets/batchq", "readOnly": True}
    # one of at most 256 Secrets per batch, the same for the Job and for set_credentials
    names = {credentials_secret("b", f"item-{n}") for n in range(2000)}
    assert len(names) == 256 and all(n.startswith("b-credentials-") for n in names)


def k8s_job(status: dict[str, Any], **spec_fields: Any) -> dict[str, Any]:
    body = job_manifest(spec(batch="b", item=LONG_ITEM, attempt=3), OWNER)
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    body["spec"].update(spec_fields)
    body["status"] = status
    return body


def true(kind: str, at: str = "2026-11-28T10:05:00Z", **kw: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "lastTransitionTime": at, **kw}


def no_pods(name: str, cond: dict[str, Any]) -> str:
    raise AssertionError(f"the pods of {name} were asked, for {cond}")


def test_reading_a_job_back_gives_its_identity_from_labels_and_annotations() -> None:
    job = job_from_k8s(k8s_job({}), no_pods)
    assert (job.name, job.batch, job.item, job.attempt) == (
        job_name("b", LONG_ITEM, 3), "b", LONG_ITEM, 3)
    assert job.state == JobState.PENDING and not job.suspended
    assert job.created_at == CREATED and job.started_at is None


@pytest.mark.parametrize(("status", "state"), [
    ({}, JobState.PENDING),
    ({"active": 1}, JobState.PROCESSING),
    ({"startTime": "2026-11-28T10:01:00Z"}, JobState.PROCESSING),
    ({"failed": 1}, JobState.PROCESSING),  # a pod failed and is being replaced
    ({"conditions": [true("Complete")], "completionTime": "2026-11-28T10:05:00Z"},
     JobState.COMPLETED),
    ({"conditions": [{"type": "Complete", "status": "False"}], "active": 1},
     JobState.PROCESSING),
])
def test_job_states(status: dict[str, Any], state: JobState) -> None:
    job = job_from_k8s(k8s_job(status), no_pods)
    assert job.state == state
    assert (job.finished_at is not None) is (state == JobState.COMPLETED)


def test_a_failed_job_takes_its_message_from_the_pods_once() -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    def from_pods(name: str, cond: dict[str, Any]) -> str:
        asked.append((name, cond))
        return "digest mismatch"

    cond = true("Failed", reason="BackoffLimitExceeded")
    job = job_from_k8s(k8s_job({"conditions": [cond], "failed": 1}), from_pods)
    assert job.state == JobState.FAILED and job.message == "digest mismatch"
    assert job.finished_at == CREATED + 300
    assert asked == [(job.name, cond)]


def test_a_job_past_its_deadline_says_so_without_asking_the_pods() -> None:
    body = k8s_job({"conditions": [true("Failed", reason="DeadlineExceeded")]},
                   activeDeadlineSeconds=600)
    job = job_from_k8s(body, no_pods)
    assert job.state == JobState.FAILED and job.message == deadline_message(600)


def test_a_held_job_reads_back_suspended() -> None:
    body = job_manifest(spec(suspended=True), OWNER)
    assert job_from_k8s(body, no_pods).suspended
