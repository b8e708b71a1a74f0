"""The worker as a real program: real HTTP, real files, exit codes, termination log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.worker import cas_path, record_path
from tests.fixtures import PayloadServer


def run(tmp: Path, url: str, **extra: str) -> tuple[int, str, str]:
    log = tmp / "termination-log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_BATCH="b", BATCHQ_ITEM_ID="i", BATCHQ_ITEM_URL=url,
               BATCHQ_STORAGE=str(tmp / "store"), BATCHQ_TERMINATION_LOG=str(log))
    env.update(extra)
    p = subprocess.run([sys.executable, "-m", "reconciler.worker"], env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stderr.strip(), log.read_text().strip() if log.exists() else ""


def digest_env(body: bytes, alg: str = "sha256") -> dict[str, str]:
    return {"BATCHQ_DIGEST_ALGORITHM": alg,
            "BATCHQ_DIGEST_VALUE": hashlib.new(alg, body).hexdigest(),
            "BATCHQ_ITEM_SIZE": str(len(body))}


def test_stores_content_addressed_and_resumes_without_downloading(
        tmp_path: Path, payloads: PayloadServer) -> None:
    body = b"a map of oakland\n"
    payloads.add("p", body)
    rc, err, log = run(tmp_path, payloads.base + "p", **digest_env(body, "md5"))
    assert (rc, err, log) == (0, "", "")
    sha = hashlib.sha256(body).hexdigest()
    stored = cas_path(tmp_path / "store", sha)
    assert stored.read_bytes() == body
    record = json.loads(record_path(tmp_path / "store", "b", "i").read_text())
    assert record["sha256"] == sha and record["url"] == payloads.base + "p"
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")] == []
    rc, _, _ = run(tmp_path, payloads.base + "p", **digest_env(body, "md5"))
    assert rc == 0
    assert payloads.requests == ["p"]  # the restart downloaded nothing
    stored.write_bytes(b"bit rot")  # a stored copy that no longer verifies is fetched again
    assert run(tmp_path, payloads.base + "p", **digest_env(body, "md5"))[0] == 0
    assert payloads.requests == ["p", "p"] and stored.read_bytes() == body


@pytest.mark.parametrize(("served", "expect"), [
    (b"other bytes, same size!", "digest mismatch: expected sha256 "),
    (b"short", "size mismatch: expected 23 bytes, got 5"),
])
def test_verification_failures(tmp_path: Path, payloads: PayloadServer, served: bytes,
                               expect: str) -> None:
    payloads.add("v", served)
    rc, err, log = run(tmp_path, payloads.base + "v", **digest_env(b"the expected payload!!\n"))
    assert rc == 1
    assert err.startswith("batchq-worker: " + expect)
    assert log.startswith(expect) and "\n" not in log
    assert not (tmp_path / "store" / "sha256").exists() or not any(
        (tmp_path / "store" / "sha256").rglob("*"))
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")] == []


def test_http_404_and_refused_prefix(tmp_path: Path, payloads: PayloadServer) -> None:
    rc, _, log = run(tmp_path, payloads.base + "missing")
    assert rc == 1 and log == f"HTTP 404 fetching {payloads.base}missing"
    rc, _, log = run(tmp_path, "http://192.0.2.7/x",
                       BATCHQ_ALLOWED_PREFIXES=payloads.base + "\nfile:")
    assert rc == 2
    assert log == (f"URL http://192.0.2.7/x is not allowed (allowed prefixes: "
                   f"{payloads.base}, file:)")
    assert payloads.requests == ["missing"]


def test_relative_file_urls_stay_inside_the_base(tmp_path: Path) -> None:
    base = tmp_path / "repo"
    (base / "payloads").mkdir(parents=True)
    (base / "payloads" / "x.txt").write_bytes(b"x\n")
    (tmp_path / "secret").write_text("s")
    assert run(tmp_path, "file:payloads/x.txt", BATCHQ_BASE_DIR=str(base))[0] == 0
    rc, _, log = run(tmp_path, "file:../secret", BATCHQ_BASE_DIR=str(base),
                     BATCHQ_ITEM_ID="j")
    assert rc == 1 and log == f"file URL file:../secret points outside {base}"
