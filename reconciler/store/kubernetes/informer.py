"""A watch cache: list once, then watch, restarting the watch whenever it ends (DESIGN §8).

Reads come from memory; every change wakes the reconcile loop, so a finished Job reaches
its Batch at once. Watches end silently (timeouts, API server restarts): the thread
watches again from the last resourceVersion it saw, as client-go's reflector does, and
lists again only when the server says that version is gone (410 Gone). A failed call is
retried after 1 s, doubling up to 30 s, and the last failure is kept (`error`) so that a
caller can say why the cache is not there (the CRD is missing, the server is down).
Objects we wrote ourselves are put into the cache at once (`remember`), and an older
version arriving late, from the watch or from a new list that was on its way while we
wrote, never replaces a newer one. `stop` ends the thread
at once, even in the middle of a watch, and waits for it: a thread still reading a socket
while the interpreter exits aborts it.
"""

from __future__ import annotations

import contextlib
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
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0  # seconds between failed calls, as client-go
LIST_TIMEOUT = 60.0  # seconds a list may take before it is tried again


class _RawWatch(watch.Watch):  # type: ignore[misc]
    """Events as plain dicts: deserialising every event into models costs more than the
    API call that caused it."""

    def get_return_type(self, func: Any) -> None:
        return None


def _rv(obj: Obj) -> int:
    return _version(obj["metadata"].get("resourceVersion"))


def _version(text: object) -> int:
    try:
        return int(str(text or 0))
    except ValueError:
        return 0


def _newest(listed: dict[str, Obj], cached: dict[str, Obj], listed_rv: int) -> dict[str, Obj]:
    """The cache after a list at `listed_rv`: the listed objects, except that an object
    cached at a newer version than the list (one we wrote and `remember`ed while the list
    was on its way) is kept, as is one the list does not have yet. The watch from
    `listed_rv` brings their later versions, or their deletion: the cache never goes back
    to an older version of what this process wrote, which a step would act on as if its
    own write had not happened. A list without a version (never from an API server)
    replaces everything."""
    out = dict(listed)
    for name, obj in cached.items():
        newer = _rv(obj)
        if listed_rv and newer > listed_rv and (name not in listed or newer > _rv(listed[name])):
            out[name] = obj
    return out


class Informer:
    """Keeps `objects` (name -> dict) in step with the API server for one resource."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        on_change: Callable[[], None],
        watch_timeout: int = 300,
        on_object: Callable[[Obj | None], None] = lambda obj: None,
        **list_kwargs: Any,
    ) -> None:
        self.kind = kind
        self._list = list_fn
        self._on_change = on_change
        self._on_object = on_object  # each object an event brought; None: a new list
        self._kwargs = list_kwargs
        self.watch_timeout = watch_timeout  # the server ends each watch after this long
        self.objects: dict[str, Obj] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.restarts = 0
        self.relists = 0
        self.error: BaseException | None = None  # the last failure, None once it works
        self._rv = ""  # the last resourceVersion seen: a watch resumes from it
        self._told = ""  # the failure last logged
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread, cutting a watch short, and wait for it."""
        self._stop.set()
        if self._thread is threading.current_thread():
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            current = self._watch  # a watch may be opening as we stop: shut it once open
            if current is not None:
                current.stop()
                resp = getattr(current, "_resp", None)  # the open watch response, if any
                if resp is not None:
                    with contextlib.suppress(Exception):  # it may be closing by itself
                        resp.shutdown()  # unblocks the thread's read of the socket
            self._thread.join(0.1)

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
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            failed = False
            try:
                if not self._rv:
                    self._rv = self._relist()
                self._watch_from(self._rv)  # ends after watch_timeout, or when stopped
                self.error, self._told = None, ""
                backoff = FIRST_BACKOFF
            except ApiException as exc:
                if exc.status == 410:  # the version is gone: list again, at once
                    self._rv = ""
                else:
                    failed = self._failed(exc, f"{exc.status} {exc.reason}")
            except Exception as exc:  # the cache must outlive any one failure
                failed = self._failed(exc, str(exc))
            if self._stop.is_set():
                return
            self.restarts += 1
            if failed:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _failed(self, exc: BaseException, what: str) -> bool:
        """Keep the failure; log it (once, until it changes or the watch works again)
        once the cache exists (before, whoever waits for the cache says why it is not
        there, in words of its own)."""
        if not self._stop.is_set() and what != self._told:  # an outage is one line
            level = logging.WARNING if self.synced.is_set() else logging.INFO
            log.log(level, "%s watch failed (retrying): %s", self.kind, what)
            self._told = what
        self.error = exc
        return True

    def _relist(self) -> str:
        self.relists += 1
        resp = self._list(_preload_content=False, _request_timeout=LIST_TIMEOUT,
                          **self._kwargs)
        result = json.loads(resp.data)
        listed_rv = str(result["metadata"].get("resourceVersion", ""))
        fresh = {o["metadata"]["name"]: o for o in result.get("items", [])}
        for o in fresh.values():
            o.setdefault("apiVersion", result.get("apiVersion"))
        with self.lock:
            self.objects = _newest(fresh, self.objects, _version(listed_rv))
        self.error, self._told = None, ""
        self.synced.set()
        self._on_object(None)
        self._on_change()
        return listed_rv

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
            rv = str(obj.get("metadata", {}).get("resourceVersion") or "")
            if rv:
                self._rv = rv
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
            self._on_object(obj)
            self._on_change()
