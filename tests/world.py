"""What runs the jobs in the end-to-end suite, for either backend.

Locally the worker really downloads from a payload server whose gates the test opens;
on Kubernetes kwok plays the kubelet: every pod starts held (`batchq.dev/simulate: hold`)
and a pump annotates it `complete` or `fail` once the test releases its item. The same
scenario code drives both, so the same stories are proven on both backends.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.fixtures import PayloadServer


class LocalWorld:
    def __init__(self, payloads: PayloadServer) -> None:
        self.payloads = payloads
        self.prefix = payloads.base

    def item(self, name: str, *, fail: bool = False, gated: bool = True) -> dict[str, Any]:
        good = f"payload of {name}\n".encode()
        item = self.payloads.add(name, good, gated=gated)
        if fail:  # same size, other bytes: the worker finds a digest mismatch
            self.payloads.files[name] = good[:-2] + b"!\n"
        return item

    def release(self, *names: str) -> None:
        self.payloads.release(*names)

    def set_outcome(self, name: str, *, fail: bool) -> None:
        """What the next attempts of `name` will do (the depositor re-uploaded, say)."""
        good = f"payload of {name}\n".encode()
        self.payloads.files[name] = good[:-2] + b"!\n" if fail else good

    def downloads(self, name: str) -> int:
        return self.payloads.requests.count(name)

    def close(self) -> None:
        pass


class KubeWorld:
    """Holds every pod until its item is released, then lets kwok finish it."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.ns = namespace
        self.prefix = "http://payloads.invalid/"
        self.fail: dict[str, bool] = {}
        self.released: set[str] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump_forever, daemon=True)
        self._thread.start()

    def item(self, name: str, *, fail: bool = False, gated: bool = True) -> dict[str, Any]:
        with self.lock:
            self.fail[name] = fail
            if not gated:
                self.released.add(name)
        body = f"payload of {name}\n".encode()
        return {"id": name, "url": self.prefix + name, "title": f"Title of {name}",
                "size": len(body),
                "digest": {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()},
                "metadata": {"simulate": "hold"}}

    def release(self, *names: str) -> None:
        with self.lock:
            self.released.update(names)
        self.pump()

    def set_outcome(self, name: str, *, fail: bool) -> None:
        with self.lock:
            self.fail[name] = fail

    def downloads(self, name: str) -> int:
        raise NotImplementedError("kwok downloads nothing")

    def pump(self) -> None:
        pods = self.core.list_namespaced_pod(self.ns).items
        for pod in pods:
            ann = pod.metadata.annotations or {}
            item = ann.get("batchq.dev/item-id")
            if ann.get("batchq.dev/simulate") != "hold" or item is None:
                continue
            with self.lock:
                if item not in self.released:
                    continue
                fail = self.fail.get(item, False)
            patch = {"metadata": {"annotations": {
                "batchq.dev/simulate": "fail" if fail else "complete",
                "batchq.dev/simulate-message":
                    f"digest mismatch: expected sha256 of {item}, got something else"}}}
            try:
                self.core.patch_namespaced_pod(pod.metadata.name, self.ns, patch)
            except ApiException as exc:  # deleted with its Job since the list: nothing to do
                if exc.status != 404:
                    raise

    def _pump_forever(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.pump()
            except Exception:  # the namespace may be going away at the end of a test
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
