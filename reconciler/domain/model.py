"""The domain model: what a Batch, Item, Job, Report, Profile and Queue are.

Specs (desired state) come from Git files and are validated against `schemas/` before they
reach these classes, so constructors trust their input's shape. Observed state lives in the
store; these dataclasses are the values that cross the store interface, so both backends
speak the same language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain.objects import (
    Container,
    ObjectFile,
    name_from_url,
    name_problem,
    object_json,
)
from reconciler.domain.states import BatchState, JobState, RequestedState
from reconciler.support.urls import url_allowed

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_PRIORITY = 5
# the worker image when a profile names none: deploy/Dockerfile's, tagged with the version
# in pyproject.toml (a test holds them together), never `latest`
DEFAULT_IMAGE = "batchq:0.1.0"
# The digests a manifest may give (hashlib's names, so the worker computes each one with
# `hashlib.new`), and how many lowercase hex digits each one has. Merritt's list (mrt-core2
# MessageDigestType) is adler32, crc32, md2, md5, sha1, sha256, sha384, sha512; the ones
# hashlib cannot compute are refused by name (`UNVERIFIABLE_DIGESTS`).
DIGEST_HEX_DIGITS = {
    "md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128,
    "sha3_224": 56, "sha3_256": 64, "sha3_384": 96, "sha3_512": 128,
}
UNVERIFIABLE_DIGESTS = ("adler32", "crc32", "md2")
_HEX = re.compile(r"[0-9a-f]+")


def is_hex_digest(algorithm: str, value: str) -> bool:
    """Is `value` a lowercase hex digest of the length `algorithm` gives?"""
    digits = DIGEST_HEX_DIGITS.get(algorithm)
    return digits is not None and len(value) == digits and _HEX.fullmatch(value) is not None


@dataclass(frozen=True)
class Digest:
    algorithm: str  # a key of DIGEST_HEX_DIGITS
    value: str


@dataclass(frozen=True)
class Item:
    """One manifest entry: one object to ingest (DESIGN §10, issue 8 §2).

    An object is one of: a single file (`url`, `digest`, `size`: today's shape, its name
    the checkm `nfo:fileName` or the URL's last segment), several `files`, or a
    `container` (zip or tar) whose members are its files. `url` is always the object's
    source as reports show it: the file's URL, the container's, the object manifest's
    (Merritt's mrt-batch-manifest), or for inline `files` the first file's.
    """

    id: str
    url: str
    digest: Digest | None = None
    size: int | None = None
    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    files: tuple[ObjectFile, ...] = ()
    container: Container | None = None
    primary_id: str | None = None
    local_ids: tuple[str, ...] = ()
    creator: str | None = None
    date: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        digest = data.get("digest")
        files = tuple(ObjectFile.from_dict(f) for f in data.get("files") or ())
        container = Container.from_dict(data["container"]) if data.get("container") else None
        url = data.get("url") or (container.url if container else files[0].url)
        return cls(
            id=str(data["id"]),
            url=str(url),
            digest=Digest(str(digest["algorithm"]), str(digest["value"])) if digest else None,
            size=int(data["size"]) if data.get("size") is not None else None,
            title=str(data["title"]) if data.get("title") is not None else None,
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            files=files,
            container=container,
            primary_id=_text(data.get("primaryId")),
            local_ids=tuple(str(i) for i in data.get("localIds") or ()),
            creator=_text(data.get("creator")),
            date=_text(data.get("date")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The item as a batch file would give it (url only for an object of one file)."""
        out: dict[str, Any] = {"id": self.id}
        if not (self.files or self.container):
            out["url"] = self.url
        if self.digest:
            out["digest"] = {"algorithm": self.digest.algorithm, "value": self.digest.value}
        if self.size is not None:
            out["size"] = self.size
        if self.title is not None:
            out["title"] = self.title
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.files:
            out["files"] = [f.to_dict() for f in self.files]
        if self.container is not None:
            out["container"] = self.container.to_dict()
        for key, value in (("primaryId", self.primary_id), ("creator", self.creator),
                           ("date", self.date)):
            if value is not None:
                out[key] = value
        if self.local_ids:
            out["localIds"] = list(self.local_ids)
        return out

    def object_files(self) -> tuple[ObjectFile, ...]:
        """The object's files as the manifest lists them; () for a container, whose files
        are its members (known once it is unpacked)."""
        if self.files:
            return self.files
        if self.container is not None:
            return ()
        given = self.metadata.get("fileName", "")
        name = (given if given and name_problem(given) is None else "") or name_from_url(
            self.url) or self.id
        digest = (self.digest.algorithm, self.digest.value) if self.digest else None
        return (ObjectFile(name, self.url, digest, self.size, self.metadata.get("mimeType")),)

    def object_json(self) -> str:
        """The object as its job is given it (BATCHQ_OBJECT); see `objects.object_json`."""
        files = [f.to_dict() for f in self.object_files()]
        return object_json(files, self.container.to_dict() if self.container else None)

    def file_urls(self) -> list[str]:
        """Where the object's bytes come from: its files' URLs and its container's. Not
        through `object_files`, whose default file names cost a URL parse each: every
        item's URLs are checked when its batch is admitted."""
        urls = [f.url for f in self.files] if self.files else (
            [] if self.container is not None else [self.url])
        return [*urls, self.container.url] if self.container is not None else urls

    def file_count(self) -> int | None:
        """How many files the object has; None for a container (known once unpacked)."""
        if self.files:
            return len(self.files)
        return None if self.container is not None else 1

    def identifiers(self) -> str:
        """The object's identifiers on one line, for reports and the page ("" if none)."""
        parts = [self.primary_id] if self.primary_id else []
        if self.local_ids:
            parts.append("local: " + ", ".join(self.local_ids))
        return "; ".join(parts)

    def files_text(self) -> str:
        """`1 file`, `3 files`, or `container` (its files are known once unpacked)."""
        count = self.file_count()
        return "container" if count is None else f"{count} file{'' if count == 1 else 's'}"

    def object_id(self, batch: str) -> str:
        """The object's identifier in storage: its primary identifier, else its first local
        identifier, else `<batch>/<item id>` (the storage interface's rule)."""
        return self.primary_id or (self.local_ids[0] if self.local_ids else f"{batch}/{self.id}")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Depositor:
    name: str
    email: str


@dataclass(frozen=True)
class BatchSpec:
    """A batch file's `spec`, as committed by a depositor and edited by admins."""

    profile: str
    depositor: Depositor
    state: RequestedState = RequestedState.ACTIVE
    priority: int = DEFAULT_PRIORITY
    items: tuple[Item, ...] | None = None
    manifest_url: str | None = None
    restarts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> BatchSpec:
        manifest = spec["manifest"]
        items = manifest.get("items")
        dep = spec["depositor"]
        return cls(
            profile=str(spec["profile"]),
            depositor=Depositor(str(dep.get("name", "")), str(dep["email"])),
            state=RequestedState(spec.get("state", RequestedState.ACTIVE)),
            priority=int(spec.get("priority", DEFAULT_PRIORITY)),
            items=tuple(Item.from_dict(i) for i in items) if items is not None else None,
            manifest_url=manifest.get("url"),
            restarts={str(k): int(v) for k, v in (spec.get("restarts") or {}).items()},
        )


@dataclass(frozen=True)
class Notification:
    recipients: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    sender: str = "batchq@localhost"
    reply_to: str | None = None
    suppress: bool = False  # true: keep reports, send no email
    suppressed_addresses: tuple[str, ...] = ()
    sender_name: str | None = None  # display names, kept apart from the addresses
    reply_to_name: str | None = None


@dataclass(frozen=True)
class S3Location:
    """A profile's S3 storage: where, never with what credentials (those are the
    operator's: the reconciler's environment, or a Kubernetes Secret)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class Profile:
    """How items are processed, where payloads go, and who hears about it."""

    name: str
    command: tuple[str, ...] | None = None  # default: the batchq worker
    image: str = DEFAULT_IMAGE
    resources: dict[str, Any] = field(default_factory=dict)
    backoff_limit: int = 0
    deadline_seconds: int | None = None
    ttl_seconds_after_finished: int = 86400  # Kubernetes: finished Jobs are then deleted
    storage: str = "storage"  # filesystem: the path under the operator's storage root
    storage_s3: S3Location | None = None  # set for `storage: {type: s3, ...}`
    allowed_prefixes: tuple[str, ...] = ()
    manifest_max_bytes: int = 50 * 1024 * 1024
    manifest_timeout: float = 30.0
    notification: Notification = field(default_factory=Notification)

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> Profile:
        job = spec.get("job") or {}
        notif = spec.get("notification") or {}
        storage = spec.get("storage") or {}
        s3 = None
        if storage.get("type") == "s3":
            s3 = S3Location(bucket=str(storage["bucket"]), prefix=str(storage.get("prefix", "")),
                            endpoint=storage.get("endpoint"), region=storage.get("region"))
        return cls(
            name=name,
            command=tuple(job["command"]) if job.get("command") else None,
            image=str(job.get("image", DEFAULT_IMAGE)),
            resources=dict(job.get("resources") or {}),
            backoff_limit=int(job.get("backoffLimit", 0)),
            deadline_seconds=job.get("activeDeadlineSeconds"),
            ttl_seconds_after_finished=int(job.get("ttlSecondsAfterFinished", 86400)),
            storage=str(storage.get("path", "storage")),
            storage_s3=s3,
            allowed_prefixes=tuple(spec.get("allowedUrlPrefixes") or ()),
            manifest_max_bytes=int((spec.get("manifest") or {}).get("maxBytes", 50 * 1024**2)),
            manifest_timeout=float((spec.get("manifest") or {}).get("timeoutSeconds", 30.0)),
            notification=Notification(
                recipients=tuple(notif.get("recipients") or ()),
                bcc=tuple(notif.get("bccAdmins") or ()),
                sender=str(notif.get("from", "batchq@localhost")),
                reply_to=notif.get("replyTo"),
                suppress=bool(notif.get("suppress", False)),
                suppressed_addresses=tuple(notif.get("suppressedAddresses") or ()),
                sender_name=notif.get("fromName"),
                reply_to_name=notif.get("replyToName"),
            ),
        )

    def allows(self, url: str) -> bool:
        """A payload or manifest URL is allowed when it lies inside an allowed prefix
        (scheme, host, port and whole path segments: `reconciler.support.urls`)."""
        return url_allowed(url, self.allowed_prefixes)


@dataclass(frozen=True)
class QueueSettings:
    paused: bool = False
    max_active_batches: int = 5
    max_active_jobs: int = 4
    max_deletes_per_sync: int = 10
    deleted_retention_seconds: int = 7 * 24 * 3600

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> QueueSettings:
        d = cls()
        return cls(
            paused=bool(spec.get("paused", d.paused)),
            max_active_batches=int(spec.get("maxActiveBatches", d.max_active_batches)),
            max_active_jobs=int(spec.get("maxActiveJobs", d.max_active_jobs)),
            max_deletes_per_sync=int(spec.get("maxDeletesPerSync", d.max_deletes_per_sync)),
            deleted_retention_seconds=int(
                spec.get("deletedRetentionSeconds", d.deleted_retention_seconds)
            ),
        )


@dataclass
class ItemStatus:
    """What was observed of one item: the state of its latest attempt."""

    item: Item
    seq: int
    state: JobState = JobState.PENDING
    attempts: int = 0  # attempts created so far; restarts used = attempts - 1
    message: str = ""
    job_name: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class Job:
    """One attempt at one item (a row locally, a batch/v1 Job on Kubernetes)."""

    name: str
    batch: str
    item: str
    attempt: int
    state: JobState = JobState.PENDING
    message: str = ""
    suspended: bool = False
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class Condition:
    type: str  # Ready | Invalid | Stalled | ReconcileError | Held | DeletionRefused
    status: bool
    reason: str = ""
    message: str = ""
    last_transition: float = 0.0


@dataclass
class BatchStatus:
    state: BatchState = BatchState.PENDING
    observed_generation: int = 0
    message: str = ""
    conditions: list[Condition] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    deleted_at: float | None = None
    items_loaded: bool = False  # the manifest was read and every item recorded
    item_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # items by state
    failures: list[dict[str, str]] = field(default_factory=list)  # bounded: first failures
    manifest_error: str = ""
    settled: bool = False  # terminal with nothing left to do until a new generation
    report_round: int = 0  # reports started; a report's id is batch + round
    update_generation: int = 0  # last generation whose UpdateReporting was acted on
    admitted_manifest: str = ""  # the manifest the items were fixed from (control.outofsync)


@dataclass
class Batch:
    name: str
    spec: BatchSpec | None  # None when the first version of the file never parsed
    generation: int
    source_path: str
    source_revision: str
    submitted_at: float  # commit time of the commit that first added it: queue order
    status: BatchStatus = field(default_factory=BatchStatus)
    spec_error: str = ""  # the newest file version's error; the last good spec stays
    updated_at: float = 0.0  # last time anything about the batch was written
    # this incarnation of the name: a deleted batch's name reused by a new file is a new
    # batch, whose reports and emails must never meet the old one's ("" before uids were
    # kept, so that a batch stored then keeps the report ids it already has)
    uid: str = ""


@dataclass
class Report:
    id: str  # batch, incarnation, round (reports.report_id) — idempotent across crashes
    batch: str
    kind: str  # initial | update | manifest-error
    created_at: float
    subject: str
    recipients: tuple[str, ...]
    body: str
    changed: tuple[str, ...]
    job_states: dict[str, str]
    emailed: bool  # false when nothing changed or notification is suppressed
    message: bytes = b""  # the RFC 5322 message as queued in the outbox
