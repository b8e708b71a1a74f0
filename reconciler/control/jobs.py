"""What a Job for one item attempt looks like, on either backend (DESIGN §6, §8).

Jobs are immutable, so there is one per attempt, and its name is a pure function of
(batch, item, attempt): creating it again after a crash finds the same name and creates
nothing. The same name must never come from two different triples, or one batch adopts
the other's Job and hangs (batch `maps-2026` item `11-001` and batch `maps-2026-11` item
`001` would both read `maps-2026-11-001-1`). Batch names and item ids may both contain
'-', and no DNS character is free to be a separator, so a name is plain `batch-item-attempt`
only when neither part has a '-' and nothing is lost; every other name ends in
`-<attempt>--<hash of the exact triple>`. The `--` never occurs in a plain name, so the two
forms cannot meet, and the hash tells the others apart.
"""

from __future__ import annotations

import hashlib
import re
import sys

from reconciler.domain.model import Item, Profile
from reconciler.store.base import JobSpec

MAX_NAME = 63
HASH_DIGITS = 12  # 48 bits: 10,000 items sharing a truncated prefix still do not collide
_PLAIN_PART = re.compile(r"[a-z0-9]+")


def job_name(batch: str, item: str, attempt: int) -> str:
    """The Job name of one attempt: a DNS-1123 label, readable, unambiguous."""
    plain = f"{batch}-{item}-{attempt}"
    if (_PLAIN_PART.fullmatch(batch) and _PLAIN_PART.fullmatch(item)
            and len(plain) <= MAX_NAME):
        return plain
    digest = hashlib.sha256(f"{batch}\0{item}\0{attempt}".encode()).hexdigest()[:HASH_DIGITS]
    tail = f"-{attempt}--{digest}"
    readable = re.sub(r"[^a-z0-9]+", "-", f"{batch}-{item}".lower()).strip("-")
    return readable[: MAX_NAME - len(tail)].rstrip("-") + tail


def pod_annotations(item: Item) -> dict[str, str]:
    """Item metadata travels on the pod as annotations (`batchq.dev/<key>`), when valid."""
    out = {}
    for key, value in item.metadata.items():
        if re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", key):
            out[f"batchq.dev/{key}"] = value
    return out


def worker_command(profile: Profile) -> tuple[str, ...]:
    return profile.command or (sys.executable, "-m", "reconciler.worker")


def build_job(
    batch: str,
    item: Item,
    attempt: int,
    profile: Profile,
    *,
    name: str | None = None,
    suspended: bool,
    git_dir: str | None,
    commit: str,
    file_roots: tuple[str, ...],
    storage_root: str,
    storage_mount: str = "",
) -> JobSpec:
    """The Job for one attempt: the worker is configured by environment only. `name` is
    given for an attempt whose Job was already created (under its own naming scheme).

    Nothing secret goes in it (the env is kept in the store and in the Job object): the item
    URL is the stored one, its userinfo shown as `***`; each backend hands the job the real
    credentials in a file of its own (BATCHQ_CREDENTIALS_FILE).
    """
    env = {
        "BATCHQ_BATCH": batch,
        "BATCHQ_ITEM_ID": item.id,
        "BATCHQ_ITEM_URL": item.url,
        "BATCHQ_ATTEMPT": str(attempt),
        "BATCHQ_ALLOWED_PREFIXES": "\n".join(profile.allowed_prefixes),
    }
    if item.object_id(batch) != f"{batch}/{item.id}":  # stored under its identifier
        env["BATCHQ_OBJECT_ID"] = item.object_id(batch)
    if item.files or item.container:  # an object of several files, or a container
        env["BATCHQ_OBJECT"] = item.object_json()  # bounded at admission (objectrules)
        for key, value in (("BATCHQ_TITLE", item.title), ("BATCHQ_CREATOR", item.creator),
                           ("BATCHQ_DATE", item.date)):
            if value:
                env[key] = value
        if item.local_ids:
            env["BATCHQ_LOCAL_IDS"] = "\n".join(item.local_ids)
    if profile.storage_s3 is None:
        env["BATCHQ_STORAGE"] = storage_root
    else:  # the credentials are the backend's to give (runner env, Secret reference)
        env["BATCHQ_STORAGE_URL"] = profile.storage_s3.url
        if profile.storage_s3.endpoint:
            env["BATCHQ_S3_ENDPOINT"] = profile.storage_s3.endpoint
        if profile.storage_s3.region:
            env["BATCHQ_S3_REGION"] = profile.storage_s3.region
    if item.size is not None:
        env["BATCHQ_ITEM_SIZE"] = str(item.size)
    if item.digest is not None:
        env["BATCHQ_DIGEST_ALGORITHM"] = item.digest.algorithm
        env["BATCHQ_DIGEST_VALUE"] = item.digest.value
    if git_dir:  # a relative file: URL is read from the mirror at the batch's commit
        env["BATCHQ_GIT_DIR"] = git_dir
        env["BATCHQ_GIT_COMMIT"] = commit
    if file_roots:
        env["BATCHQ_FILE_ROOTS"] = "\n".join(file_roots)
    if profile.deadline_seconds:
        env["BATCHQ_TIMEOUT"] = str(profile.deadline_seconds)
    return JobSpec(
        name=name or job_name(batch, item.id, attempt),
        batch=batch,
        item=item.id,
        attempt=attempt,
        command=worker_command(profile),
        env=env,
        suspended=suspended,
        image=profile.image,
        resources=profile.resources,
        backoff_limit=profile.backoff_limit,
        deadline_seconds=profile.deadline_seconds,
        annotations=pod_annotations(item),
        ttl_seconds_after_finished=profile.ttl_seconds_after_finished,
        storage_mount=storage_mount if profile.storage_s3 is None else "",
    )
