"""The `kubernetes` backend: Batch custom resources, batch/v1 Jobs, ConfigMaps (DESIGN §8).

- A Batch's spec is server-side applied by the Git sync (field manager `batchq-sync`);
  `metadata.generation` is the API server's. Its status is written only through the
  status subresource, with the resourceVersion we read (a conflict raises ConflictError
  and the batch is simply reconciled again on the next pass).
- Status stays small: counts, a bounded list of failures, the report round. Per-item
  detail lives in ConfigMaps `<batch>-items-NNNN` (500 items each), reports in
  `<batch>-report-<round>-<incarnation>` (the outbox is their `batchq.dev/outbox` label),
  the timeline in `<batch>-timeline`; all are owned by the Batch, so deleting it removes
  them, except a report still waiting to be emailed, which is let go of and goes out.
  Their names and contents are pure functions in configmaps.py.
- A Batch's incarnation (`batchq.dev/incarnation`, set when it is created) tells a name
  reused after a deletion from the batch that had it before: their reports never meet.
- One Job per item attempt, owned by the Batch, labelled batch/item/attempt; a Job that
  finished and vanished is never re-run because the item ConfigMap recorded it. The Job
  body and the reading of its state are pure functions in jobs.py; the status codec is in
  status.py.
- Item credentials (userinfo of a payload URL) live in Secrets `<batch>-credentials-XX`
  owned by the Batch, never in the item ConfigMaps or the Job; a Job's pod mounts only its
  own item's key, read-only, as the file BATCHQ_CREDENTIALS_FILE names.
- Reads come from watch caches (informer.py); a write that would change nothing is not
  sent, so a pass with no change makes no API write.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import threading
import time
from collections.abc import Sequence
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
from reconciler.domain.states import JobState
from reconciler.store.base import (
    ConflictError,
    Delivery,
    Event,
    JobSpec,
    OutboxEntry,
    Page,
    RecipientState,
    SyncState,
    new_uid,
)
from reconciler.store.codec import canonical_json, sync_state_from_meta, sync_state_writes
from reconciler.store.kubernetes.configmaps import (
    CHUNK,
    TIMELINE_MAX,
    chunk_name,
    delivery_accepted,
    item_status,
    new_item_records,
    recipients_from_cm,
    report_cm_name,
    report_from_json,
    report_incarnation,
    report_json,
    timeline_name,
)
from reconciler.store.kubernetes.informer import Informer, Obj
from reconciler.store.kubernetes.jobs import job_from_k8s, job_manifest
from reconciler.store.kubernetes.names import GROUP, PLURAL, VERSION, A, credentials_secret
from reconciler.store.kubernetes.status import status_from_k8s, status_to_k8s
from reconciler.support.redaction import redact_text
from reconciler.support.timefmt import parse_rfc3339_or_none

MANAGER = "batchq-sync"
META = "batchq-meta"


def _normal(status: BatchStatus) -> str:
    """Compare statuses as they would round-trip through the API server."""
    return canonical_json(status_to_k8s(status))


class KubernetesStore:
    """The store on a cluster; see the module docstring."""

    def __init__(self, api: client.ApiClient, namespace: str, watch_timeout: int = 300) -> None:
        self.api = api
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.batch_api = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.writes = 0
        self.wake = threading.Event()
        self._lock = threading.RLock()
        self._decoded: dict[str, tuple[str, Any]] = {}
        self._failure_messages: dict[str, str] = {}
        wake = self.wake.set
        self.batches = Informer("batches", self._list_batches, wake, watch_timeout)
        self.jobs = Informer("jobs", self.batch_api.list_namespaced_job, wake, watch_timeout,
                             namespace=namespace, label_selector=f"{A}batch")
        self.cms = Informer("configmaps", self.core.list_namespaced_config_map, wake,
                            watch_timeout, namespace=namespace, label_selector=f"{A}kind")

    @classmethod
    def connect(cls, namespace: str, kubeconfig: str | None = None,
                watch_timeout: int = 300) -> KubernetesStore:
        if kubeconfig:
            api = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            api = client.ApiClient()
        store = cls(api, namespace, watch_timeout)
        store.start()
        return store

    def start(self) -> None:
        for inf in (self.batches, self.jobs, self.cms):
            inf.start()

    def close(self) -> None:
        for inf in (self.batches, self.jobs, self.cms):
            inf.stop()
        self.api.close()

    def _list_batches(self, **kwargs: Any) -> Any:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL,
                                                         **kwargs)

    @staticmethod
    def _raw(fn: Any, *args: Any, **kwargs: Any) -> Obj:
        """Call the API and decode the JSON body ourselves (the generated client returns
        None for some content types, e.g. server-side apply)."""
        resp = fn(*args, _preload_content=False, **kwargs)
        return dict(json.loads(resp.data))

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """Guarantees nothing (see `Store.transaction`): the API server has no
        multi-object transactions, each write stands alone, and the controller's steps are
        ordered so that any prefix of them is safe."""
        return contextlib.nullcontext()

    def _wrote(self) -> None:
        self.writes += 1

    # --- ConfigMap helpers
    def _cm_json(self, name: str, key: str, default: Any) -> Any:
        cm = self.cms.get(name)
        if cm is None:
            return copy.deepcopy(default)
        rv = cm["metadata"].get("resourceVersion", "")
        memo = self._decoded.get(f"{name}/{key}")
        if memo is None or memo[0] != rv:
            memo = (rv, json.loads((cm.get("data") or {}).get(key, "null") or "null"))
            self._decoded[f"{name}/{key}"] = memo
        value = memo[1]
        return copy.deepcopy(value if value is not None else default)

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
        if batch is not None:
            meta["labels"][f"{A}batch"] = batch
            meta["ownerReferences"] = self._owner(batch)
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                                "data": data}
        if binary:
            body["binaryData"] = binary
        return self._create(self.core.create_namespaced_config_map, body, self.cms)

    def _create(self, create: Any, body: Obj, cache: Informer) -> bool:
        """Create an object; False if it exists already (creating twice is a no-op)."""
        try:
            created = self._raw(create, self.ns, body)
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
        meta = cr["metadata"]
        ann = meta.get("annotations") or {}
        return Batch(
            name=meta["name"],
            spec=BatchSpec.from_dict(cr["spec"]),
            generation=int(meta.get("generation", 1)),
            source_path=ann.get(f"{A}source-path", ""),
            source_revision=ann.get(f"{A}source-revision", ""),
            submitted_at=float(ann.get(f"{A}submitted-at", "0")),
            status=status_from_k8s(cr.get("status")),
            spec_error=ann.get(f"{A}spec-error", ""),
            updated_at=float(ann.get(f"{A}updated-at", "0") or 0)
            or (parse_rfc3339_or_none(meta.get("creationTimestamp")) or 0.0),
            uid=ann.get(f"{A}incarnation", ""),
        )

    def _placeholder_batch(self, name: str, p: dict[str, Any]) -> Batch:
        return Batch(name=name, spec=None, generation=1, source_path=p["source_path"],
                     source_revision=p["revision"], submitted_at=p["committed_at"],
                     spec_error=p["error"], updated_at=p["committed_at"])

    def list_batches(self) -> list[Batch]:
        out = [self._batch(cr) for cr in self.batches.snapshot()]
        out += [self._placeholder_batch(n, p) for n, p in self._placeholders().items()]
        return sorted(out, key=lambda b: b.name)

    def page_batches(self, *, state: str | None = None, offset: int = 0,
                     limit: int = 50) -> Page:
        rows = [b for b in self.list_batches() if not state or str(b.status.state) == state]
        rows.sort(key=lambda b: (-b.updated_at, b.name))
        return Page(total=len(rows), rows=rows[offset:offset + limit])

    def count_batches(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.list_batches():
            out[str(b.status.state)] = out.get(str(b.status.state), 0) + 1
        return out

    def get_batch(self, name: str) -> Batch | None:
        cr = self.batches.get(name)
        if cr is not None:
            return self._batch(cr)
        p = self._placeholders().get(name)
        return self._placeholder_batch(name, p) if p else None

    def apply_spec(self, name: str, spec: dict[str, Any] | None, *, source_path: str,
                   revision: str, committed_at: float, error: str) -> Batch:
        cr = self.batches.get(name)
        error = error[:32768]
        if spec is None and cr is None:
            places = self._placeholders()
            entry = {"source_path": source_path, "revision": revision,
                     "committed_at": committed_at, "error": error}
            if places.get(name) != entry:
                places[name] = entry
                self.set_meta("placeholders", json.dumps(places, sort_keys=True))
            batch = self.get_batch(name)
            assert batch is not None
            return batch
        ann = (cr or {}).get("metadata", {}).get("annotations") or {}
        if spec is None:
            wanted = {f"{A}spec-error": error, f"{A}source-revision": revision,
                      f"{A}source-path": source_path}
            if any(ann.get(k) != v for k, v in wanted.items()):
                new = self._raw(
                    self.custom.patch_namespaced_custom_object,
                    GROUP, VERSION, self.ns, PLURAL, name,
                    {"metadata": {"annotations": {**wanted, f"{A}updated-at": str(time.time())}}},
                )
                self._wrote()
                self.batches.remember(new)
        else:
            digest = hashlib.sha256(canonical_json(spec).encode()).hexdigest()
            changed = ann.get(f"{A}spec-hash") != digest
            annotations = {
                f"{A}source-path": source_path,
                f"{A}source-revision": revision if changed or cr is None
                else ann.get(f"{A}source-revision", revision),
                f"{A}submitted-at": ann.get(f"{A}submitted-at", str(committed_at)),
                f"{A}spec-error": error,
                f"{A}spec-hash": digest,
            }
            # made once, at creation, and applied again each time (an applied field left
            # out is removed); a Batch created before incarnations keeps having none
            incarnation = new_uid() if cr is None else ann.get(f"{A}incarnation")
            if incarnation:
                annotations[f"{A}incarnation"] = incarnation
            if changed or any(ann.get(k) != v for k, v in annotations.items()):
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Batch",
                        "metadata": {"name": name,
                                     "labels": {"app.kubernetes.io/managed-by": "batchq"},
                                     "annotations": {**annotations,
                                                     f"{A}updated-at": str(time.time())}},
                        "spec": spec}
                new = self._raw(
                    self.custom.patch_namespaced_custom_object,
                    GROUP, VERSION, self.ns, PLURAL, name, body, field_manager=MANAGER,
                    force=True, _content_type="application/apply-patch+yaml")
                self._wrote()
                self.batches.remember(new)
            places = self._placeholders()
            if name in places:
                places.pop(name)
                self.set_meta("placeholders", json.dumps(places, sort_keys=True))
        batch = self.get_batch(name)
        assert batch is not None
        return batch

    def update_status(self, name: str, old: BatchStatus, new: BatchStatus) -> None:
        cr = self.batches.get(name)
        if cr is None:
            return  # a placeholder (file never parsed) has no object to hold a status
        if _normal(new) == _normal(old):
            return
        if _normal(status_from_k8s(cr.get("status"))) != _normal(old):
            raise ConflictError(f"status of batch {name} changed under us")
        body = copy.deepcopy(cr)
        body["status"] = status_to_k8s(new)
        body["metadata"].setdefault("annotations", {})[f"{A}updated-at"] = str(time.time())
        self._replace(self.batches, f"status of batch {name}",
                      self.custom.replace_namespaced_custom_object_status,
                      GROUP, VERSION, self.ns, PLURAL, name, body)

    def remove_batch(self, name: str) -> None:
        places = self._placeholders()
        if name in places:
            places.pop(name)
            self.set_meta("placeholders", json.dumps(places, sort_keys=True))
        if self.batches.get(name) is None:
            return
        # let go of email not yet delivered, so the garbage collector keeps it and it goes out
        for cm in self._report_cms(name):
            pending = (cm["metadata"].get("labels") or {}).get(f"{A}outbox") == "pending"
            if pending and cm["metadata"].get("ownerReferences"):
                new = self._raw(self.core.patch_namespaced_config_map, cm["metadata"]["name"],
                                self.ns, {"metadata": {"ownerReferences": None}})
                self._wrote()
                self.cms.remember(new)
        self.delete_jobs(name)
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, name, propagation_policy="Background")
            self._wrote()
        self.batches.forget(name)
        # the rest at once, not whenever the garbage collector gets to it: a new batch of
        # the same name must not find the old items or timeline under the names it uses
        selector = f"{A}batch={name},{A}outbox!=pending"
        doomed = [cm["metadata"]["name"] for cm in self.cms.snapshot()
                  if (cm["metadata"].get("labels") or {}).get(f"{A}batch") == name
                  and (cm["metadata"].get("labels") or {}).get(f"{A}outbox") != "pending"]
        if doomed:
            self.core.delete_collection_namespaced_config_map(self.ns, label_selector=selector)
            self._wrote()
            for cm_name in doomed:
                self.cms.forget(cm_name)

    # --- items
    def _chunk_names(self, batch: str) -> list[str]:
        prefix = f"{batch}-items-"
        return sorted(
            cm["metadata"]["name"] for cm in self.cms.snapshot()
            if (cm["metadata"].get("labels") or {}).get(f"{A}batch") == batch
            and cm["metadata"]["name"].startswith(prefix)
        )

    def set_items(self, batch: str, items: list[Item]) -> None:
        for k in range(0, len(items), CHUNK):
            records = new_item_records(items[k:k + CHUNK], k)
            name = chunk_name(batch, k // CHUNK)
            if self.cms.get(name) is None:
                self._create_cm(name, "items", batch, {"items.json": json.dumps(records)})

    def _records(self, batch: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self._chunk_names(batch):
            out += self._cm_json(name, "items.json", [])
        return out

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
        for r in self._records(batch):
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def update_items(self, batch: str, items: list[ItemStatus]) -> None:
        by_chunk: dict[int, list[ItemStatus]] = {}
        for s in items:
            by_chunk.setdefault(s.seq // CHUNK, []).append(s)
        for k, changed in by_chunk.items():
            name = chunk_name(batch, k)
            records = self._cm_json(name, "items.json", [])
            for s in changed:
                records[s.seq - k * CHUNK].update(
                    state=str(s.state), attempts=s.attempts, message=s.message,
                    jobName=s.job_name, startedAt=s.started_at, finishedAt=s.finished_at)
            self._put_cm_json(name, "items.json", records, "items", batch)

    def set_credentials(self, batch: str, credentials: dict[str, str]) -> None:
        """Secrets owned by the Batch (the reconciler may create and patch them, never read
        them back); a Job's pod mounts its item's key (see `create_job`)."""
        buckets: dict[str, dict[str, str]] = {}
        for item_id, userinfo in credentials.items():
            buckets.setdefault(credentials_secret(batch, item_id), {})[item_id] = userinfo
        for name, data in sorted(buckets.items()):
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name,
                                 "labels": {f"{A}kind": "credentials", f"{A}batch": batch},
                                 "ownerReferences": self._owner(batch)},
                    "stringData": data}
            try:
                self.core.create_namespaced_secret(self.ns, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.core.patch_namespaced_secret(name, self.ns, {"stringData": data})
            self._wrote()

    # --- jobs
    def create_job(self, spec: JobSpec) -> bool:
        if self.jobs.get(spec.name) is not None:
            return False
        return self._create(self.batch_api.create_namespaced_job,
                            job_manifest(spec, self._owner(spec.batch)), self.jobs)

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

    def count_active_jobs(self) -> int:
        return sum(1 for j in self.list_jobs()
                   if j.state in (JobState.PENDING, JobState.PROCESSING) and not j.suspended)

    def delete_jobs(self, batch: str) -> None:
        mine = [o for o in self.jobs.snapshot()
                if (o["metadata"].get("labels") or {}).get(f"{A}batch") == batch]
        if not mine:
            return
        self.batch_api.delete_collection_namespaced_job(
            self.ns, label_selector=f"{A}batch={batch}", propagation_policy="Background")
        self._wrote()
        for o in mine:
            self.jobs.forget(o["metadata"]["name"])

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
            new = self._raw(self.batch_api.patch_namespaced_job, o["metadata"]["name"],
                            self.ns, {"spec": {"suspend": suspended}})
            self._wrote()
            self.jobs.remember(new)

    # --- reports and outbox
    def save_report(self, report: Report) -> bool:
        return self._create_cm(
            report_cm_name(report.id), "report", report.batch,
            {"report.json": report_json(report)},
            labels={f"{A}outbox": "pending" if report.emailed else "none",
                    f"{A}incarnation": report_incarnation(report.id)},
            annotations={f"{A}attempts": "0", f"{A}next-attempt-at": "0"},
            binary={"message.eml": base64.b64encode(report.message).decode()},
        )

    def _report_cms(self, batch: str | None = None) -> list[Obj]:
        return [cm for cm in self.cms.snapshot()
                if (cm["metadata"].get("labels") or {}).get(f"{A}kind") == "report"
                and (batch is None
                     or (cm["metadata"].get("labels") or {}).get(f"{A}batch") == batch)]

    def list_reports(self, batch: str) -> list[Report]:
        """The reports of the batch now holding the name (not of an earlier one)."""
        current = self.get_batch(batch)
        incarnation = current.uid if current is not None else ""
        out = []
        for cm in self._report_cms(batch):
            if (cm["metadata"].get("labels") or {}).get(f"{A}incarnation", "") != incarnation:
                continue
            out.append(report_from_json(
                cm["data"]["report.json"],
                base64.b64decode((cm.get("binaryData") or {}).get("message.eml", ""))))
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
            d = json.loads(cm["data"]["report.json"])
            out.append(OutboxEntry(
                d["id"], d["batch"], base64.b64decode(cm["binaryData"]["message.eml"]),
                int(ann.get(f"{A}attempts", "0")), ann.get(f"{A}last-error", ""),
                recipients_from_cm(cm), float(d.get("createdAt") or 0.0)))
        return out

    def _patch_report(self, report_id: str, labels: dict[str, str],
                      annotations: dict[str, str]) -> None:
        new = self._raw(self.core.patch_namespaced_config_map, report_cm_name(report_id),
                        self.ns, {"metadata": {"labels": labels, "annotations": annotations}})
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

    # --- timeline
    def add_event(self, event: Event) -> None:
        name = timeline_name(event.batch)
        events = self._cm_json(name, "events.json", [])
        events.append([event.at, event.reason, event.message[:2048], event.revision])
        self._put_cm_json(name, "events.json", events[-TIMELINE_MAX:], "timeline", event.batch)

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

