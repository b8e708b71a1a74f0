"""Leader election on a coordination.k8s.io Lease, so only one reconciler acts (DESIGN §8).

The holder renews the Lease every `renew` seconds; another candidate takes it over once
`renewTime + leaseDurationSeconds` has passed without a renewal. Every write carries the
resourceVersion read, so two candidates racing for an expired Lease cannot both win.

The loop renews the Lease before each pass, so the Lease is also the queue's heartbeat:
each renewal carries the leader's last sync (time and commit) as annotations, and a site
in another pod reads its `/healthz` and "last sync" from it (`lease_heartbeat`), never
from a file of another pod, and with no write of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from reconciler.support.timefmt import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)
LEASE = "batchq-reconciler"
# heartbeat fields (support/heartbeat.py) -> the Lease annotations that carry them
CARRIED = {"lastSync": "batchq.dev/last-sync", "head": "batchq.dev/head",
           "passSeconds": "batchq.dev/pass-seconds", "interval": "batchq.dev/interval"}
Facts = Callable[[], dict[str, Any]]


def lease_heartbeat(api: client.ApiClient, namespace: str, name: str = LEASE) -> dict[str, Any]:
    """The leader's heartbeat as support/heartbeat.py shapes it: `lastPass` is the Lease's
    renewTime (renewed before every pass); {} when no one has held the Lease."""
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    out: dict[str, Any] = {}
    if lease.spec and lease.spec.renew_time:
        out["lastPass"] = parse_rfc3339(lease.spec.renew_time)
    ann = lease.metadata.annotations or {}
    for field, key in CARRIED.items():
        if ann.get(key):
            out[field] = ann[key] if field == "head" else float(ann[key])
    return out


class LeaderElector:
    """Try to hold a Lease; `is_leader()` says whether this process may act."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str = LEASE,
                 identity: str | None = None, duration: int = 15,
                 facts: Facts | None = None) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.duration = duration
        self.leader = False
        self.facts = facts  # the heartbeat fields each renewal carries (CARRIED)

    def _body(self, rv: str | None, transitions: int, acquired: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        facts = self.facts() if self.facts is not None else {}
        carried = {key: str(facts[field]) for field, key in CARRIED.items()
                   if facts.get(field) not in (None, "")}
        if carried:
            meta["annotations"] = carried
        if rv:
            meta["resourceVersion"] = rv
        now = rfc3339(time.time(), micro=True)  # a Lease's times are MicroTime
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": self.duration,
                         "acquireTime": acquired or now, "renewTime": now,
                         "leaseTransitions": transitions}}

    def try_acquire_or_renew(self) -> bool:
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self.coord.create_namespaced_lease(self.namespace, self._body(None, 0, None))
                self.leader = True
            except ApiException as exc2:
                if exc2.status != 409:
                    raise
                self.leader = False
            return self.leader
        spec = lease.spec
        holder = spec.holder_identity
        renewed = parse_rfc3339(spec.renew_time) if spec.renew_time else 0.0
        expired = time.time() > renewed + (spec.lease_duration_seconds or self.duration)
        if holder != self.identity and not expired:
            self.leader = False
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = (rfc3339(parse_rfc3339(spec.acquire_time), micro=True)
                    if holder == self.identity and spec.acquire_time else None)
        try:
            self.coord.replace_namespaced_lease(
                self.name, self.namespace,
                self._body(lease.metadata.resource_version, transitions, acquired))
            if not self.leader:
                log.info("%s is now the leader", self.identity)
            self.leader = True
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.leader = False
        return self.leader
