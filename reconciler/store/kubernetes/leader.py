"""Leader election on a coordination.k8s.io Lease, so only one reconciler acts (DESIGN §8).

As client-go's leaderelection does it: a thread of its own tries to acquire the Lease, and
then renews it, every `retry_period` seconds, however long a reconcile pass takes. The
holder may act only while its last renewal began less than `renew_deadline` ago
(`is_leader`); a candidate takes the Lease over once it has seen the same record, unrenewed,
for `duration` seconds (measured on its own clock, never comparing clocks across
machines). Since `renew_deadline` < `duration`, a holder that cannot renew stops acting
before anyone else may start. `stop` releases the Lease (holder cleared, as client-go's
ReleaseOnCancel), so a stand-by takes over within one retry period instead of waiting for
it to expire. Every write carries the resourceVersion read, so two candidates racing for a
free Lease cannot both win. A failed call (the API server is down or restarting, a 403
while its authorizer warms up) is logged once and retried at the next period.

The Lease is also the queue's heartbeat: each renewal carries the leader's last pass and
sync (times, commit) as annotations, and a site in another pod reads its `/healthz` and
"last sync" from it (`lease_heartbeat`), never from a file of another pod, and with no
write of its own.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from reconciler.store.kubernetes.apierrors import describe
from reconciler.support.timefmt import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)
LEASE = "batchq-reconciler"
# heartbeat fields (support/heartbeat.py) -> the Lease annotations that carry them
CARRIED = {"lastPass": "batchq.dev/last-pass", "lastSync": "batchq.dev/last-sync",
           "head": "batchq.dev/head", "passSeconds": "batchq.dev/pass-seconds",
           "interval": "batchq.dev/interval"}
Facts = Callable[[], dict[str, Any]]


def lease_heartbeat(api: client.ApiClient, namespace: str, name: str = LEASE) -> dict[str, Any]:
    """The leader's heartbeat as support/heartbeat.py shapes it: `lastPass` is the loop's
    last pass as the leader's renewals carry it (the Lease's renewTime before any pass);
    {} when no one has held the Lease."""
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


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults; `check` says what is wrong with others."""

    duration: float = 15.0  # leaseDurationSeconds: a silent holder is replaced after this
    renew_deadline: float = 10.0  # the holder stops acting when it could not renew for this
    retry_period: float = 2.0  # how often the holder renews, and a candidate tries

    def check(self) -> str:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            return (f"lease timings must satisfy 0 < retry period ({self.retry_period:g} s)"
                    f" < renew deadline ({self.renew_deadline:g} s) < lease duration"
                    f" ({self.duration:g} s)")
        return ""


class LeaderElector:
    """Holds or waits for a Lease in a thread; `is_leader()` says whether this process may
    act now. Call `start`, and `stop` at the end (it releases the Lease)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str = LEASE,
                 identity: str | None = None, timings: LeaseTimings = LeaseTimings(),
                 on_change: Callable[[], None] = lambda: None,
                 facts: Facts | None = None) -> None:
        self.facts = facts  # the heartbeat fields each renewal carries (CARRIED)
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.timings = timings
        self.duration = timings.duration
        self.renewals = 0  # successful writes of the Lease, in all
        self._on_change = on_change  # leadership was gained or lost
        self._lock = threading.Lock()
        self._leading = False
        self._renewed = 0.0  # monotonic start of the last successful acquire or renewal
        self._observed: tuple[Any, ...] | None = None  # the record as last seen ...
        self._observed_at = 0.0  # ... and since when (monotonic)
        self._failing = ""  # the failure last logged, so an outage is one line, not many
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # a hung API server must not hold the thread past the point of losing the Lease
        self._timeout = {"_request_timeout": timings.renew_deadline}

    # --- what the loop asks
    def is_leader(self) -> bool:
        with self._lock:
            return self._leading and (
                time.monotonic() - self._renewed < self.timings.renew_deadline)

    @property
    def leader(self) -> bool:
        return self.is_leader()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="batchq-leader",
                                            daemon=True)
            self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing and, if this process holds the Lease, give it up at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timings.renew_deadline + 5)
        if release:
            self.release()

    # --- the thread
    def _run(self) -> None:
        was = False  # leadership as last told (it can also lapse between two attempts)
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
                if self._failing:
                    log.warning("the Lease %s can be read and written again", self.name)
                    self._failing = ""
            except Exception as exc:  # an outage: keep trying, every period
                what = describe(exc)
                if what != self._failing:
                    log.warning("leader election failed (retrying): %s", what)
                    self._failing = what
            now = self.is_leader()
            if was and not now:
                log.warning("%s lost the Lease %s: it stops acting", self.identity, self.name)
            if was != now:
                self._on_change()
            was = now
            period = self.timings.retry_period
            self._stop.wait(period if now else period * (1 + 0.2 * random.random()))

    def _body(self, rv: str | None, transitions: int, acquired: str | None,
              holder: str | None = None, duration: float | None = None) -> dict[str, Any]:
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
                "spec": {"holderIdentity": self.identity if holder is None else holder,
                         "leaseDurationSeconds": max(1, round(duration or self.duration)),
                         "acquireTime": acquired or now, "renewTime": now,
                         "leaseTransitions": transitions}}

    def _succeeded(self, began: float) -> bool:
        with self._lock:
            if not self._leading:
                log.warning("%s is now the leader", self.identity)
            self._leading, self._renewed = True, began
        self.renewals += 1
        return True

    def _lost(self) -> bool:
        with self._lock:
            self._leading = False
        return False

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this process holds the Lease now. API errors propagate."""
        began = time.monotonic()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace, **self._timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self.coord.create_namespaced_lease(self.namespace, self._body(None, 0, None),
                                                **self._timeout)
            except ApiException as exc2:
                if exc2.status != 409:
                    raise
                return self._lost()
            return self._succeeded(began)
        spec = lease.spec
        holder = spec.holder_identity or ""
        record = (holder, spec.renew_time, spec.lease_duration_seconds,
                  lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, began
        duration = float(spec.lease_duration_seconds or self.duration)
        valid = began < self._observed_at + duration
        if holder and holder != self.identity and valid:
            return self._lost()
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = (rfc3339(parse_rfc3339(spec.acquire_time), micro=True)
                    if holder == self.identity and spec.acquire_time else None)
        try:
            self.coord.replace_namespaced_lease(
                self.name, self.namespace,
                self._body(lease.metadata.resource_version, transitions, acquired),
                **self._timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return self._lost()  # someone wrote it first: read again next period
        return self._succeeded(began)

    def release(self) -> bool:
        """Clear the holder if it is this process (client-go's ReleaseOnCancel)."""
        with self._lock:
            leading, self._leading = self._leading, False
        if not leading:
            return False
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace, **self._timeout)
            if (lease.spec.holder_identity or "") != self.identity:
                return False
            self.coord.replace_namespaced_lease(
                self.name, self.namespace,
                self._body(lease.metadata.resource_version, lease.spec.lease_transitions or 0,
                           None, holder="", duration=1), **self._timeout)
        except Exception as exc:  # it expires by itself then
            log.warning("could not release the Lease %s: %s", self.name, describe(exc))
            return False
        log.warning("%s released the Lease %s", self.identity, self.name)
        return True
