"""Sandboxed replays launched over HTTP, with their state kept in the lake.

A replay is the ``kprobe replay`` command run as a subprocess (``python -P -m kprobe replay
… --format json``), so the service depends on the command's contract, not on the sandbox's
internals; with ``KPROBE_API_RAY_ADDRESS`` set, the same command runs as a Ray task on the
cluster instead. The replica that launched a job watches it and writes its state to
``{lake}/jobs/replays/{id}/job.json`` (and the report to ``report.json``) through the
lake's storage, so any replica answers ``GET /v1/replays/{id}``. While a job runs, its
watcher refreshes ``heartbeat_ns``; a running job whose heartbeat is older than a few
intervals is reported ``lost`` (its replica died).

Job status: ``running`` → ``succeeded`` (the replay ran and its expectation held, exit 0),
``failed`` (it ran and the expectation did not hold, exit 1; the report says why) or
``error`` (it could not run: the command's one-line reason is in ``error``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lake import LakeSettings
from lake.storage import LakeLocation
from query_api.errors import TooManyRequests
from query_api.metrics import ApiMetrics
from query_api.schemas import ReplayRequest
from query_api.settings import ApiSettings
from query_api.storage import LakeFiles

log = logging.getLogger(__name__)

JOBS_DIR = "jobs/replays"
TERMINAL = ("succeeded", "failed", "error")
_KILL_GRACE_S = 60.0  # beyond the replay's own --timeout before the job is killed


class JobStore:
    """Job documents and reports under ``{lake}/jobs/replays/{id}/``."""

    def __init__(self, files: LakeFiles) -> None:
        self.files = files

    def put(self, job: dict[str, Any]) -> None:
        self.files.write_bytes(f"{JOBS_DIR}/{job['id']}/job.json",
                               json.dumps(job, indent=1).encode())

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.files.read_bytes(f"{JOBS_DIR}/{job_id}/job.json")
        return None if raw is None else dict(json.loads(raw))

    def put_report(self, job_id: str, report: dict[str, Any]) -> None:
        self.files.write_bytes(f"{JOBS_DIR}/{job_id}/report.json", json.dumps(report).encode())

    def get_report(self, job_id: str) -> dict[str, Any] | None:
        raw = self.files.read_bytes(f"{JOBS_DIR}/{job_id}/report.json")
        return None if raw is None else dict(json.loads(raw))


def command_args(request: ReplayRequest, lake_root: str) -> list[str]:
    """``kprobe replay`` arguments for a request (``--opt=value`` so values may start
    with a dash)."""
    args = ["replay", f"--lake={lake_root}", f"--process={request.process}",
            "--format=json", f"--timeout={request.timeout_s:g}"]
    if request.from_ is not None:
        args.append(f"--from={request.from_}")
    if request.to is not None:
        args.append(f"--to={request.to}")
    args.extend(f"--inject={spec}" for spec in request.inject)
    args.extend(f"--set-arg={change.index}={change.value}" for change in request.set_args)
    args.extend(f"--env={key}={value}" for key, value in sorted(request.env.items()))
    if request.cmd is not None:
        args.append(f"--cmd={request.cmd}")
    if request.mode is not None:
        args.append(f"--mode={request.mode}")
    if request.expect_exit is not None:
        args.append(f"--expect-exit={request.expect_exit}")
    elif request.expect_output_match:
        args.append("--expect-output-match")
    return args


def lake_env(lake: LakeSettings) -> dict[str, str]:
    """The environment a replay subprocess needs to reach the same lake."""
    env = dict(os.environ)
    pairs = {"KPROBE_S3_ENDPOINT": lake.s3_endpoint, "KPROBE_S3_ACCESS_KEY": lake.s3_access_key,
             "KPROBE_S3_SECRET_KEY": lake.s3_secret_key, "KPROBE_S3_REGION": lake.s3_region,
             "KPROBE_S3_ALLOW_HTTP": "1" if lake.s3_allow_http else None}
    env.update({k: v for k, v in pairs.items() if v})
    env.pop("KPROBE_LAKE", None)  # --lake says it
    return env


def run_cli(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str, str]:
    """Run ``python -P -m kprobe ARGS``; (exit code, stdout, stderr). Kills the whole
    process group at the deadline (exit code -9)."""
    proc = subprocess.Popen([sys.executable, "-P", "-m", "kprobe", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return -9, out, err + f"\nkprobe replay: killed after {timeout_s:g} s"
    return proc.returncode, out, err


def outcome(code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """Job fields from the command's exit code and output."""
    report: dict[str, Any] | None = None
    try:
        parsed = json.loads(stdout) if stdout.strip() else None
        report = parsed if isinstance(parsed, dict) else None
    except ValueError:
        report = None
    if code in (0, 1) and report is not None:
        summary = {k: report.get(k) for k in ("status", "mode", "exit_code", "exit_signal",
                                              "recorded_exit_code", "outputs_match")}
        return {"status": "succeeded" if code == 0 else "failed", "exit_code": code,
                "expectation_held": code == 0, "error": None, "summary": summary,
                "report": report}
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"kprobe replay exited with {code} and no message"
    reason = reason.removeprefix("kprobe replay: ")
    return {"status": "error", "exit_code": code, "expectation_held": None,
            "error": reason[:1000], "summary": None, "report": None}


@dataclass
class _Running:
    job: dict[str, Any]
    stop: threading.Event


class ReplayRunner:
    """Launches replays from this replica and keeps their job documents current."""

    def __init__(self, location: LakeLocation, lake: LakeSettings, settings: ApiSettings,
                 metrics: ApiMetrics) -> None:
        self.location = location
        self.lake = lake
        self.settings = settings
        self.metrics = metrics
        self.store = JobStore(LakeFiles(location))
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._ray_ready = False

    def launch(self, request: ReplayRequest) -> dict[str, Any]:
        now = time.time_ns()
        job: dict[str, Any] = {
            "id": uuid.uuid4().hex, "kind": "replay", "status": "running",
            "request": request.model_dump(by_alias=True),
            "runner": "ray" if self.settings.ray_address else "subprocess",
            "owner": f"{socket.gethostname()}:{os.getpid()}", "created_ns": now,
            "started_ns": now, "finished_ns": None, "heartbeat_ns": now,
            "exit_code": None, "expectation_held": None, "error": None, "summary": None}
        with self._lock:
            if len(self._running) >= self.settings.replay_max_running:
                raise TooManyRequests(
                    f"{len(self._running)} replays already running on this replica (limit "
                    f"{self.settings.replay_max_running}); retry later",
                    {"Retry-After": "5"})
            running = _Running(job, threading.Event())
            self._running[job["id"]] = running
        try:
            self.store.put(job)
        except Exception:
            with self._lock:
                self._running.pop(job["id"], None)
            raise
        args = command_args(request, self.location.root)
        threading.Thread(target=self._watch, args=(running, args, request.timeout_s),
                         name=f"replay-{job['id'][:8]}", daemon=True).start()
        return job

    def stop_all(self) -> None:
        """Server shutdown: the watchers record the jobs as errors."""
        with self._lock:
            for running in self._running.values():
                running.stop.set()

    def is_lost(self, job: dict[str, Any]) -> bool:
        if job.get("status") != "running" or job.get("id") in self._running:
            return False
        stale_ns = int(max(3 * self.settings.replay_heartbeat_s, 30) * 1e9)
        return time.time_ns() - int(job.get("heartbeat_ns") or 0) > stale_ns

    # -- watcher thread -----------------------------------------------------------------------
    def _watch(self, running: _Running, args: list[str], timeout_s: float) -> None:
        job = running.job
        try:
            code, out, err = self._execute(running, args, timeout_s + _KILL_GRACE_S)
            result = outcome(code, out, err)
        except Exception as exc:  # noqa: BLE001 - the job must end in a terminal state
            log.exception("replay %s failed to run", job["id"])
            result = {"status": "error", "exit_code": None, "expectation_held": None,
                      "error": f"the replay could not be started: {exc}", "summary": None,
                      "report": None}
        report = result.pop("report")
        try:
            if report is not None:
                self.store.put_report(job["id"], report)
            job.update(result, finished_ns=time.time_ns(), heartbeat_ns=time.time_ns())
            self.store.put(job)
        except Exception:  # noqa: BLE001 - logged; the job will read as lost
            log.exception("cannot record the end of replay %s", job["id"])
        finally:
            self.metrics.replays.labels(job.get("status", "error")).inc()
            with self._lock:
                self._running.pop(job["id"], None)

    def _execute(self, running: _Running, args: list[str],
                 deadline_s: float) -> tuple[int, str, str]:
        env = lake_env(self.lake)
        if self.settings.ray_address:
            return self._execute_ray(running, args, env, deadline_s)
        proc = subprocess.Popen([sys.executable, "-P", "-m", "kprobe", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        result: dict[str, Any] = {}

        def collect() -> None:
            result["out"], result["err"] = proc.communicate()

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        started = time.monotonic()
        killed = ""
        while reader.is_alive():
            reader.join(self.settings.replay_heartbeat_s)
            if not reader.is_alive():
                break
            if running.stop.is_set() or time.monotonic() - started > deadline_s:
                killed = ("the server stopped" if running.stop.is_set()
                          else f"killed after {deadline_s:g} s")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                reader.join()
                break
            self._heartbeat(running.job)
        err = result.get("err", "")
        if killed:
            err += f"\nkprobe replay: {killed}"
        return proc.returncode if not killed else -9, result.get("out", ""), err

    def _execute_ray(self, running: _Running, args: list[str], env: dict[str, str],
                     deadline_s: float) -> tuple[int, str, str]:
        import ray  # only when a cluster is configured

        if not self._ray_ready:
            ray.init(address=self.settings.ray_address, ignore_reinit_error=True,
                     log_to_driver=False)
            self._ray_ready = True
        task = ray.remote(num_cpus=1, max_retries=0)(run_cli)
        ref = task.remote(args, env, deadline_s)
        while True:
            done, _ = ray.wait([ref], timeout=self.settings.replay_heartbeat_s)
            if done:
                code, out, err = ray.get(ref)
                return int(code), str(out), str(err)
            if running.stop.is_set():
                ray.cancel(ref, force=True)
                return -9, "", "kprobe replay: the server stopped"
            self._heartbeat(running.job)

    def _heartbeat(self, job: dict[str, Any]) -> None:
        job["heartbeat_ns"] = time.time_ns()
        try:
            self.store.put(job)
        except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
            log.warning("cannot refresh the heartbeat of replay %s", job["id"])
