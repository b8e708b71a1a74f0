"""OCFL objects in an S3-compatible bucket (boto3), under `s3://bucket/prefix`.

S3 has no rename and no directories, so the order of writes is the safety: content, then
the version's inventory and sidecar, then the root inventory (the commit point) and its
sidecar. Readers trust only the root inventory; a deposit killed at any point leaves the
previous version as the head, and the next deposit completes or replaces what it left.

Two deposits of the same object (two batches) are kept apart by a claim on the version
they are about to write: `extensions/batchq-deposits/claims/<object>/<version>`, created
with a conditional put (`If-None-Match: *`), read back to be sure, and deleted when done.
A claim left by a killed attempt of the same batch item is taken over at once; another
item's claim is waited for, and taken over only once it is older than `stale_seconds`.

Credentials are never in a profile: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY come from the
environment (on Kubernetes from a Secret, by reference), or from BATCHQ_S3_CREDENTIALS_FILE
(`AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines, as a mounted Secret).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from reconciler.storage.inventory import (
    INVENTORY,
    SIDECAR,
    Inventory,
    decode,
    encode,
    extends,
    plan_version,
    sidecar_for,
    sidecar_matches,
    stored_digests,
    version_number,
)
from reconciler.storage.layout import (
    DEPOSITS,
    OBJECT_DECLARATION,
    object_hash,
    object_key,
    root_files,
)
from reconciler.storage.model import DepositResult, ObjectInfo, StagedFile, StorageError
from reconciler.support.failpoints import hit

MULTIPART_BYTES = 64 * 1024**2
UPLOADS = 4  # files of one object uploaded at once (the client is thread-safe)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFLICT = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _credentials(env: Mapping[str, str]) -> tuple[str, str]:
    values = {k: env.get(k, "").strip() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    path = env.get("BATCHQ_S3_CREDENTIALS_FILE", "").strip()
    if path and not all(values.values()):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot read BATCHQ_S3_CREDENTIALS_FILE:"
                               f" {exc.strerror or exc}") from None
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in values and not values[key.strip()]:
                values[key.strip()] = value.strip()
    if not all(values.values()):
        raise StorageError("S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in"
                           " the environment (on Kubernetes from a Secret) or in"
                           " BATCHQ_S3_CREDENTIALS_FILE")
    return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]


def _code(exc: ClientError) -> str:
    error: Any = exc.response.get("Error", {})
    return str(error.get("Code", ""))


class S3Target:
    """An OCFL storage root at `s3://bucket/prefix`."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *,
                 stale_seconds: float = 900.0, wait_seconds: float = 120.0) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.stale_seconds = stale_seconds
        self.wait_seconds = wait_seconds
        self._root_checked = False

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str]) -> S3Target:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise StorageError(f"BATCHQ_STORAGE_URL {url!r} is not s3://bucket/prefix")
        key_id, secret = _credentials(env)
        endpoint = env.get("BATCHQ_S3_ENDPOINT", "").strip() or None
        region = (env.get("BATCHQ_S3_REGION", "").strip() or env.get("AWS_REGION", "").strip()
                  or "us-east-1")
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=BotoConfig(s3={"addressing_style": "path"}, connect_timeout=10,
                              read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}))
        return cls(client, parts.netloc, parts.path)

    def __repr__(self) -> str:
        return f"S3Target('s3://{self.bucket}/{self.prefix}')"

    # -- keys and primitive operations ----------------------------------------------------

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _call(self, what: str, fn: Any, *, absent: frozenset[str] = frozenset(),
              **kwargs: Any) -> Any:
        """`fn(Bucket=..., **kwargs)`; None when S3 answers with a code in `absent` (a key
        that is not there, a condition that failed); any other failure is a StorageError
        naming the operation and the key."""
        where = f"S3 {what} s3://{self.bucket}/{kwargs.get('Key', '')}"
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) in absent:
                return None
            raise StorageError(f"{where}: {_code(exc)}"
                               f" {exc.response.get('Error', {}).get('Message', '')}"
                               .rstrip()) from None
        except BotoCoreError as exc:
            raise StorageError(f"{where}: {exc}") from None

    def _get(self, path: str) -> bytes | None:
        def read(**kwargs: Any) -> bytes:
            return bytes(self.client.get_object(**kwargs)["Body"].read())

        data: bytes | None = self._call("get", read, absent=_MISSING, Key=self.key(path))
        return data

    def _put(self, path: str, data: bytes) -> None:
        self._call("put", self.client.put_object, Key=self.key(path), Body=data)

    def _put_new(self, path: str, data: bytes) -> bool:
        """Create the key only if it does not exist (If-None-Match: *)."""
        made = self._call("put", self.client.put_object, absent=_CONFLICT, Key=self.key(path),
                          Body=data, IfNoneMatch="*")
        return made is not None

    def _upload(self, path: str, staged: StagedFile) -> None:
        """One PUT for a file up to MULTIPART_BYTES (no transfer manager to start), a
        multipart upload above."""
        try:
            if staged.size <= MULTIPART_BYTES:
                with staged.path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=self.key(path), Body=body)
            else:
                self.client.upload_file(str(staged.path), self.bucket, self.key(path))
            hit("storage-file-placed")
        except (ClientError, BotoCoreError, OSError) as exc:
            raise StorageError(f"S3 upload of {staged.name!r} to"
                               f" s3://{self.bucket}/{self.key(path)}: {exc}") from None

    def _delete_tree(self, path: str) -> None:
        prefix = self.key(path).rstrip("/") + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        try:
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"S3 delete s3://{self.bucket}/{prefix}: {exc}") from None

    # -- reading ------------------------------------------------------------------------

    def _head(self, obj: str) -> Inventory | None:
        data = self._get(f"{obj}/{INVENTORY}")
        if data is None:
            return None
        where = f"s3://{self.bucket}/{self.key(obj)}/{INVENTORY}"
        inventory = decode(data, where)
        if not sidecar_matches(data, self._get(f"{obj}/{SIDECAR}")):
            head = f"{obj}/{inventory['head']}"
            if not (self._get(f"{head}/{INVENTORY}") == data
                    and sidecar_matches(data, self._get(f"{head}/{SIDECAR}"))):
                raise StorageError(f"{where} does not match its sidecar {SIDECAR}")
        return inventory

    def stored_files(self, object_id: str) -> dict[str, Mapping[str, str]]:
        inventory = self._head(object_key(object_id))
        return dict(stored_digests(inventory)) if inventory else {}

    # -- writing ------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        """Declare the storage root once; a prefix that already holds other keys is refused
        (OCFL objects never mix with other files), as on a filesystem."""
        if self._root_checked:
            return
        files = root_files()
        if self._get(next(iter(files))) is None:
            prefix = self.key("")
            listed = self._call("list", self.client.list_objects_v2, Prefix=prefix,
                                MaxKeys=20)
            ours = {"extensions", *(name.split("/")[0] for name in files)}
            other = sorted({o["Key"][len(prefix):].split("/")[0]
                            for o in listed.get("Contents", [])} - ours)
            if other and self._get(next(iter(files))) is None:  # not a racing deposit's
                raise StorageError(
                    f"s3://{self.bucket}/{prefix} is not an OCFL storage root and is not"
                    f" empty (it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}"
                    "): give the profile a prefix of its own, or move those keys away")
        for name, data in files.items():
            if self._get(name) is None:
                self._put(name, data)
        self._root_checked = True

    def _recover(self, obj: str, object_id: str) -> Inventory | None:
        """Repair a root sidecar left behind, and commit a complete next version that a
        killed deposit wrote but did not commit (both idempotent, so safe to race); drop
        the claim on the head version, which no deposit needs once it is committed."""
        inventory = self._recover_head(obj)
        if inventory is not None:
            claims = f"{DEPOSITS}/claims/{object_hash(object_id)}"
            self._call("delete", self.client.delete_object,
                       Key=self.key(f"{claims}/{inventory['head']}"))
        return inventory

    def _recover_head(self, obj: str) -> Inventory | None:
        inventory = self._head(obj)
        if inventory is None:
            return None
        data = self._get(f"{obj}/{INVENTORY}")
        assert data is not None
        if not sidecar_matches(data, self._get(f"{obj}/{SIDECAR}")):
            self._put(f"{obj}/{SIDECAR}", sidecar_for(data))
        following = f"{obj}/v{version_number(inventory['head']) + 1}"
        newer = self._get(f"{following}/{INVENTORY}")
        if newer is not None and sidecar_matches(newer, self._get(f"{following}/{SIDECAR}")):
            candidate = decode(newer, f"s3://{self.bucket}/{self.key(following)}/{INVENTORY}")
            if extends(candidate, inventory):
                self._put(f"{obj}/{INVENTORY}", newer)
                self._put(f"{obj}/{SIDECAR}", sidecar_for(newer))
                return candidate
        return inventory

    def _claim(self, claim: str, owner: str) -> str | None:
        """Take the claim on a version; return its token, or None while another deposit
        (another batch item) holds it and it is not stale."""
        token = uuid.uuid4().hex
        body = json.dumps({"owner": owner, "token": token, "since": time.time()}).encode()
        if not self._put_new(claim, body):
            held: Any = None
            raw = self._get(claim)
            try:
                held = json.loads(raw) if raw is not None else None
            except ValueError:
                held = None
            mine = isinstance(held, dict) and held.get("owner") == owner
            age = time.time() - float(held.get("since", 0)) if isinstance(held, dict) else 1e9
            if not (mine or age > self.stale_seconds or raw is None):
                return None
            self._put(claim, body)  # our own killed attempt's, or a dead one's: take over
        raw = self._get(claim)
        return token if raw is not None and json.loads(raw).get("token") == token else None

    def deposit(self, info: ObjectInfo, files: Sequence[StagedFile], *,
                message: str) -> DepositResult:
        self._ensure_root()
        obj = object_key(info.object_id)
        owner = f"{info.batch}/{info.item}"
        deadline = time.monotonic() + self.wait_seconds
        while True:
            previous = self._recover(obj, info.object_id)
            plan = plan_version(previous, info, files, message=message, created=_now())
            if plan is None:
                assert previous is not None
                return DepositResult(previous["head"], False, 0, len(files))
            claim = f"{DEPOSITS}/claims/{object_hash(info.object_id)}/{plan.version}"
            token = self._claim(claim, owner)
            if token is not None:
                break
            if time.monotonic() > deadline:
                raise StorageError(f"object {info.object_id!r}: another deposit is writing"
                                   f" {plan.version} (claim {self.key(claim)}); try again"
                                   " later")
            time.sleep(0.2)
        try:
            if self._head(obj) != previous:  # committed meanwhile: plan again
                return self.deposit(info, files, message=message)
            version = f"{obj}/{plan.version}"
            self._delete_tree(version)  # what a killed attempt of this version left
            with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
                for done in [pool.submit(self._upload, f"{obj}/{path}", staged)
                             for path, staged in plan.copies]:
                    done.result()
            data, sidecar = encode(plan.inventory)
            self._put(f"{version}/{INVENTORY}", data)
            self._put(f"{version}/{SIDECAR}", sidecar)
            hit("storage-version-placed")
            if previous is None:
                self._put(f"{obj}/{OBJECT_DECLARATION[0]}", OBJECT_DECLARATION[1].encode())
            self._put(f"{obj}/{INVENTORY}", data)
            hit("storage-root-inventory-replaced")
            self._put(f"{obj}/{SIDECAR}", sidecar)
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(claim))
        return DepositResult(plan.version, True, len(plan.copies), plan.reused)

