"""The `kubernetes` backend: Batch custom resources, batch/v1 Jobs, ConfigMaps (DESIGN §8).

- Git is the only source of truth (issue 9 §0). The Batch object is what kubectl shows and
  can reach, so nothing is read back from it: the spec as applied from Git, the batch's
  generation and incarnation live in `<batch>-spec`, its status in `<batch>-status`
  (records.py). The object's spec is server-side applied from Git (field manager
  `batchq-sync`, forced), an inline items list replaced by `manifest.itemsFrom`; its
  `.status` is a projection of the recorded status, written through the status
  subresource as one JSON patch of `/status` (never the spec).
  `repair_drift` (each sync) applies a hand-deleted Batch again, replaces a hand-edited
  spec and overwrites a hand-edited status; none of them ever drives a step or an email.
- Status stays small: counts, a bounded list of failures, the report round. Per-item
  detail lives in ConfigMaps `<batch>-items-NNNN` (cut by count and size), reports in
  `<batch>-report-<round>-<incarnation>` (the outbox is their `batchq.dev/outbox` label),
  the timeline in `<batch>-timeline`. Like the records, they are owned by nothing
  (labelled `batchq.dev/batch`), so `kubectl delete batch` cannot take them: they are
  deleted by `remove_batch`, when the batch's file is gone from Git and its retention
  ended, except a report still waiting to be emailed, which goes out.
  Their names and contents are pure functions in configmaps.py.
- A Batch's incarnation (recorded, and shown as `batchq.dev/incarnation`) tells a name
  reused after a deletion from the batch that had it before: their reports never meet.
- One Job per item attempt, owned by the Batch, labelled batch/item/attempt; a Job that
  finished and vanished is never re-run because the item ConfigMap recorded it. The Job
  body and the reading of its state are pure functions in jobs.py; the status codec is in
  status.py.
- Item credentials (userinfo of a payload URL) live in Secrets `<batch>-credentials-XX`
  (owned by nothing, like the records: the Jobs made again after a hand delete need
  them), never in the item ConfigMaps or the Job; a Job's pod mounts only its own item's
  key, read-only, as the file BATCHQ_CREDENTIALS_FILE names.
- Reads come from watch caches (informer.py); a write that would change nothing is not
  sent, so a pass with no change makes no API write.
- `may_write` (set by the loop to "I hold the Lease and am not stopping") is asked before
  every write that acts: when it says no, NotLeader is raised and the write is not made.
  Recording a delivery is the one exception: the email went out, and the record of it
  is what keeps it from going out twice.
- A pass's new Jobs are created `limits.concurrency` at a time (`create_jobs`), and every
  write that acts waits for a token of one client-side bucket (`limits.qps`/`burst`, as
  controller-runtime's), in `_act`, before the Lease fence is asked: a write that waited
  is still fenced. A failed create stops the ones not yet started; those made are
  returned, for the controller to record (limits.py).
- `connect` waits for the caches; when they do not fill it raises StoreUnavailable saying
  why (the CRD is missing, the server cannot be reached), and `close` stops and joins
  the watch threads.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from reconciler.domain.model import (
    Batch,
    BatchSpec,
    BatchStatus,
    Item,
    ItemStatus,
    Job,
    Report,
)
from reconciler.domain.states import JOB_TERMINAL, BatchState, JobState
from reconciler.store.base import (
    ConflictError,
    Delivery,
    Event,
    JobChanges,
    JobsCreated,
    JobSpec,
    NotLeader,
    OutboxEntry,
    Page,
    RecipientState,
    StoreUnavailable,
    SyncState,
    may_act,
    needing_jobs,
    new_uid,
)
from reconciler.store.codec import canonical_json, sync_state_from_meta, sync_state_writes
from reconciler.store.kubernetes import rawjson
from reconciler.store.kubernetes.apierrors import (
    cache_unavailable,
    crd_missing,
    describe,
    transient,
)
from reconciler.store.kubernetes.configmaps import (
    CHUNK,
    REPORT_KEY,
    bounded_timeline,
    chunk_name,
    delivery_accepted,
    item_chunks,
    item_status,
    new_item_records,
    recipients_from_cm,
    report_cm_name,
    report_from_json,
    report_from_parts,
    report_incarnation,
    report_part_name,
    report_parts,
    timeline_name,
)
from reconciler.store.kubernetes.events import EventRecorder, delivery_events
from reconciler.store.kubernetes.informer import Informer, Obj
from reconciler.store.kubernetes.jobs import (
    DEFAULT_S3_SECRET,
    DEFAULT_STORAGE_CLAIM,
    RESULT_FINALIZER,
    StorageRefs,
    job_from_k8s,
    job_manifest,
)
from reconciler.store.kubernetes.limits import DEFAULT_LIMITS, ClientLimits
from reconciler.store.kubernetes.names import (
    GROUP,
    PLURAL,
    VERSION,
    A,
    credentials_secret,
    label_value,
)
from reconciler.store.kubernetes.records import (
    RECORD_KEY,
    SPEC_KEY,
    STATUS_KEY,
    decode_spec,
    encode_spec,
    object_spec,
    projected_status,
    spec_digest,
    spec_record_name,
    status_record_name,
)
from reconciler.store.kubernetes.status import status_from_k8s, status_to_k8s
from reconciler.support import failpoints
from reconciler.support.ratelimit import TokenBucket
from reconciler.support.redaction import redact_text
from reconciler.support.timefmt import parse_rfc3339_or_none

log = logging.getLogger(__name__)
MANAGER = "batchq-sync"
RECORD_PATIENCE = 600.0  # seconds a delivery record is retried through an API outage
log = logging.getLogger(__name__)
META = "batchq-meta"


def _annotations(record: dict[str, Any]) -> dict[str, str]:
    """What the Batch object shows of its record, for kubectl (never read back)."""
    out = {f"{A}source-path": str(record["sourcePath"]),
           f"{A}source-revision": str(record["sourceRevision"]),
           f"{A}submitted-at": str(record["submittedAt"]),
           f"{A}spec-error": str(record["specError"]),
           f"{A}spec-hash": str(record["specHash"])}
    if record.get("incarnation"):  # a Batch created before incarnations keeps having none
        out[f"{A}incarnation"] = str(record["incarnation"])
    return out


def _cr_annotations(cr: Obj | None) -> dict[str, str]:
    return dict(((cr or {}).get("metadata") or {}).get("annotations") or {})


def _items_elsewhere(cr: Obj) -> bool:
    """Does the object hold `manifest.itemsFrom`? Then this store wrote it, and a kill
    came before its record: the record comes with the next apply (the commit is synced
    again), the object alone does not say what the batch is."""
    return "itemsFrom" in ((cr.get("spec") or {}).get("manifest") or {})


def _legacy_record(cr: Obj) -> dict[str, Any]:
    """The record of a Batch stored before records were kept: read from the object."""
    meta = cr["metadata"]
    ann = meta.get("annotations") or {}
    return {"incarnation": ann.get(f"{A}incarnation", ""),
            "generation": int(meta.get("generation", 1)),
            "specHash": ann.get(f"{A}spec-hash", ""),
            "sourcePath": ann.get(f"{A}source-path", ""),
            "sourceRevision": ann.get(f"{A}source-revision", ""),
            "submittedAt": float(ann.get(f"{A}submitted-at", "0") or 0),
            "specError": ann.get(f"{A}spec-error", ""),
            "appliedSpecHash": spec_digest(cr.get("spec")),
            "updatedAt": float(ann.get(f"{A}updated-at", "0") or 0)}


def _normal(status: BatchStatus) -> str:
    """Compare statuses as they would round-trip through the API server."""
    return canonical_json(status_to_k8s(status))


def client_configuration(kubeconfig: str | None,
                         limits: ClientLimits = DEFAULT_LIMITS) -> client.Configuration:
    """The client's settings: from `kubeconfig`, else the pod's service account."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    cfg.retries = False  # no hidden retries: the loop retries, with back-off, and says so
    # a connection for each create in flight, beside the three watches
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, limits.concurrency + 4)
    # the proxy the environment names now, once: the connection pool is built from it once,
    # and otherwise every request's token refresh (it sets the host again) reads the whole
    # environment to find it anew (a third of a millisecond a request, bench/README.md)
    cfg.proxy = cfg.proxy
    return cfg


class KubernetesStore:
    """The store on a cluster; see the module docstring."""

    def __init__(self, api: client.ApiClient, namespace: str, watch_timeout: int = 300, *,
                 storage_claim: str = DEFAULT_STORAGE_CLAIM,
                 s3_secret: str = DEFAULT_S3_SECRET,
                 limits: ClientLimits = DEFAULT_LIMITS) -> None:
        self.api = api
        self.limits = limits
        self.bucket = TokenBucket(limits.qps, limits.burst)
        self.ns = namespace
        self.storage = StorageRefs(storage_claim, s3_secret)
        self.custom = client.CustomObjectsApi(api)
        self.batch_api = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.writes = 0
        self.may_write: Callable[[], bool] | None = None  # None: always (no election)
        self.wake = threading.Event()
        self._lock = threading.RLock()
        self._decoded: dict[str, tuple[str, Any]] = {}
        self._failure_messages: dict[str, str] = {}
        # batch -> Job name -> the resourceVersion last observed: in memory only, so the
        # first step after a start observes every Job (nothing can be lost by a kill)
        self._observed: dict[str, dict[str, str]] = {}
        self.recorder = EventRecorder(api, namespace)  # Events on the Batch (kubectl)
        self._changed: set[str] | None = None  # batches the watches saw change (None: all)
        wake, seen = self.wake.set, self._saw
        self.batches = Informer("batches", self._list_batches, wake, watch_timeout,
                                on_object=lambda obj: seen(obj, own=True))
        self.jobs = Informer("jobs", self.batch_api.list_namespaced_job, wake, watch_timeout,
                             on_object=seen, namespace=namespace, label_selector=f"{A}batch")
        self.cms = Informer("configmaps", self.core.list_namespaced_config_map, wake,
                            watch_timeout, on_object=seen, namespace=namespace,
                            label_selector=f"{A}kind")

    @classmethod
    def connect(cls, namespace: str, kubeconfig: str | None = None,
                watch_timeout: int = 300, sync_timeout: float = 30.0, *,
                storage_claim: str = DEFAULT_STORAGE_CLAIM,
                s3_secret: str = DEFAULT_S3_SECRET,
                limits: ClientLimits = DEFAULT_LIMITS) -> KubernetesStore:
        """An open store with its caches filled; StoreUnavailable (the caches stopped and
        joined) when they do not fill within `sync_timeout` or the CRD is missing."""
        cfg = client_configuration(kubeconfig, limits)
        store = cls(client.ApiClient(cfg), namespace, watch_timeout,
                    storage_claim=storage_claim, s3_secret=s3_secret, limits=limits)
        try:
            store.start(sync_timeout)
        except BaseException:
            store.close()
            raise
        return store

    def start(self, timeout: float = 30.0) -> None:
        informers = (self.batches, self.jobs, self.cms)
        for inf in informers:
            inf.start()
        deadline = time.monotonic() + timeout
        for inf in informers:
            while not inf.wait_synced(0.1):
                if crd_missing(self.batches.error):  # no use waiting for it to appear
                    raise StoreUnavailable(cache_unavailable("batches", self.batches.error))
                if time.monotonic() > deadline:
                    raise StoreUnavailable(cache_unavailable(inf.kind, inf.error, timeout))

    def close(self) -> None:
        """Stop the watch threads and wait for them, then close the connections."""
        for inf in (self.batches, self.jobs, self.cms):
            inf.stop()
        self.api.close()

    def fence_with(self, may_write: Callable[[], bool]) -> None:
        """Ask `may_write` before every write that acts (see the module docstring)."""
        self.may_write = may_write

    def _act(self) -> None:
        self.bucket.take()  # first: the Lease may be lost while this waits
        if self.may_write is not None and not self.may_write():
            raise NotLeader("this reconciler no longer holds the Lease: the write was not made")

    def _saw(self, obj: Obj | None, own: bool = False) -> None:
        """A watch event: the Batch it is (`own`), or whose child it is (its `batch`
        label), has changed; a new list (None) may have changed any of them."""
        with self._lock:
            if obj is None:
                self._changed = None
            elif self._changed is not None:
                meta = obj.get("metadata") or {}
                batch = meta.get("name") if own else (meta.get("labels") or {}).get(f"{A}batch")
                if batch:
                    self._changed.add(str(batch))

    def take_changed_batches(self) -> set[str] | None:
        """What the watches saw change since the last call (see `_saw`), then forgotten;
        None on the first call and after a watch listed again."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def _list_batches(self, **kwargs: Any) -> Any:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL,
                                                         **kwargs)

    @staticmethod
    def _raw(fn: Any, *args: Any, **kwargs: Any) -> Obj:
        """Call the API and decode the JSON body ourselves (the generated client returns
        None for some content types, e.g. server-side apply)."""
        resp = fn(*args, _preload_content=False, **kwargs)
        return dict(json.loads(resp.data))

    def transaction(self, durable: bool = True) -> contextlib.AbstractContextManager[Any]:
        """Guarantees nothing (see `Store.transaction`): the API server has no
        multi-object transactions, each write stands alone, and the controller's steps are
        ordered so that any prefix of them is safe."""
        return contextlib.nullcontext()

    def _wrote(self) -> None:
        with self._lock:  # creates run on several threads
            self.writes += 1

    # --- ConfigMap helpers
    def _cm_json(self, name: str, key: str, default: Any) -> Any:
        value = self._cm_decoded(name, key)
        return copy.deepcopy(value if value is not None else default)

    def _cm_decoded(self, name: str, key: str) -> Any:
        """The decoded value as cached (None if absent): shared, so only for reads that
        build objects of their own from it and change nothing in it."""
        cm = self.cms.get(name)
        if cm is None:
            return None
        rv = cm["metadata"].get("resourceVersion", "")
        memo = self._decoded.get(f"{name}/{key}")
        if memo is None or memo[0] != rv:
            memo = (rv, json.loads((cm.get("data") or {}).get(key, "null") or "null"))
            self._decoded[f"{name}/{key}"] = memo
        return memo[1]

    def _owner(self, batch: str) -> list[dict[str, Any]]:
        cr = self.batches.get(batch)
        if cr is None:
            return []
        return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "Batch", "name": batch,
                 "uid": cr["metadata"]["uid"], "controller": True,
                 "blockOwnerDeletion": True}]

    def _create_cm(self, name: str, kind: str, batch: str | None, data: dict[str, str],
                   labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None,
                   binary: dict[str, str] | None = None) -> bool:
        meta: dict[str, Any] = {"name": name, "labels": {f"{A}kind": kind, **(labels or {})},
                                "annotations": annotations or {}}
        if batch is not None:  # owned by nothing: a hand-deleted Batch does not take it
            meta["labels"][f"{A}batch"] = batch
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                                "data": data}
        if binary:
            body["binaryData"] = binary
        return self._create(rawjson.configmaps_path(self.ns), body, self.cms)

    def _create(self, path: str, body: Obj, cache: Informer) -> bool:
        """Create an object (POSTed to `path` as JSON, rawjson.py); False if it exists
        already (creating twice is a no-op)."""
        self._act()
        try:
            created = rawjson.create(self.api, path, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._wrote()
        cache.remember(created)
        return True

    def _put_cm_json(self, name: str, key: str, value: Any, kind: str,
                     batch: str | None) -> None:
        """Read-modify-write of one ConfigMap key, guarded by resourceVersion."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        cm = self.cms.get(name)
        if cm is None:
            if self._create_cm(name, kind, batch, {key: text}):
                return
            cm = self._raw(self.core.read_namespaced_config_map, name, self.ns)
        if (cm.get("data") or {}).get(key) == text:
            return
        body = copy.deepcopy(cm)
        body.setdefault("data", {})[key] = text
        self._replace(self.cms, f"ConfigMap {name}", self.core.replace_namespaced_config_map,
                      name, self.ns, body)

    def _replace(self, cache: Informer, what: str, replace: Any, *args: Any) -> None:
        """Write back an object read from the cache; its resourceVersion guards the write."""
        self._act()
        try:
            new = self._raw(replace, *args)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{what} changed under us") from exc
            raise
        self._wrote()
        cache.remember(new)

    # --- meta
    def get_meta(self, key: str) -> str | None:
        cm = self.cms.get(META)
        value = ((cm or {}).get("data") or {}).get(key)
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        if self.get_meta(key) == value:
            return
        if self.cms.get(META) is None and self._create_cm(META, "meta", None, {key: value}):
            return
        self._act()
        new = self._raw(self.core.patch_namespaced_config_map, META, self.ns,
                        {"data": {key: value}})
        self._wrote()
        self.cms.remember(new)

    def _meta_data(self) -> dict[str, str]:
        cm = self.cms.get(META)
        return {str(k): str(v) for k, v in ((cm or {}).get("data") or {}).items()}

    def load_sync_state(self) -> SyncState:
        return sync_state_from_meta(self._meta_data())

    def save_sync_state(self, state: SyncState) -> None:
        for key, value in sync_state_writes(self._meta_data(), state):
            self.set_meta(key, value)  # one merge patch per field, as before the type

    def _placeholders(self) -> dict[str, dict[str, Any]]:
        return dict(json.loads(self.get_meta("placeholders") or "{}"))

    # --- batches
    def _batch(self, cr: Obj) -> Batch:
        """A Batch stored before its records (until `repair_drift` records it)."""
        meta = cr["metadata"]
        ann = meta.get("annotations") or {}
        doc = self._cm_json(status_record_name(meta["name"]), STATUS_KEY, None)
        return Batch(
            name=meta["name"],
            spec=BatchSpec.from_dict(cr["spec"]) if cr.get("spec") else None,
            generation=int(meta.get("generation", 1)),
            source_path=ann.get(f"{A}source-path", ""),
            source_revision=ann.get(f"{A}source-revision", ""),
            submitted_at=float(ann.get(f"{A}submitted-at", "0")),
            status=status_from_k8s(doc["status"] if doc else cr.get("status")),
            spec_error=ann.get(f"{A}spec-error", ""),
            updated_at=float(ann.get(f"{A}updated-at", "0") or 0)
            or (parse_rfc3339_or_none(meta.get("creationTimestamp")) or 0.0),
            uid=ann.get(f"{A}incarnation", ""),
        )

    def _record(self, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The batch's record and its spec as last applied from Git (records.py), or None.
        The spec is decoded once per version of the ConfigMap; callers only read it."""
        cm_name = spec_record_name(name)
        cm = self.cms.get(cm_name)
        if cm is None:
            return None
        rv = cm["metadata"].get("resourceVersion", "")
        memo = self._decoded.get(f"{cm_name}/record")
        if memo is None or memo[0] != rv:
            record = json.loads((cm.get("data") or {}).get(RECORD_KEY) or "{}")
            spec = decode_spec((cm.get("binaryData") or {})[SPEC_KEY])
            memo = (rv, (record, spec))
            self._decoded[f"{cm_name}/record"] = memo
        record, spec = memo[1]
        return dict(record), spec

    def _recorded_names(self) -> list[str]:
        return [str((cm["metadata"].get("labels") or {}).get(f"{A}batch"))
                for cm in self.cms.snapshot()
                if (cm["metadata"].get("labels") or {}).get(f"{A}kind") == "batch-spec"]

    def _recorded_batch(self, name: str, record: dict[str, Any],
                        spec: dict[str, Any]) -> Batch:
        doc = self._cm_json(status_record_name(name), STATUS_KEY, None)
        return Batch(
            name=name, spec=BatchSpec.from_dict(spec), generation=int(record["generation"]),
            source_path=str(record["sourcePath"]),
            source_revision=str(record["sourceRevision"]),
            submitted_at=float(record["submittedAt"]),
            status=status_from_k8s(doc["status"] if doc else None),
            spec_error=str(record.get("specError", "")),
            updated_at=max(float(doc.get("updatedAt", 0)) if doc else 0.0,
                           float(record.get("updatedAt", 0))),
            uid=str(record.get("incarnation", "")),
        )

    def _placeholder_batch(self, name: str, p: dict[str, Any]) -> Batch:
        return Batch(name=name, spec=None, generation=1, source_path=p["source_path"],
                     source_revision=p["revision"], submitted_at=p["committed_at"],
                     spec_error=p["error"], updated_at=p["committed_at"])

    def list_batches(self) -> list[Batch]:
        names = {cr["metadata"]["name"] for cr in self.batches.snapshot()}
        names.update(self._recorded_names())
        out = [b for b in (self.get_batch(n) for n in names) if b is not None]
        out += [self._placeholder_batch(n, p) for n, p in self._placeholders().items()
                if n not in names]
        return sorted(out, key=lambda b: b.name)

    def batches_at(self, paths: Collection[str]) -> list[Batch]:
        """From `list_batches`: a batch's records are keyed by name, not by file."""
        wanted = set(paths)
        return [b for b in self.list_batches() if b.source_path in wanted] if wanted else []

    def page_batches(self, *, state: str | None = None, offset: int = 0,
                     limit: int = 50) -> Page:
        rows = [b for b in self.list_batches() if not state or str(b.status.state) == state]
        rows.sort(key=lambda b: (-b.updated_at, b.name))
        return Page(total=len(rows), rows=rows[offset:offset + limit])

    def batches_that_may_act(self, states: Collection[str]) -> list[Batch]:
        """From one `list_batches` (before: one for each active state that had batches)."""
        return [b for b in self.list_batches() if may_act(b, states)]

    def count_batches(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.list_batches():
            out[str(b.status.state)] = out.get(str(b.status.state), 0) + 1
        return out

    def get_batch(self, name: str) -> Batch | None:
        """From the batch's records (never from what kubectl can edit in the Batch); a
        Batch stored before them is read from the object itself."""
        found = self._record(name)
        if found is not None:
            return self._recorded_batch(name, *found)
        cr = self.batches.get(name)
        if cr is not None and not _items_elsewhere(cr):
            return self._batch(cr)
        p = self._placeholders().get(name)
        return self._placeholder_batch(name, p) if p else None

    def apply_spec(self, name: str, spec: dict[str, Any] | None, *, source_path: str,
                   revision: str, committed_at: float, error: str) -> Batch:
        cr = self.batches.get(name)
        found = self._record(name)
        error = error[:32768]
        if spec is None and cr is None and found is None:
            self._apply_invalid(name, source_path=source_path, revision=revision,
                                committed_at=committed_at, error=error)
            batch = self.get_batch(name)
            assert batch is not None
            return batch
        if spec is None:  # a broken edit: the last good spec stays, the error is shown
            if found is not None:
                record, applied = found
                self._save_record(name, {**record, "specError": error,
                                         "sourceRevision": revision,
                                         "sourcePath": source_path}, applied)
            ann = (cr or {}).get("metadata", {}).get("annotations") or {}
            wanted = {f"{A}spec-error": error, f"{A}source-revision": revision,
                      f"{A}source-path": source_path}
            if cr is not None and any(ann.get(k) != v for k, v in wanted.items()):
                self.bucket.take()
                new = self._raw(
                    self.custom.patch_namespaced_custom_object,
                    GROUP, VERSION, self.ns, PLURAL, name,
                    {"metadata": {"annotations": wanted}},
                )
                self._wrote()
                self.batches.remember(new)
        else:
            base = found[0] if found is not None else (
                _legacy_record(cr) if cr is not None else None)
            digest = spec_digest(spec)
            changed = base is None or base.get("specHash") != digest
            record = {
                "incarnation": new_uid() if base is None else base.get("incarnation", ""),
                "generation": 1 if base is None else int(base["generation"]) + changed,
                "specHash": digest,
                "sourcePath": source_path,
                "sourceRevision": revision if base is None or changed
                else base["sourceRevision"],
                "submittedAt": committed_at if base is None else base["submittedAt"],
                "specError": error,
                "appliedSpecHash": "" if base is None else base.get("appliedSpecHash", ""),
                "updatedAt": time.time() if base is None or changed
                else base.get("updatedAt", 0.0),
            }
            if (cr is None or changed or self._drifted(cr, record)
                    or _annotations(record).items() - _cr_annotations(cr).items()):
                cr = self._put_batch(name, spec, record, cr)
            if found is None:  # new, or stored before records: those are kept from now on
                self._adopt_status(name, cr)
                self._let_go(name)
            self._save_record(name, record, spec)
            places = self._placeholders()
            if name in places:
                places.pop(name)
                self.set_meta("placeholders", json.dumps(places, sort_keys=True))
        batch = self.get_batch(name)
        assert batch is not None
        return batch

    def _apply_invalid(self, name: str, *, source_path: str, revision: str,
                       committed_at: float, error: str) -> None:
        """A Batch without a spec for a file that never parsed, so that `kubectl get
        batches` lists it and its status says why (Invalid); its first valid version is
        applied onto it. A placeholder kept by an earlier version is let go of."""
        self._act()
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Batch",
                "metadata": {"name": name,
                             "labels": {"app.kubernetes.io/managed-by": "batchq"},
                             "annotations": {f"{A}source-path": source_path,
                                             f"{A}source-revision": revision,
                                             f"{A}submitted-at": str(committed_at),
                                             f"{A}spec-error": error,
                                             f"{A}incarnation": new_uid(),
                                             f"{A}updated-at": str(time.time())}}}
        try:  # created, never applied: one the cache has not seen yet keeps its spec
            new = self._raw(self.custom.create_namespaced_custom_object,
                            GROUP, VERSION, self.ns, PLURAL, body, field_manager=MANAGER)
            self._wrote()
        except ApiException as exc:
            if exc.status != 409:
                raise
            new = self._raw(self.custom.get_namespaced_custom_object,
                            GROUP, VERSION, self.ns, PLURAL, name)
        self.batches.remember(new)
        places = self._placeholders()
        if name in places:
            places.pop(name)
            self.set_meta("placeholders", json.dumps(places, sort_keys=True))

    def _drifted(self, cr: Obj, record: dict[str, Any]) -> bool:
        """Was the Batch's spec changed since we applied it (by `kubectl edit`, say)?"""
        return spec_digest(cr.get("spec")) != record.get("appliedSpecHash")

    def _put_batch(self, name: str, spec: dict[str, Any], record: dict[str, Any],
                   cr: Obj | None) -> Obj:
        """Apply the Batch object from Git's spec (server-side apply, forced). The spec of
        an object that exists is first replaced whole: an apply leaves alone the fields
        another manager set (a hand `state: Held`, the inline items of an object written
        before `itemsFrom`). Sets the record's appliedSpecHash."""
        self._act()
        shown = object_spec(name, spec)
        if cr is not None:
            self._raw(self.custom.patch_namespaced_custom_object,
                      GROUP, VERSION, self.ns, PLURAL, name,
                      [{"op": "add", "path": "/spec", "value": shown}],  # a spec-less one too
                      _content_type="application/json-patch+json")
            self._wrote()
            self.bucket.take()  # the apply below is a second write
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Batch",
                "metadata": {"name": name,
                             "labels": {"app.kubernetes.io/managed-by": "batchq"},
                             "annotations": _annotations(record)},
                "spec": shown}
        new = self._raw(
            self.custom.patch_namespaced_custom_object,
            GROUP, VERSION, self.ns, PLURAL, name, body, field_manager=MANAGER,
            force=True, _content_type="application/apply-patch+yaml")
        self._wrote()
        self.batches.remember(new)
        record["appliedSpecHash"] = spec_digest(new.get("spec"))
        return new

    def _save_record(self, name: str, record: dict[str, Any], spec: dict[str, Any]) -> None:
        """Write `<batch>-spec` if it differs (records.py)."""
        cm_name = spec_record_name(name)
        data = {RECORD_KEY: json.dumps(record, sort_keys=True)}
        binary = {SPEC_KEY: encode_spec(spec)}
        cm = self.cms.get(cm_name)
        if cm is None:
            if self._create_cm(cm_name, "batch-spec", name, data, binary=binary):
                return
            cm = self._raw(self.core.read_namespaced_config_map, cm_name, self.ns)
        if (cm.get("data") or {}) == data and (cm.get("binaryData") or {}) == binary:
            return
        body = copy.deepcopy(cm)
        body["data"], body["binaryData"] = data, binary
        self._replace(self.cms, f"ConfigMap {cm_name}", self.core.replace_namespaced_config_map,
                      cm_name, self.ns, body)

    def _adopt_status(self, name: str, cr: Obj | None) -> None:
        """A Batch stored before its records: its status becomes the recorded one."""
        status_name = status_record_name(name)
        if cr is None or not cr.get("status") or self.cms.get(status_name) is not None:
            return
        doc = {"status": status_to_k8s(status_from_k8s(cr["status"])), "updatedAt": time.time()}
        self._put_cm_json(status_name, STATUS_KEY, doc, "batch-status", name)

    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None:
        cr = self.batches.get(name)
        if self._record(name) is None and cr is None:
            return  # a placeholder (file never parsed) has no object to hold a status
        if _normal(new) == _normal(old):
            return
        doc = self._cm_json(status_record_name(name), STATUS_KEY, None)
        current = status_from_k8s(doc["status"] if doc else None if self._record(name)
                                  else (cr or {}).get("status"))
        if _normal(current) != _normal(old):
            raise ConflictError(f"status of batch {name} changed under us")
        doc = {"status": status_to_k8s(new), "updatedAt": time.time()}
        self._put_cm_json(status_record_name(name), STATUS_KEY, doc, "batch-status", name)
        if not self._project_status(name) and cr is not None and not cr.get("spec"):
            self._status_on_invalid(name, new)

    def _status_on_invalid(self, name: str, new: BatchStatus) -> None:
        """A Batch for a file that never parsed has no records to project from: its status
        (Invalid, with the file:line:col message) is written on it directly, so that
        `kubectl get batches` says why."""
        self._act()
        cr = self._raw(self.custom.patch_namespaced_custom_object_status,
                       GROUP, VERSION, self.ns, PLURAL, name,
                       [{"op": "add", "path": "/status", "value": status_to_k8s(new)}],
                       _content_type="application/json-patch+json")
        self._wrote()
        self.batches.remember(cr)

    def _project_status(self, name: str) -> bool:
        """Put the recorded status on the Batch's status subresource if it shows another:
        one JSON patch of `/status` (the small summary; never the spec). True if written."""
        cr, found = self.batches.get(name), self._record(name)
        doc = self._cm_json(status_record_name(name), STATUS_KEY, None)
        if cr is None or found is None or doc is None:
            return False
        want = projected_status(doc["status"], int(doc["status"].get("observedGeneration", 0)),
                                int(found[0]["generation"]),
                                int(cr["metadata"].get("generation", 1)))
        if cr.get("status") == want:  # as values: the server may write 1000.0 as 1000
            return False
        self._act()
        new = self._raw(self.custom.patch_namespaced_custom_object_status,
                        GROUP, VERSION, self.ns, PLURAL, name,
                        [{"op": "add", "path": "/status", "value": want}],
                        _content_type="application/json-patch+json")
        self._wrote()
        self.batches.remember(new)
        return True

    def repair_drift(self) -> list[str]:
        """Put back what was done to the Batch objects by hand, from the records: a Batch
        deleted while its file is in Git is applied again, a spec edited is replaced, a
        status edited is overwritten; a Batch stored before its records is recorded.
        Returns the batches repaired (each also gets a `Repaired` event)."""
        for obj in self.batches.snapshot():
            name = obj["metadata"]["name"]
            if self._record(name) is None and obj.get("spec") and not obj["metadata"].get(
                    "deletionTimestamp") and not _items_elsewhere(obj):
                self._adopt_status(name, obj)  # created only: never over a record we missed
                self._let_go(name)
                self._create_cm(spec_record_name(name), "batch-spec", name,
                                {RECORD_KEY: json.dumps(_legacy_record(obj), sort_keys=True)},
                                binary={SPEC_KEY: encode_spec(obj["spec"])})
        self._release_deleted_jobs()
        repaired = []
        for name in sorted(set(self._recorded_names())):
            found = self._record(name)
            doc = self._cm_json(status_record_name(name), STATUS_KEY, None)
            if found is None or (doc or {}).get("status", {}).get("state") == BatchState.DELETED:
                continue  # a deleted batch is not brought back: it is on its way out
            record, spec = found
            cr = self.batches.get(name)
            if cr is not None and cr["metadata"].get("deletionTimestamp"):
                continue  # being deleted: applied again once it is gone
            what = ("object was deleted" if cr is None
                    else "spec was edited" if self._drifted(cr, record) else "")
            if what:
                self._put_batch(name, spec, record, cr)
                self._save_record(name, record, spec)
            if self._project_status(name) and not what:
                what = "status was edited"
            if what:
                log.warning("batch %s: the Batch %s by hand; put back", name, what)
                self.add_event(Event(name, time.time(), "Repaired",
                                     f"the Batch {what} by hand; put back as applied from"
                                     f" {record['sourcePath']} at"
                                     f" {str(record['sourceRevision'])[:12]}",
                                     str(record["sourceRevision"])))
                repaired.append(name)
        return repaired

    def _let_go(self, batch: str) -> None:
        """The ConfigMaps of a batch stored while they were owned by its Batch are let go
        of, so a hand delete of the Batch cannot take them."""
        for cm in self.cms.snapshot():
            meta = cm["metadata"]
            if (meta.get("labels") or {}).get(f"{A}batch") == batch and meta.get(
                    "ownerReferences"):
                self._act()
                new = self._raw(self.core.patch_namespaced_config_map, meta["name"], self.ns,
                                {"metadata": {"ownerReferences": None}})
                self._wrote()
                self.cms.remember(new)

    def remove_batch(self, name: str) -> None:
        places = self._placeholders()
        if name in places:
            places.pop(name)
            self.set_meta("placeholders", json.dumps(places, sort_keys=True))
        # let go of email not yet delivered (a report made before the records were unowned)
        for cm in self._report_cms(name):
            pending = (cm["metadata"].get("labels") or {}).get(f"{A}outbox") == "pending"
            if pending and cm["metadata"].get("ownerReferences"):
                self._act()
                new = self._raw(self.core.patch_namespaced_config_map, cm["metadata"]["name"],
                                self.ns, {"metadata": {"ownerReferences": None}})
                self._wrote()
                self.cms.remember(new)
        self.delete_jobs(name)
        self._act()
        if self.batches.get(name) is not None:
            with contextlib.suppress(ApiException):
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.ns, PLURAL, name, propagation_policy="Background")
                self._wrote()
            self.batches.forget(name)
        # the records, items, reports already sent and the timeline: owned by nothing, so
        # deleted here, at once (a new batch of the same name must not find them)
        kept = {label_value(cm["metadata"]["name"]) for cm in self._report_cms(name)
                if (cm["metadata"].get("labels") or {}).get(f"{A}outbox") == "pending"}
        for cm in self.cms.snapshot():
            lab = cm["metadata"].get("labels") or {}
            if lab.get(f"{A}batch") != name or lab.get(f"{A}outbox") == "pending" or (
                    lab.get(f"{A}report") in kept):
                continue  # not this batch's, or email still to go out (with its parts)
            self.bucket.take()
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_config_map(cm["metadata"]["name"], self.ns)
                self._wrote()
            self.cms.forget(cm["metadata"]["name"])
        self.bucket.take()
        self.core.delete_collection_namespaced_secret(  # not cached: deleted blindly
            self.ns, label_selector=f"{A}kind=credentials,{A}batch={name}")
        self._wrote()

    # --- items
    def _chunk_names(self, batch: str) -> list[str]:
        prefix = f"{batch}-items-"
        return sorted(
            cm["metadata"]["name"] for cm in self.cms.snapshot()
            if (cm["metadata"].get("labels") or {}).get(f"{A}batch") == batch
            and cm["metadata"]["name"].startswith(prefix)
        )

    def set_items(self, batch: str, items: list[Item]) -> None:
        """Chunks of at most CHUNK items and ITEMS_BYTES (configmaps.item_chunks), each
        with the seq of its first item; made again alike after a kill."""
        for index, (first, chunk) in enumerate(item_chunks(items)):
            name = chunk_name(batch, index)
            if self.cms.get(name) is None:
                self._create_cm(name, "items", batch,
                                {"items.json": json.dumps(new_item_records(chunk, first))},
                                annotations={f"{A}first-seq": str(first)})

    def _chunk_starts(self, batch: str) -> list[tuple[int, str]]:
        """(seq of its first item, name) of each items ConfigMap, in order; one stored
        before chunks were cut by size holds CHUNK items."""
        out = []
        for name in self._chunk_names(batch):
            cm = self.cms.get(name) or {"metadata": {}}
            first = (cm["metadata"].get("annotations") or {}).get(f"{A}first-seq")
            out.append((int(first) if first is not None
                        else int(name.rsplit("-", 1)[1]) * CHUNK, name))
        return sorted(out)

    def _records(self, batch: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, name in self._chunk_starts(batch):
            out += self._cm_json(name, "items.json", [])
        return out

    def _records_read(self, batch: str) -> Iterator[dict[str, Any]]:
        """The item records without a copy (`_cm_decoded`): what the controller's reads
        of every step go through, so that a step of a big batch copies nothing."""
        for _, name in self._chunk_starts(batch):
            yield from self._cm_decoded(name, "items.json") or ()

    def _filtered(self, batch: str, state: str | None, query: str | None) -> list[ItemStatus]:
        items = [item_status(r) for r in self._records(batch)]
        if state:
            items = [s for s in items if str(s.state) == state]
        if query:
            q = query.lower()
            items = [s for s in items if q in s.item.id.lower()
                     or q in (s.item.title or "").lower() or q in s.item.url.lower()]
        return items

    def list_items(self, batch: str, *, state: str | None = None, offset: int = 0,
                   limit: int | None = None, query: str | None = None) -> list[ItemStatus]:
        items = self._filtered(batch, state, query)
        return items[offset:] if limit is None else items[offset:offset + limit]

    def total_items(self, batch: str, *, state: str | None = None,
                    query: str | None = None) -> int:
        return len(self._filtered(batch, state, query))

    def count_items(self, batch: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._records_read(batch):
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def items_of(self, batch: str, ids: Collection[str]) -> list[ItemStatus]:
        wanted = set(ids)
        return [item_status(copy.deepcopy(r)) for r in self._records_read(batch)
                if r["item"]["id"] in wanted]

    def items_needing_jobs(self, batch: str, limit: int | None) -> list[ItemStatus]:
        """From the items ConfigMaps' cache and the Jobs' cache (both in memory)."""
        unfinished = (r for r in self._records_read(batch)
                      if r["state"] not in {str(s) for s in JOB_TERMINAL})
        return needing_jobs((item_status(copy.deepcopy(r)) for r in unfinished),
                            lambda name: self.jobs.get(name) is not None, limit)

    def update_items(self, batch: str, items: list[ItemStatus]) -> None:
        starts = self._chunk_starts(batch)
        firsts = [first for first, _ in starts]
        by_chunk: dict[int, list[ItemStatus]] = {}
        for s in items:
            by_chunk.setdefault(bisect.bisect_right(firsts, s.seq) - 1, []).append(s)
        for k, changed in by_chunk.items():
            first, name = starts[k]
            records = self._cm_json(name, "items.json", [])
            for s in changed:
                records[s.seq - first].update(
                    state=str(s.state), attempts=s.attempts, message=s.message,
                    jobName=s.job_name, startedAt=s.started_at, finishedAt=s.finished_at)
            self._put_cm_json(name, "items.json", records, "items", batch)
        for s in items:  # recorded: a finished Job may now go (its TTL, by hand)
            job = self.jobs.get(s.job_name) if s.job_name else None
            if job is not None and s.state in JOB_TERMINAL:
                self._release(job)

    def set_credentials(self, batch: str, credentials: dict[str, str]) -> None:
        """Secrets owned by nothing (a hand-deleted Batch must not take them from the Jobs
        re-created for it; `remove_batch` deletes them), which the reconciler may create and
        patch, never read back; a Job's pod mounts its item's key (see `create_job`)."""
        buckets: dict[str, dict[str, str]] = {}
        for item_id, userinfo in credentials.items():
            buckets.setdefault(credentials_secret(batch, item_id), {})[item_id] = userinfo
        for name, data in sorted(buckets.items()):
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name,
                                 "labels": {f"{A}kind": "credentials", f"{A}batch": batch}},
                    "stringData": data}
            self._act()
            try:
                self.core.create_namespaced_secret(self.ns, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.bucket.take()
                self.core.patch_namespaced_secret(name, self.ns, {"stringData": data})
            self._wrote()

    # --- jobs
    def create_job(self, spec: JobSpec) -> bool:
        if self.jobs.get(spec.name) is not None:
            return False
        return self._create(rawjson.jobs_path(self.ns),
                            job_manifest(spec, self._owner(spec.batch), self.storage),
                            self.jobs)

    def create_jobs(self, specs: Sequence[JobSpec]) -> JobsCreated:
        """`limits.concurrency` creates in flight at once, each fenced and limited by
        `_act`; the first failure stops the creates not yet started (as the Job
        controller's batches do), those in flight finish and count. A NotLeader among the
        failures is the one returned: the pass must end."""
        made = {s.name for s in specs if self.jobs.get(s.name) is not None}
        todo = [s for s in specs if s.name not in made]
        stop = threading.Event()
        errors: list[Exception] = []
        guard = threading.Lock()

        def create(spec: JobSpec) -> None:
            if stop.is_set():
                return
            try:
                failpoints.hit("before-job-create")
                self.create_job(spec)
            except Exception as exc:
                stop.set()
                with guard:
                    errors.append(exc)
                return
            with guard:
                made.add(spec.name)

        workers = min(self.limits.concurrency, len(todo))
        if workers <= 1:
            for spec in todo:
                create(spec)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="batchq-create") as pool:
                list(pool.map(create, todo))
        error = next((e for e in errors if isinstance(e, NotLeader)),
                     errors[0] if errors else None)
        return JobsCreated(frozenset(made), error)

    def _job(self, obj: Obj) -> Job:
        return job_from_k8s(obj, self._failure_message)

    def _failure_message(self, name: str, cond: dict[str, Any]) -> str:
        """The worker's one-line reason, from its pod's termination message (read once)."""
        if name not in self._failure_messages:
            message = ""
            pods = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={name}")
            for pod in pods.items:
                for cs in (pod.status.container_statuses or []) if pod.status else []:
                    term = cs.state.terminated if cs.state else None
                    if term is not None and term.message:
                        message = redact_text(term.message.strip().splitlines()[-1])[:1024]
            self._failure_messages[name] = message or str(
                cond.get("message") or cond.get("reason") or "failed")
        return self._failure_messages[name]

    def list_jobs(self, batch: str | None = None) -> list[Job]:
        jobs = [
            self._job(o) for o in self.jobs.snapshot()
            if batch is None or (o["metadata"].get("labels") or {}).get(f"{A}batch") == batch
        ]
        return sorted(jobs, key=lambda j: j.name)

    def changed_jobs(self, batch: str) -> JobChanges:
        """The batch's Jobs in the watch cache whose resourceVersion is not the one last
        observed (a re-list after 410 Gone changes none of those that did not change)."""
        seen = self._observed.get(batch, {})
        mine = [o for o in self.jobs.snapshot()
                if (o["metadata"].get("labels") or {}).get(f"{A}batch") == batch
                and seen.get(o["metadata"]["name"]) != o["metadata"].get("resourceVersion")]
        jobs = sorted((self._job(o) for o in mine), key=lambda j: j.name)
        return JobChanges(jobs, {o["metadata"]["name"]: o["metadata"].get("resourceVersion")
                                 for o in mine})

    def observed(self, batch: str, changes: JobChanges) -> None:
        self._observed.setdefault(batch, {}).update(changes.mark)

    def observed_made_jobs(self, batch: str) -> None:
        """Nothing: a Job made is observed from its watch event (its resourceVersion is the
        mark), by the step that event brings."""

    def count_active_jobs(self) -> int:
        return sum(1 for j in self.list_jobs()
                   if j.state in (JobState.PENDING, JobState.PROCESSING) and not j.suspended)

    def delete_jobs(self, batch: str) -> None:
        mine = [o for o in self.jobs.snapshot()
                if (o["metadata"].get("labels") or {}).get(f"{A}batch") == batch]
        if not mine:
            return
        self._act()
        self.batch_api.delete_collection_namespaced_job(
            self.ns, label_selector=f"{A}batch={batch}", propagation_policy="Background")
        self._wrote()
        for o in mine:  # the batch goes: nothing waits for their results (those not yet
            self._release(o)  # released are the unfinished ones, at most maxActiveJobs)
            self.jobs.forget(o["metadata"]["name"])
        self._observed.pop(batch, None)

    def _release(self, obj: Obj) -> None:
        """Take the result finalizer off a Job (jobs.py), if it has it."""
        meta = obj["metadata"]
        held = meta.get("finalizers") or []
        if RESULT_FINALIZER not in held:
            return
        try:
            self._act()
            new = self._raw(self.batch_api.patch_namespaced_job, meta["name"], self.ns,
                            [{"op": "test", "path": "/metadata/finalizers", "value": held},
                             {"op": "replace", "path": "/metadata/finalizers",
                              "value": [f for f in held if f != RESULT_FINALIZER]}],
                            _content_type="application/json-patch+json")
        except ApiException as exc:
            if exc.status in (404, 422):  # gone, or its finalizers changed: seen again later
                return
            raise
        self._wrote()
        self.jobs.remember(new)

    def _release_deleted_jobs(self) -> None:
        """A Job being deleted (TTL, by hand, its Batch deleted) goes once its result is
        recorded, or at once if it never finished; a finished one whose result is not yet
        recorded waits for the controller to record it (update_items releases it)."""
        recorded: dict[str, dict[str, str]] = {}
        for obj in self.jobs.snapshot():
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp") or RESULT_FINALIZER not in (
                    meta.get("finalizers") or []):
                continue
            job = job_from_k8s(obj, lambda _name, _cond: "")
            batch = job.batch
            if job.state in JOB_TERMINAL and (self._record(batch) or self.batches.get(batch)):
                if batch not in recorded:
                    recorded[batch] = {r["jobName"]: r["state"] for r in self._records(batch)
                                       if r.get("jobName")}
                if recorded[batch].get(job.name) not in {str(s) for s in JOB_TERMINAL}:
                    continue
            self._release(obj)

    def set_suspended(self, batch: str, suspended: bool) -> None:
        """Suspend Jobs that have not started (suspending a running Job would kill it)."""
        for o in self.jobs.snapshot():
            if (o["metadata"].get("labels") or {}).get(f"{A}batch") != batch:
                continue
            spec, st = o.get("spec") or {}, o.get("status") or {}
            is_suspended = bool(spec.get("suspend"))
            if suspended and (is_suspended or st.get("startTime")):
                continue
            if not suspended and not is_suspended:
                continue
            self._act()
            new = self._raw(self.batch_api.patch_namespaced_job, o["metadata"]["name"],
                            self.ns, {"spec": {"suspend": suspended}})
            self._wrote()
            self.jobs.remember(new)

    # --- reports and outbox
    def save_report(self, report: Report) -> bool:
        """Its parts first, then the report's own ConfigMap, whose presence means saved
        (configmaps.py); a part left by a kill before that is rewritten with this report."""
        name = report_cm_name(report.id)
        if self.cms.get(name) is not None:
            return False
        parts = report_parts(report)
        incarnation = {f"{A}incarnation": report_incarnation(report.id)}
        for k, part in enumerate(parts[1:], 1):
            binary = {REPORT_KEY: base64.b64encode(part).decode()}
            part_name = report_part_name(name, k)
            if self._create_cm(part_name, "report-part", report.batch, {},
                               labels={**incarnation, f"{A}report": label_value(name)},
                               binary=binary):
                continue
            old = self.cms.get(part_name) or self._raw(
                self.core.read_namespaced_config_map, part_name, self.ns)
            if (old.get("binaryData") or {}) != binary:
                self._act()
                new = self._raw(self.core.patch_namespaced_config_map, part_name, self.ns,
                                {"binaryData": binary})
                self._wrote()
                self.cms.remember(new)
        return self._create_cm(
            name, "report", report.batch, {},
            labels={f"{A}outbox": "pending" if report.emailed else "none", **incarnation},
            annotations={f"{A}attempts": "0", f"{A}next-attempt-at": "0",
                         f"{A}parts": str(len(parts))},
            binary={REPORT_KEY: base64.b64encode(parts[0]).decode()},
        )

    def _report_cms(self, batch: str | None = None) -> list[Obj]:
        return [cm for cm in self.cms.snapshot()
                if (cm["metadata"].get("labels") or {}).get(f"{A}kind") == "report"
                and (batch is None
                     or (cm["metadata"].get("labels") or {}).get(f"{A}batch") == batch)]

    def _report(self, cm: Obj) -> Report:
        """The report a report ConfigMap holds, with its parts; decoded once (a report's
        content never changes once saved, only its delivery annotations do)."""
        meta = cm["metadata"]
        key = f"{meta['name']}/{meta.get('uid', '')}/report"
        memo = self._decoded.get(key)
        if memo is None:
            data, binary = cm.get("data") or {}, cm.get("binaryData") or {}
            if "report.json" in data:  # stored before parts
                report = report_from_json(data["report.json"], base64.b64decode(
                    binary.get("message.eml", "")))
            else:
                parts = [base64.b64decode(binary[REPORT_KEY])]
                for k in range(1, int((meta.get("annotations") or {}).get(f"{A}parts", "1"))):
                    part_name = report_part_name(meta["name"], k)
                    part = self.cms.get(part_name) or self._raw(
                        self.core.read_namespaced_config_map, part_name, self.ns)
                    parts.append(base64.b64decode(part["binaryData"][REPORT_KEY]))
                report = report_from_parts(parts)
            memo = ("", report)
            self._decoded[key] = memo
        return copy.copy(memo[1])

    def list_reports(self, batch: str) -> list[Report]:
        """The reports of the batch now holding the name (not of an earlier one)."""
        current = self.get_batch(batch)
        incarnation = current.uid if current is not None else ""
        out = []
        for cm in self._report_cms(batch):
            if (cm["metadata"].get("labels") or {}).get(f"{A}incarnation", "") != incarnation:
                continue
            out.append(self._report(cm))
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def delivered(self, report_id: str) -> bool:
        cm = self.cms.get(report_cm_name(report_id))
        return cm is not None and delivery_accepted(cm["metadata"])

    def recipient_states(self, report_id: str) -> list[RecipientState]:
        cm = self.cms.get(report_cm_name(report_id))
        return [] if cm is None else list(recipients_from_cm(cm))

    def pending_outbox(self, now: float) -> list[OutboxEntry]:
        out = []
        for cm in self._report_cms():
            meta = cm["metadata"]
            ann = meta.get("annotations") or {}
            if meta["labels"].get(f"{A}outbox") != "pending":
                continue
            if float(ann.get(f"{A}next-attempt-at", "0")) > now:
                continue
            report = self._report(cm)
            out.append(OutboxEntry(
                report.id, report.batch, report.message,
                int(ann.get(f"{A}attempts", "0")), ann.get(f"{A}last-error", ""),
                recipients_from_cm(cm), float(report.created_at or 0.0)))
        return out

    def _patch_report(self, report_id: str, labels: dict[str, str],
                      annotations: dict[str, str]) -> None:
        """Record a delivery attempt, trying again through an API outage (1 s, doubling up
        to 30 s, for RECORD_PATIENCE): the email went out, and a record that is lost
        would send it again."""
        delay, deadline = 1.0, time.monotonic() + RECORD_PATIENCE
        while True:
            self.bucket.take()  # not fenced (the module docstring), but limited like all
            try:
                new = self._raw(self.core.patch_namespaced_config_map,
                                report_cm_name(report_id), self.ns,
                                {"metadata": {"labels": labels, "annotations": annotations}})
                break
            except Exception as exc:
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("recording the delivery of %s failed (retrying in %g s): %s",
                            report_id, delay, describe(exc))
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._wrote()
        self.cms.remember(new)

    def outbox_stats(self) -> dict[str, int]:
        out = {"delivered": 0, "failed": 0, "waiting": 0}
        for cm in self._report_cms():
            meta = cm["metadata"]
            box = (meta.get("labels") or {}).get(f"{A}outbox")
            if box in (None, "none"):
                continue
            attempts = int((meta.get("annotations") or {}).get(f"{A}attempts", "0"))
            accepted = delivery_accepted(meta)
            out["delivered"] += accepted
            out["failed"] += max(0, attempts - accepted)
            out["waiting"] += box == "pending"
        return out

    def record_delivery(self, report_id: str, recipients: Sequence[RecipientState], *,
                        error: str, retry_at: float | None) -> None:
        """One merge patch of the report ConfigMap: the outbox label says pending,
        delivered (closed, accepted for someone) or undeliverable (closed, for no one)."""
        cm = self.cms.get(report_cm_name(report_id)) or {"metadata": {}}
        ann = cm["metadata"].get("annotations") or {}
        now = time.time()
        accepted = any(r.state == Delivery.DELIVERED for r in recipients)
        annotations = {
            f"{A}attempts": str(int(ann.get(f"{A}attempts", "0")) + 1),
            f"{A}last-error": error[:1024],
            f"{A}recipients": json.dumps([{**r.to_dict(), "detail": r.detail[:512]}
                                          for r in recipients], sort_keys=True),
        }
        if retry_at is not None:
            annotations[f"{A}next-attempt-at"] = str(retry_at)
        if accepted and f"{A}delivered-at" not in ann:
            annotations[f"{A}delivered-at"] = str(now)
        box = ("pending" if retry_at is not None
               else "delivered" if accepted or f"{A}delivered-at" in ann else "undeliverable")
        self._patch_report(report_id, {f"{A}outbox": box}, annotations)
        batch = (cm["metadata"].get("labels") or {}).get(f"{A}batch")
        for reason, note in delivery_events(report_id, recipients, error, retry_at,
                                            first_acceptance=f"{A}delivered-at" not in ann):
            self._announce(batch or "", reason, note)

    # --- timeline
    def add_event(self, event: Event) -> None:
        name = timeline_name(event.batch)
        events = self._cm_json(name, "events.json", [])
        events.append([event.at, event.reason, event.message[:2048], event.revision])
        self._put_cm_json(name, "events.json", bounded_timeline(events), "timeline",
                          event.batch)
        self._announce(event.batch, event.reason, event.message)

    def _announce(self, batch: str, reason: str, note: str) -> None:
        """The Kubernetes Event for a timeline entry or a delivery (none without a Batch)."""
        cr = self.batches.get(batch)
        if cr is not None:
            self.recorder.record(cr, reason, note)

    def job_output(self, job: str, limit: int = 16384) -> str | None:
        """The log tail of the Job's newest pod (the worker writes to stderr and stdout,
        which the kubelet keeps together); only for a name that is one of its Jobs."""
        if all(j.name != job for j in self.list_jobs()):
            return None
        try:
            pods = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={job}").items
            if not pods:
                return None
            newest = max(pods, key=lambda p: p.metadata.creation_timestamp or 0)
            log = self.core.read_namespaced_pod_log(newest.metadata.name, self.ns,
                                                    limit_bytes=limit, tail_lines=200)
        except ApiException as exc:
            return None if exc.status == 404 else f"(the log cannot be read: {exc.reason})"
        return f"--- pod {newest.metadata.name}\n{log}" if log else None

    def list_events(self, batch: str) -> list[Event]:
        return [Event(batch, at, reason, message, rev)
                for at, reason, message, rev in self._cm_json(timeline_name(batch),
                                                              "events.json", [])]

