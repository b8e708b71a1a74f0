"""Where an object lives in an OCFL storage root, and the root's own declaration files.

The root uses the community extension 0003-hash-and-id-n-tuple-storage-layout (sha256,
3 tuples of 3): any object id, of any characters or length, becomes a safe path
(`<3 hex>/<3 hex>/<3 hex>/<percent-encoded id, cut at 100 with the hash>`), and a person
can still read the id in the path. ocfl-py's validator knows this extension.
"""

from __future__ import annotations

import hashlib
import json
import re

SPEC = "1.1"
LAYOUT = "0003-hash-and-id-n-tuple-storage-layout"
ROOT_DECLARATION = (f"0=ocfl_{SPEC}", f"ocfl_{SPEC}\n")
OBJECT_DECLARATION = (f"0=ocfl_object_{SPEC}", f"ocfl_object_{SPEC}\n")
LAYOUT_FILE = "ocfl_layout.json"
LAYOUT_CONFIG = f"extensions/{LAYOUT}/config.json"
# batchq's own working area: an extension directory, which validators accept in a root
DEPOSITS = "extensions/batchq-deposits"
_KEEP = re.compile(r"[A-Za-z0-9_-]")


def _encapsulation(object_id: str, digest: str) -> str:
    encoded = "".join(c if _KEEP.fullmatch(c) else
                      "".join(f"%{b:02x}" for b in c.encode()) for c in object_id)
    return f"{encoded[:100]}-{digest}" if len(encoded) > 100 else encoded


def object_key(object_id: str) -> str:
    """The object root's path relative to the storage root."""
    digest = hashlib.sha256(object_id.encode()).hexdigest()
    return "/".join([digest[0:3], digest[3:6], digest[6:9], _encapsulation(object_id, digest)])


def object_hash(object_id: str) -> str:
    """A short name for the object in batchq's working area (locks, staging)."""
    return hashlib.sha256(object_id.encode()).hexdigest()[:32]


def root_files() -> dict[str, bytes]:
    """The files that make a directory (or prefix) an OCFL storage root with this layout."""
    layout = {"extension": LAYOUT,
              "description": "Hashed Truncated N-tuple Trees with Object ID Encapsulating"
                             " Directory for OCFL Storage Hierarchies"}
    config = {"extensionName": LAYOUT, "digestAlgorithm": "sha256",
              "tupleSize": 3, "numberOfTuples": 3}
    return {
        ROOT_DECLARATION[0]: ROOT_DECLARATION[1].encode(),
        LAYOUT_FILE: (json.dumps(layout, indent=2) + "\n").encode(),
        LAYOUT_CONFIG: (json.dumps(config, indent=2) + "\n").encode(),
    }
