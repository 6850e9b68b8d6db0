"""Sandboxed replays launched over HTTP, with their state kept in the lake.

A request (``schemas.ReplayRequest``) becomes the typed ``replay_sandbox.request.
ReplayRequest`` (checked here: a request it refuses is a 400), which the replay worker
(``python -P -m kprobe.replay_sandbox.worker``) reads as JSON on stdin; it writes the report as
JSON on stdout. ``kprobe replay`` runs the same worker code in-process, so the service
depends on one typed contract, not on a command line or on stderr text. With
``KPROBE_API_RAY_ADDRESS`` set, the worker runs as a Ray task on the cluster instead.
The worker replays in the unprivileged sandbox (``replay_sandbox.sandbox``) under the
launcher's policy: the lake and the tokens file are hidden from the replayed program, and
host files under /tmp that a changed command line names are shown only if anyone may read
them (the tracer must not lend root's rights to a request).

``cmd`` (another command line) stays: a what-if that changes ``set_args`` on a recorded
interpreter, or its environment, runs any code as well, so the boundary is the sandbox,
not the request's fields; ``cmd`` is parsed here (``shlex``, no shell) and contained like
every replay.

The replica that launched a job watches it and writes its state to
``{lake}/jobs/replays/{id}/job.json`` (and the report to ``report.json``) through the
lake's storage, so any replica answers ``GET /v1/replays/{id}``. While a job runs, its
watcher refreshes ``heartbeat_ns``; a running job whose heartbeat is older than a few
intervals is reported ``lost`` (its replica died).

Job status: ``running`` → ``succeeded`` (the replay ran and its expectation held, exit 0),
``failed`` (it ran and the expectation did not hold, exit 1; the report says why) or
``error`` (it could not run: the worker's one-line reason is in ``error``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kprobe.lake import LakeSettings, connect_ray
from kprobe.lake.storage import LakeLocation
from kprobe.query_api.errors import BadRequest, TooManyRequests
from kprobe.query_api.metrics import ApiMetrics
from kprobe.query_api.schemas import ReplayRequest
from kprobe.query_api.settings import ApiSettings
from kprobe.query_api.storage import LakeFiles
from kprobe.replay_sandbox import request as replay_request
from kprobe.replay_sandbox.errors import ReplaySandboxError, SpecError
from kprobe.replay_sandbox.lake_source import parse_process
from kprobe.replay_sandbox.request import parse_time
from kprobe.replay_sandbox.worker import run_worker

log = logging.getLogger(__name__)

JOBS_DIR = "jobs/replays"
TERMINAL = ("succeeded", "failed", "error")
_KILL_GRACE_S = 60.0  # beyond the replay's own --timeout before the job is killed
_TORN_READS = 5  # reads of a job document before a torn one is an error


class JobStore:
    """Job documents and reports under ``{lake}/jobs/replays/{id}/``."""

    def __init__(self, files: LakeFiles) -> None:
        self.files = files

    def put(self, job: dict[str, Any]) -> None:
        self.files.write_bytes(f"{JOBS_DIR}/{job['id']}/job.json",
                               json.dumps(job, indent=1).encode())

    def get(self, job_id: str) -> dict[str, Any] | None:
        # The watcher rewrites job.json at every heartbeat. On an object store a read that
        # overlaps a rewrite can come back torn (pyarrow sizes the object, then reads it in
        # ranges; seen on SeaweedFS as a 500 from GET /v1/replays/{id}): read it again.
        for attempt in range(_TORN_READS):
            raw = self.files.read_bytes(f"{JOBS_DIR}/{job_id}/job.json")
            if raw is None:
                return None
            try:
                return dict(json.loads(raw))
            except ValueError:
                if attempt == _TORN_READS - 1:
                    raise
                time.sleep(0.05)
        return None

    def put_report(self, job_id: str, report: dict[str, Any]) -> None:
        self.files.write_bytes(f"{JOBS_DIR}/{job_id}/report.json", json.dumps(report).encode())

    def get_report(self, job_id: str) -> dict[str, Any] | None:
        raw = self.files.read_bytes(f"{JOBS_DIR}/{job_id}/report.json")
        return None if raw is None else dict(json.loads(raw))


def typed_request(body: ReplayRequest) -> replay_request.ReplayRequest:
    """The worker's typed request for a POST body; a value it refuses is a BadRequest."""
    try:
        pid, node = parse_process(body.process)
        cmd = None
        if body.cmd is not None:
            try:
                cmd = tuple(shlex.split(body.cmd))
            except ValueError as err:
                raise SpecError(f"cmd: {err}") from None
            if not cmd:
                raise SpecError("cmd is empty")
        return replay_request.ReplayRequest(
            pid=pid, node=node, from_ns=parse_time(body.from_, "from"),
            to_ns=parse_time(body.to, "to"), injections=tuple(body.inject),
            set_args=tuple((change.index, change.value) for change in body.set_args),
            env=tuple(sorted(body.env.items())), cmd=cmd, mode=body.mode,
            expect_exit=body.expect_exit, expect_output_match=body.expect_output_match,
            timeout_s=body.timeout_s)
    except ReplaySandboxError as err:
        raise BadRequest(str(err)) from None


def worker_input(request: replay_request.ReplayRequest, lake_root: str,
                 hide: list[str]) -> dict[str, Any]:
    """What the worker reads on stdin: the request, the lake, the launcher's policy."""
    return {"lake": lake_root, "request": request.to_json(), "hide": hide,
            "named_files": "public"}


def lake_env(lake: LakeSettings) -> dict[str, str]:
    """The environment a replay subprocess needs to reach the same lake."""
    env = dict(os.environ)
    env.update(lake.s3_env())
    env.pop("KPROBE_LAKE", None)  # --lake says it
    return env


def outcome(code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """Job fields from the worker's exit code and JSON output."""
    document: dict[str, Any] | None = None
    try:
        parsed = json.loads(stdout) if stdout.strip() else None
        document = parsed if isinstance(parsed, dict) else None
    except ValueError:
        document = None
    report = document.get("report") if document is not None else None
    if code in (0, 1) and isinstance(report, dict):
        summary = {k: report.get(k) for k in ("status", "mode", "exit_code", "exit_signal",
                                              "recorded_exit_code", "outputs_match")}
        return {"status": "succeeded" if code == 0 else "failed", "exit_code": code,
                "expectation_held": code == 0, "error": None, "summary": summary,
                "report": report}
    if document is not None and isinstance(document.get("error"), str):
        reason = document["error"]
    else:  # the worker died before it could answer (killed, crashed)
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"the replay worker exited with {code} and no message"
        reason = reason.removeprefix("replay worker: ")
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
        typed = typed_request(request)  # a refused value: 400 before any job exists
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
        hide = [str(self.settings.tokens_file)] if self.settings.tokens_file else []
        document = worker_input(typed, self.location.root, hide)
        threading.Thread(target=self._watch, args=(running, document, request.timeout_s),
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
    def _watch(self, running: _Running, document: dict[str, Any], timeout_s: float) -> None:
        job = running.job
        try:
            code, out, err = self._execute(running, document, timeout_s + _KILL_GRACE_S)
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

    def _execute(self, running: _Running, document: dict[str, Any],
                 deadline_s: float) -> tuple[int, str, str]:
        env = lake_env(self.lake)
        if self.settings.ray_address:
            return self._execute_ray(running, document, env, deadline_s)
        proc = subprocess.Popen([sys.executable, "-P", "-m", "kprobe.replay_sandbox.worker"],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        result: dict[str, Any] = {}

        def collect() -> None:
            result["out"], result["err"] = proc.communicate(json.dumps(document))

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
            err += f"\nreplay worker: {killed}"
        return proc.returncode if not killed else -9, result.get("out", ""), err

    def _execute_ray(self, running: _Running, document: dict[str, Any], env: dict[str, str],
                     deadline_s: float) -> tuple[int, str, str]:
        import ray  # only when a cluster is configured

        if not self._ray_ready:
            connect_ray(self.settings.ray_address)
            self._ray_ready = True
        task = ray.remote(num_cpus=1, max_retries=0)(run_worker)
        ref = task.remote(document, env, deadline_s)
        while True:
            done, _ = ray.wait([ref], timeout=self.settings.replay_heartbeat_s)
            if done:
                code, out, err = ray.get(ref)
                return int(code), str(out), str(err)
            if running.stop.is_set():
                ray.cancel(ref, force=True)
                return -9, "", "replay worker: the server stopped"
            self._heartbeat(running.job)

    def _heartbeat(self, job: dict[str, Any]) -> None:
        job["heartbeat_ns"] = time.time_ns()
        try:
            self.store.put(job)
        except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
            log.warning("cannot refresh the heartbeat of replay %s", job["id"])
