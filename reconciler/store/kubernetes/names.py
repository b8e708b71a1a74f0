"""Names the Kubernetes backend gives its objects: the API group, the `batchq.dev/` prefix
of its labels and annotations, and the names derived from batch and item ids.

Pure functions, shared by the modules that build Jobs, ConfigMaps and Secrets, so that a
Job names its item's Secret without a lookup and both agree on it.
"""

from __future__ import annotations

import hashlib

GROUP, VERSION, PLURAL = "batchq.dev", "v1", "batches"
A = "batchq.dev/"  # the prefix of every label and annotation the backend sets
CREDENTIALS_DIR = "/var/run/secrets/batchq"


def credentials_secret(batch: str, item: str) -> str:
    """The Secret with an item's credentials: one of at most 256 per batch, picked by a hash
    of the item id, so a Job names its own without a lookup and no Secret nears the 1 MiB
    object limit at 100,000 items."""
    return f"{batch}-credentials-{hashlib.sha256(item.encode()).hexdigest()[:2]}"


def label_value(value: str) -> str:
    """A label value (≤63, alphanumeric ends); long or odd ids get a hash instead."""
    if len(value) <= 63 and value[:1].isalnum() and value[-1:].isalnum():
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]
