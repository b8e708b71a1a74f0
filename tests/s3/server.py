"""A real S3 server on loopback for the storage tests: SeaweedFS (`weed server -s3`),
built from the Go module proxy by scripts/build-test-s3, with a temp data dir, every port
chosen free on 127.0.0.1, and one identity whose keys the tests hand to batchq as the
operator would (environment)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from tests.fixtures import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-test-s3"
ACCESS_KEY, SECRET_KEY = "batchq-test", "batchq-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> Path:
    """Where scripts/build-test-s3 puts `weed` (it may not be built)."""
    version = re.search(r"^SEAWEEDFS_VERSION=(\S+)$", BUILD_SCRIPT.read_text(), re.M)
    assert version is not None
    cache = Path(os.environ.get("BATCHQ_CACHE") or Path.home() / ".cache" / "batchq")
    return cache / f"seaweedfs-{version.group(1)}" / "bin" / "weed"


class S3Server:
    """`weed server` with master, volume, filer and the S3 gateway, on loopback only."""

    def __init__(self, workdir: Path, binary: Path) -> None:
        self.workdir = workdir
        data = workdir / "data"
        data.mkdir(parents=True)
        config = workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "batchq", "credentials": [{"accessKey": ACCESS_KEY,
                                               "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.port = free_port()
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "metricsPort")}
        args = [str(binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-dir={data}", "-filer", "-s3", f"-s3.port={self.port}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-volume.max=0", "-master.volumeSizeLimitMB=32",
                *(f"-{name}={port}" for name, port in ports.items())]
        self.log = (workdir / "weed.log").open("wb")
        self.proc = subprocess.Popen(args, cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = self.make_client()
        self._wait_ready()

    def make_client(self) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=BotoConfig(s3={"addressing_style": "path"},
                              retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20))

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Until a bucket can be created and an object written and read back (the S3
        gateway answers before the volume server has joined)."""
        deadline = time.monotonic() + timeout
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see"
                                   f" {self.workdir / 'weed.log'}")
            try:
                self.client.create_bucket(Bucket=probe)
                body = b"v" * 65536  # large enough to go to a volume, not inline
                self.client.put_object(Bucket=probe, Key="k", Body=body)
                assert self.client.get_object(Bucket=probe, Key="k")["Body"].read() == body
                self.client.delete_object(Bucket=probe, Key="k")
                return
            except Exception as exc:  # not up yet: any error until the deadline
                last = exc
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"S3 server not ready after {timeout} s: {last}")

    def bucket(self) -> str:
        """A new empty bucket."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "ocfl") -> dict[str, str]:
        """What the worker gets: the target and the operator's credentials."""
        return {"BATCHQ_STORAGE_URL": f"s3://{bucket}/{prefix}",
                "BATCHQ_S3_ENDPOINT": self.endpoint, "BATCHQ_S3_REGION": REGION,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
