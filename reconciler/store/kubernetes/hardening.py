"""What a worker pod is allowed, as a cluster admin (and kube-score) expects it by default.

- It runs as a non-root user and group above 10000 (the image's `batchq` user, 10001),
  with no privilege escalation, every capability dropped, the runtime's seccomp profile and
  a read-only root filesystem; it writes only to two emptyDirs: `/tmp` (TMPDIR) and its
  storage directory (until storage is a volume of its own, issue 10: what it stores there
  lives as long as the pod, as it did in the container's own filesystem before).
- It gets no ServiceAccount token: the worker never talks to the API server.
- Its image is pulled if not present (tags are pinned): KUBE_SCORE_IGNORE says why.
- Every resource has a request and a limit: what the profile says, the one it gave for the
  other side when it gave only one (so a request never exceeds its limit), else DEFAULTS.
"""

from __future__ import annotations

import copy
from typing import Any

USER = 10001  # the image's batchq user (deploy/Dockerfile), and its group
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": USER, "runAsGroup": USER, "fsGroup": USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
    "runAsNonRoot": True, "runAsUser": USER, "runAsGroup": USER,
    "capabilities": {"drop": ["ALL"]},
}
DEFAULTS: dict[str, tuple[str, str]] = {  # resource -> (request, limit) when none is given
    "cpu": ("100m", "1"),
    "memory": ("256Mi", "1Gi"),
    "ephemeral-storage": ("256Mi", "4Gi"),
}
TMP = "/tmp"
PULL_POLICY = "IfNotPresent"
# kube-score's own annotation, on each Job: deliberate exceptions, each with its reason
KUBE_SCORE_IGNORE = {
    # the tag is pinned (DEFAULT_IMAGE or a profile's), so IfNotPresent is what it needs;
    # Always would cost a registry round-trip for each of a batch's thousands of pods
    "kube-score/ignore": "container-image-pull-policy",
}


def resources_with_defaults(resources: dict[str, Any]) -> dict[str, Any]:
    """The profile's resources with a request and a limit for cpu, memory and
    ephemeral-storage (see the module docstring)."""
    out = copy.deepcopy(resources)
    requests, limits = out.setdefault("requests", {}), out.setdefault("limits", {})
    for name, (request, limit) in DEFAULTS.items():
        if name not in requests and name not in limits:
            requests[name], limits[name] = request, limit
        elif name not in limits:
            limits[name] = requests[name]
        elif name not in requests:
            requests[name] = limits[name]  # what the API server itself would default to
    return out


def scratch(storage: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the writable places of a pod whose root filesystem is read-only."""
    places = [("tmp", TMP)] + ([("storage", storage)] if storage else [])
    volumes = [{"name": name, "emptyDir": {}} for name, _ in places]
    mounts = [{"name": name, "mountPath": path} for name, path in places]
    return volumes, mounts
