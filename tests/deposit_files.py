"""`python -m tests.deposit_files OBJECT_ID NAME=PATH...`: one deposit in a process of its
own, to the target that BATCHQ_STORAGE / BATCHQ_STORAGE_URL name (as the worker opens it),
so tests can kill it at a fail point or run two at once. Prints the DepositResult as JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from reconciler.storage import ObjectInfo, StagedFile, open_target


def staged(name: str, path: Path) -> StagedFile:
    data = path.read_bytes()
    return StagedFile(name, path, len(data),
                      {a: hashlib.new(a, data).hexdigest() for a in ("sha512", "sha256", "md5")})


def main(argv: list[str]) -> int:
    object_id, specs = argv[0], argv[1:]
    files = [staged(*spec.split("=", 1)[0:1], Path(spec.split("=", 1)[1])) for spec in specs]
    owner = os.environ.get("DEPOSIT_OWNER", "batch/item")
    batch, item = owner.split("/", 1)
    result = open_target(os.environ).deposit(ObjectInfo(object_id, batch, item), files,
                                             message=f"deposit by {owner}")
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
