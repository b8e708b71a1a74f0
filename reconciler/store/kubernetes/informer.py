"""A watch cache: list once, then watch, restarting the watch whenever it ends (DESIGN §8).

Reads come from memory; every change wakes the reconcile loop, so a finished Job reaches
its Batch at once. Watches end silently (timeouts, API server restarts, 410 Gone for an
expired resourceVersion): the thread lists again and carries on. Objects we wrote
ourselves are put into the cache at once (`remember`), and an older version arriving late
from the watch never replaces a newer one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class _RawWatch(watch.Watch):  # type: ignore[misc]
    """Events as plain dicts: deserialising every event into models costs more than the
    API call that caused it."""

    def get_return_type(self, func: Any) -> None:
        return None


def _rv(obj: Obj) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class Informer:
    """Keeps `objects` (name -> dict) in step with the API server for one resource."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        on_change: Callable[[], None],
        watch_timeout: int = 300,
        **list_kwargs: Any,
    ) -> None:
        self.kind = kind
        self._list = list_fn
        self._on_change = on_change
        self._kwargs = list_kwargs
        self.watch_timeout = watch_timeout  # the server ends each watch after this long
        self.objects: dict[str, Obj] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.restarts = 0
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self.synced.wait(timeout):
            raise TimeoutError(f"the {self.kind} cache did not sync in {timeout:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def snapshot(self) -> list[Obj]:
        with self.lock:
            return list(self.objects.values())

    def get(self, name: str) -> Obj | None:
        with self.lock:
            return self.objects.get(name)

    def remember(self, obj: Obj) -> None:
        """Put an object we just wrote into the cache (unless a newer one is there)."""
        name = obj["metadata"]["name"]
        with self.lock:
            old = self.objects.get(name)
            if old is None or _rv(obj) >= _rv(old):
                self.objects[name] = obj

    def forget(self, name: str) -> None:
        with self.lock:
            self.objects.pop(name, None)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._relist()
                backoff = 0.5
                self._watch_from(rv)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("%s watch failed: %s", self.kind, exc.reason)
            except Exception as exc:  # the cache must outlive any one failure
                log.warning("%s watch ended: %s", self.kind, exc)
            if self._stop.is_set():
                return
            self.restarts += 1
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def _relist(self) -> str:
        resp = self._list(_preload_content=False, **self._kwargs)
        result = json.loads(resp.data)
        fresh = {o["metadata"]["name"]: o for o in result.get("items", [])}
        for o in fresh.values():
            o.setdefault("apiVersion", result.get("apiVersion"))
        with self.lock:
            self.objects = fresh
        self.synced.set()
        self._on_change()
        return str(result["metadata"].get("resourceVersion", ""))

    def _watch_from(self, rv: str) -> None:
        self._watch = _RawWatch()
        events = self._watch.stream(self._list, resource_version=rv,
                                    timeout_seconds=self.watch_timeout,
                                    allow_watch_bookmarks=True, **self._kwargs)
        for event in events:
            if self._stop.is_set():
                return
            kind = event["type"]
            obj = event["raw_object"]
            if kind == "ERROR":
                code = obj.get("code")
                raise ApiException(status=code, reason=str(obj.get("message")))
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            with self.lock:
                if kind == "DELETED":
                    self.objects.pop(name, None)
                else:
                    old = self.objects.get(name)
                    if old is None or _rv(obj) >= _rv(old):
                        self.objects[name] = obj
            self._on_change()
