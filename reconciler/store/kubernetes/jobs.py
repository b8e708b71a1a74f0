"""The batch/v1 Job of one item attempt, built and read back by pure functions.

`job_manifest` is the body the backend creates (DESIGN §8): one immutable Job per attempt,
owned by its Batch, labelled batch/item/attempt, suspended while the batch is held, with a
podFailurePolicy that does not spend an item's retries on evictions and node loss, and the
item's credentials Secret key mounted read-only, hardened as hardening.py says, and
deleted by the TTL-after-finished controller `ttlSecondsAfterFinished` after it finished
(the profile's; the item records, not the Job, are what the batch shows). Its finalizer
`batchq.dev/result` keeps a finished Job that is deleted (by its TTL, by hand, with its
Batch) until its result is recorded, so a result is never lost and a finished attempt
never run again, however long the reconciler was away. `job_from_k8s` turns a Job as the
API server returns it into the domain `Job`. Neither talks to the API server, so both are
unit-tested without one (tests/unit/test_kubernetes_job_manifest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.domain.model import Job
from reconciler.domain.states import JobState
from reconciler.store.base import DEADLINE_EXCEEDED, JobSpec, deadline_message
from reconciler.store.kubernetes.hardening import (
    CONTAINER_SECURITY,
    KUBE_SCORE_IGNORE,
    POD_SECURITY,
    PULL_POLICY,
    TMP,
    resources_with_defaults,
    scratch,
)
from reconciler.store.kubernetes.names import CREDENTIALS_DIR, A, credentials_secret, label_value
from reconciler.support.timefmt import parse_rfc3339_or_none

RESULT_FINALIZER = f"{A}result"  # held until the Job's result is in the item records
FailureMessage = Callable[[str, dict[str, Any]], str]
"""(job name, its True `Failed` condition) -> the worker's one-line reason."""

# deploy/ names the claim batchq-storage; without one (test clusters, whose fake nodes run
# no pods) a Job mounts no volume
DEFAULT_STORAGE_CLAIM, DEFAULT_S3_SECRET = "", "batchq-s3"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STAGING_DIR = "/var/tmp/batchq"


@dataclass(frozen=True)
class StorageRefs:
    """The operator's storage objects a Job refers to by name (deploy/storage.yaml)."""

    claim: str = DEFAULT_STORAGE_CLAIM  # PersistentVolumeClaim: filesystem storage
    s3_secret: str = DEFAULT_S3_SECRET  # Secret with AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY


def storage_parts(spec: JobSpec, refs: StorageRefs) -> tuple[list[dict[str, Any]],
                                                            list[dict[str, Any]],
                                                            list[dict[str, Any]]]:
    """(env, volumeMounts, volumes) for the Job's storage: the PersistentVolumeClaim
    mounted at the storage root, so payloads outlive the pod; or, for S3, the credentials
    by reference to the operator's Secret (never as values in the Job) and a scratch
    volume to stage files in."""
    if spec.env.get("BATCHQ_STORAGE_URL"):
        env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": refs.s3_secret,
                                                              "key": key}}}
               for key in S3_CREDENTIAL_KEYS]
        env.append({"name": "BATCHQ_STAGING", "value": STAGING_DIR})
        return (env, [{"name": "staging", "mountPath": STAGING_DIR}],
                [{"name": "staging", "emptyDir": {}}])
    if spec.storage_mount and refs.claim:
        return ([], [{"name": "storage", "mountPath": spec.storage_mount}],
                [{"name": "storage", "persistentVolumeClaim": {"claimName": refs.claim}}])
    return [], [], []


def job_manifest(spec: JobSpec, owner: list[dict[str, Any]],
                 refs: StorageRefs | None = None) -> dict[str, Any]:
    """The Job to create for `spec`; `owner` is the Batch's ownerReferences (may be empty)."""
    storage_env, storage_mounts, storage_volumes = storage_parts(spec, refs or StorageRefs())
    labels = {f"{A}batch": spec.batch, f"{A}item": label_value(spec.item),
              f"{A}attempt": str(spec.attempt), "app.kubernetes.io/managed-by": "batchq"}
    # the storage root is the claim when there is one; else an emptyDir (S3: none)
    volumes, mounts = scratch(None if storage_mounts else spec.env.get("BATCHQ_STORAGE"))
    container: dict[str, Any] = {
        "name": "worker", "image": spec.image, "imagePullPolicy": PULL_POLICY,
        "command": list(spec.command),
        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        + [{"name": "BATCHQ_TERMINATION_LOG", "value": "/dev/termination-log"},
           {"name": "BATCHQ_CREDENTIALS_FILE", "value": f"{CREDENTIALS_DIR}/userinfo"},
           {"name": "TMPDIR", "value": TMP}]
        + storage_env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "credentials", "mountPath": CREDENTIALS_DIR,
                          "readOnly": True}, *mounts, *storage_mounts],
        "resources": resources_with_defaults(spec.resources),
        "securityContext": CONTAINER_SECURITY,
    }
    # only this item's key; readable by the container's user whatever its uid (the
    # image's, or a profile's image without fsGroup): the pod has this one container
    credentials = {"name": "credentials", "secret": {
        "secretName": credentials_secret(spec.batch, spec.item), "optional": True,
        "defaultMode": 0o444, "items": [{"key": spec.item, "path": "userinfo"}]}}
    job_spec: dict[str, Any] = {
        "suspend": spec.suspended,
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "worker",
                                                  "operator": "NotIn", "values": [0]}},
        ]},
        "template": {
            "metadata": {"labels": labels, "annotations": {
                f"{A}item-id": spec.item, **spec.annotations}},
            "spec": {"restartPolicy": "Never", "containers": [container],
                     "volumes": [credentials, *volumes, *storage_volumes],
                     "securityContext": POD_SECURITY, "automountServiceAccountToken": False},
        },
    }
    if spec.deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.deadline_seconds
    if spec.ttl_seconds_after_finished is not None:  # the item records keep its result
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": spec.name, "labels": labels,
                         "annotations": {f"{A}item-id": spec.item, **KUBE_SCORE_IGNORE},
                         "ownerReferences": owner, "finalizers": [RESULT_FINALIZER]},
            "spec": job_spec}


# the batch/v1 Job condition types (the Job controller's words, not batchq's states)
JOB_COMPLETE, JOB_FAILED = "Complete", "Failed"


def job_from_k8s(obj: dict[str, Any], failure_message: FailureMessage) -> Job:
    """A Job's state as the Job controller reports it; `failure_message` is asked only for a
    Job that failed for a reason other than its deadline."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    conds = {c["type"]: c for c in st.get("conditions") or [] if c.get("status") == "True"}
    state = JobState.PENDING
    message = ""
    finished = None
    if JOB_COMPLETE in conds:
        state, finished = JobState.COMPLETED, parse_rfc3339_or_none(st.get("completionTime"))
    elif JOB_FAILED in conds:
        state = JobState.FAILED
        failed = conds[JOB_FAILED]
        finished = parse_rfc3339_or_none(failed.get("lastTransitionTime"))
        if failed.get("reason") == DEADLINE_EXCEEDED and spec.get(
                "activeDeadlineSeconds"):  # the pods were stopped: their words are not why
            message = deadline_message(int(spec["activeDeadlineSeconds"]))
        else:
            message = failure_message(meta["name"], failed)
    elif st.get("startTime") or st.get("active") or st.get("succeeded") or st.get("failed"):
        state = JobState.PROCESSING  # started; stays so while a pod is being replaced
    return Job(name=meta["name"], batch=labels.get(f"{A}batch", ""),
               item=(meta.get("annotations") or {}).get(f"{A}item-id", ""),
               attempt=int(labels.get(f"{A}attempt", "1")), state=state, message=message,
               suspended=bool(spec.get("suspend")),
               created_at=parse_rfc3339_or_none(meta.get("creationTimestamp")),
               started_at=parse_rfc3339_or_none(st.get("startTime")), finished_at=finished)
