"""Real Redis and PostgreSQL servers for the tests, on free loopback ports (like s3server.py for SeaweedFS).

Redis: the Debian package ``redis-server``; PostgreSQL 15: the Debian package ``postgresql-15`` (run as the
``postgres`` user, which it requires when the tests run as root). Plain functions: start_redis(dir) -> Server,
start_postgres(dir) -> Server, stop_server(server). ``redis_binary()`` / ``postgres_bin()`` are None when absent,
for skip conditions.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from s3server import free_ports


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen | None
    data_dir: Path
    log_path: Path
    pid: int | None = None
    stop_command: list[str] = field(default_factory=list)


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def postgres_bin() -> Path | None:
    """The bin folder of the newest PostgreSQL installed from Debian packages (/usr/lib/postgresql/<v>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _wait_port(port: int, process: subprocess.Popen | None, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise RuntimeError(f"server on port {port} did not start; log tail:\n{tail}")


def start_redis(data_dir: str | Path, *, timeout: float = 20.0) -> Server:
    """redis-server on 127.0.0.1 and a free port, no persistence; returns once it accepts connections."""
    binary = redis_binary()
    if not binary:
        raise RuntimeError("redis-server is missing: apt-get install -y redis-server")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    log_path = data_dir / "redis.log"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir), "--save", "",
            "--appendonly", "no", "--logfile", str(log_path), "--daemonize", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"redis://127.0.0.1:{port}/0", port, process, data_dir, log_path, pid=process.pid)
    _wait_port(port, process, timeout, log_path)
    return server


def start_postgres(data_dir: str | Path, *, timeout: float = 60.0) -> Server:
    """A fresh PostgreSQL cluster (initdb, trust auth, fsync off) on 127.0.0.1 and a free port; database ``scarches``."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is missing: apt-get install -y postgresql-15")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    as_postgres = os.geteuid() == 0
    if as_postgres:
        pw = pwd.getpwnam("postgres")
        for path in [data_dir, *data_dir.parents]:
            if path == Path("/") or str(path) in ("/tmp", "/var/tmp"):
                break
            os.chmod(path, os.stat(path).st_mode | 0o711)  # let postgres reach the folder
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)

    def run(*args: str) -> None:
        command = list(args)
        if as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)

    cluster = data_dir / "data"
    run(str(bin_dir / "initdb"), "-D", str(cluster), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
        "--locale=C")
    port = free_ports(1)[0]
    log_path = data_dir / "postgres.log"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data_dir} -c fsync=off -c max_connections=200"
    run(str(bin_dir / "pg_ctl"), "-D", str(cluster), "-o", options, "-l", str(log_path), "-w", "-t", str(int(timeout)),
        "start")
    run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "scarches")
    pid = int((cluster / "postmaster.pid").read_text().split()[0])
    stop = [str(bin_dir / "pg_ctl"), "-D", str(cluster), "-m", "immediate", "-w", "-t", "30", "stop"]
    if as_postgres:
        stop = ["runuser", "-u", "postgres", "--", *stop]
    return Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}/scarches", port, None, data_dir, log_path,
                  pid=pid, stop_command=stop)


def stop_server(server: Server, timeout: float = 15.0) -> None:
    """Stop a server by its process id (SIGTERM, then SIGKILL); PostgreSQL through pg_ctl."""
    if server.stop_command:
        try:
            subprocess.run(server.stop_command, check=False, timeout=timeout + 10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        except subprocess.TimeoutExpired:
            pass
    if server.process is not None:
        if server.process.poll() is not None:
            return
        os.kill(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=5)
    elif server.pid is not None:
        try:
            os.kill(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
