"""Real third-party servers from Debian packages, started for a test and stopped after it.

    with redis_server(cgroups) as srv:        # redis-server on 127.0.0.1:srv.port
    with postgres_server() as srv:            # postgres (initdb'd into a fresh directory)
    with nginx_proxy(upstream_port) as srv:   # nginx proxying to 127.0.0.1:upstream_port

Each binds 127.0.0.1 on a free port, is never instrumented (no spans), and is killed (and
its files removed) when the block ends, whatever happened. The tiny clients here speak the
servers' own wire protocols (RESP, PostgreSQL's simple query protocol), so the services
need no driver package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, require_binary

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_port(proc: subprocess.Popen[bytes], port: int, what: str,
               timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def join(pid: int, cgroups: list[Path]) -> None:
    for cgroup in cgroups:
        (cgroup / "cgroup.procs").write_text(str(pid))


@contextmanager
def redis_server(cgroups: list[Path] = (),  # type: ignore[assignment]
                 cpu: int | None = None) -> Iterator[Server]:
    """redis-server without persistence; every thread of it on ``cpu`` when given."""
    binary = require_binary("redis-server")
    work = Path(tempfile.mkdtemp(prefix="kprobe-e2e-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(work), "--daemonize", "no", "--io-threads", "1",
         "--logfile", str(work / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))
    try:
        join(proc.pid, list(cgroups))
        _wait_port(proc, port, "redis-server")
        yield Server("redis-server", proc, port, work)
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[Server]:
    """A throw-away cluster: initdb (trust authentication on loopback, no fsync) in a
    directory owned by the ``postgres`` user (the server refuses to run as root)."""
    require_binary(str(PG_BIN / "postgres"))
    runuser = require_binary("runuser")
    user = pwd.getpwnam("postgres")
    work = Path(tempfile.mkdtemp(prefix="kprobe-e2e-pg-", dir="/var/tmp"))
    os.chown(work, user.pw_uid, user.pw_gid)
    data = work / "data"
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([runuser, "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",
                        str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        proc = subprocess.Popen(
            [runuser, "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
             "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={work}", "-c", "fsync=off",
             "-c", "shared_buffers=16MB", "-c", "max_connections=20",
             "-c", "lock_timeout=0", "-c", "deadlock_timeout=10s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(proc, port, "postgres")
        _wait_accepting(proc, port)
        yield Server("postgres", proc, port, work)
    finally:
        if proc is not None:
            # runuser forwards the signal; SIGINT is postgres's fast shutdown
            _stop(proc, signal.SIGINT)
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def _wait_accepting(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 60.0) -> None:
    """Postgres listens before it accepts sessions ("the database system is starting up")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            Postgres(port).close()
            return
        except (OSError, RuntimeError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def nginx_proxy(upstream_port: int, cgroups: list[Path] = (),  # type: ignore[assignment]
                cpu: int | None = None) -> Iterator[Server]:
    """nginx (one process, no master) proxying every request to 127.0.0.1:upstream_port
    over a kept-alive upstream connection."""
    binary = require_binary("nginx")
    work = Path(tempfile.mkdtemp(prefix="kprobe-e2e-nginx-"))
    port = free_port()
    (work / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 30s;
        }}
    }}
}}
""")
    proc = subprocess.Popen([binary, "-c", str(work / "nginx.conf"), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        join(proc.pid, list(cgroups))
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        _wait_port(proc, port, "nginx")
        yield Server("nginx", proc, port, work)
    finally:
        _stop(proc, signal.SIGQUIT)
        shutil.rmtree(work, ignore_errors=True)


# -- wire protocols ---------------------------------------------------------------------------
class Redis:
    """RESP over one TCP connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def call(self, *args: bytes | str) -> bytes | int | None:
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts)
                          + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _reply(self) -> bytes | int | None:
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2]
        raise RuntimeError(f"redis: {line!r}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Postgres:
    """PostgreSQL's simple query protocol over one TCP connection (trust authentication)."""

    def __init__(self, port: int, user: str = "postgres", database: str = "postgres") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        params = f"user\0{user}\0database\0{database}\0\0".encode()
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self._until_ready()

    def _message(self) -> tuple[bytes, bytes]:
        head = self._exactly(5)
        size = struct.unpack("!i", head[1:])[0]
        return head[:1], self._exactly(size - 4)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("postgres closed the connection")
            data += chunk
        return data

    def _until_ready(self) -> list[list[str | None]]:
        rows: list[list[str | None]] = []
        error = None
        while True:
            kind, body = self._message()
            if kind == b"E":
                error = body.replace(b"\0", b" ").decode(errors="replace")
            elif kind == b"D":
                count = struct.unpack("!h", body[:2])[0]
                pos, row = 2, []
                for _ in range(count):
                    size = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    row.append(None if size < 0 else body[pos:pos + size].decode())
                    pos += max(size, 0)
                rows.append(row)
            elif kind == b"Z":
                if error:
                    raise RuntimeError(f"postgres: {error}")
                return rows

    def query(self, sql: str) -> list[list[str | None]]:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
        return self._until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        finally:
            self.sock.close()
