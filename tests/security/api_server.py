"""A real ``kprobe serve`` for the API attack tests (``test_api_*.py``).

``record_lake`` records the ledger workload with the real agent (``kprobe run``) and
analyses it (``kprobe analyze``): a lake with kernel events, spans and a graph snapshot.
``serve`` starts ``kprobe serve`` on a free loopback port over a lake, with a tokens file,
waits for ``/healthz`` and stops it afterwards. ``HealthProbe`` polls ``/healthz`` from
another process while an attack runs (a thread of the test would share the test's GIL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kprobe.query_api.auth import add_token
from tests.support import REPO, free_port, wait_healthy

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
TOKENS = {"reader": ["read"], "reader2": ["read"], "operator": ["read", "replay"]}


@dataclass(frozen=True)
class RecordedLake:
    lake: Path
    pid: int  # the recorded workload process
    node: str


def kprobe(*args: str, timeout: float = 180, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO, env=env)


def record_lake(tmp: Path) -> RecordedLake:
    lake = tmp / "lake"
    run = kprobe("run", "--lake", str(lake), "--spool-dir", str(tmp / "spool"), "--",
                 sys.executable, "-P", str(REPO / "tests" / "programs" / "ledger_workload.py"),
                 "--ledger", str(tmp / "ledger.db"), "--payments", "20")
    assert run.returncode == 0, run.stderr
    found = kprobe("sql", "--lake", str(lake), "--format", "json",
                   "SELECT pid, node, min(start_ns) AS lo, max(end_ns) AS hi FROM spans "
                   "GROUP BY ALL")
    assert found.returncode == 0, found.stderr
    [spans] = json.loads(found.stdout)
    analyze = kprobe("analyze", "--lake", str(lake), "--from", str(spans["lo"] - 10**9),
                     "--to", str(spans["hi"] + 10**9), "--window", "10m",
                     "--executor", "local")
    assert analyze.returncode == 0, analyze.stderr
    return RecordedLake(lake, int(spans["pid"]), str(spans["node"]))


def copy_lake(recorded: RecordedLake, into: Path) -> RecordedLake:
    """A private copy (tests that break the lake on purpose)."""
    target = into / "lake"
    shutil.copytree(recorded.lake, target)
    return RecordedLake(target, recorded.pid, recorded.node)


@dataclass
class Served:
    base: str
    port: int
    lake: Path
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = "reader", **kwargs: Any) -> httpx.Client:
        headers = ({"Authorization": f"Bearer {self.tokens.get(token, token)}"}
                   if token else {})
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.base, headers=headers, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_lines(self) -> list[dict[str, Any]]:
        prefix = "kprobe audit "
        return [json.loads(line[len(prefix):]) for line in self.log().splitlines()
                if line.startswith(prefix)]


@contextmanager
def serve(lake: Path | str, tmp: Path, *, args: tuple[str, ...] = (),
          env: dict[str, str] | None = None, auth: bool = True) -> Iterator[Served]:
    tmp.mkdir(parents=True, exist_ok=True)
    tokens_file = tmp / "tokens.json"
    tokens: dict[str, str] = {}
    if auth:
        tokens_file.unlink(missing_ok=True)
        tokens = {name: add_token(tokens_file, name, scopes) for name, scopes in TOKENS.items()}
    port = free_port()
    log_path = tmp / f"serve-{port}.log"
    full_env = {**os.environ, **(env or {})}
    command = [*KPROBE, "serve", "--lake", str(lake), "--port", str(port), *args]
    command += ["--tokens-file", str(tokens_file)] if auth else ["--no-auth"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, log_path, 60)
    try:
        yield Served(base, port, Path(lake), tokens, proc, log_path, tmp, env or {})
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_PROBE = r"""
import json, os, sys, time
import httpx
base, stop = sys.argv[1], sys.argv[2]
lat, errors = [], []
with httpx.Client(timeout=10) as client:
    client.get(base + "/healthz")
    print("ready", flush=True)
    while not os.path.exists(stop):
        started = time.perf_counter()
        try:
            status = client.get(base + "/healthz").status_code
            lat.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
        except httpx.HTTPError as err:
            errors.append(repr(err))
        time.sleep(0.02)
print(json.dumps({"lat": lat, "errors": errors}))
"""


@dataclass
class HealthFigures:
    latencies_s: list[float]
    errors: list[Any]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    def describe(self) -> str:
        if not self.latencies_s:
            return f"no answer; errors {self.errors[:3]}"
        return (f"/healthz n={len(self.latencies_s)} p50={self.quantile(0.5) * 1000:.1f} ms "
                f"p90={self.quantile(0.9) * 1000:.1f} ms p99={self.quantile(0.99) * 1000:.1f}"
                f" ms max={max(self.latencies_s) * 1000:.1f} ms errors={len(self.errors)}")


class HealthProbe:
    """``/healthz`` polled every 20 ms by another process until ``stop()``."""

    def __init__(self, base: str) -> None:
        self._stop = Path(tempfile.mkdtemp(prefix="kprobe-probe-")) / "stop"
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, base, str(self._stop)],
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()  # polling from now on
        assert ready.strip() == "ready", ready

    def stop(self) -> HealthFigures:
        self._stop.touch()
        out, _ = self._proc.communicate(timeout=60)
        shutil.rmtree(self._stop.parent, ignore_errors=True)
        data = json.loads(out)
        return HealthFigures(data["lat"], data["errors"])
