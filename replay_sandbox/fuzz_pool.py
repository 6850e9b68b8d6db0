"""Running many perturbed replays at once: in this process, in worker processes, or as Ray
tasks. Each replay is ``perturb.replay_outcome`` (a plain function of its inputs).

Replays need processes, not threads: each one is a ptrace tracer that forks its tracee
and waits for it with ``waitpid(-1)``, and the stop loop is Python (one GIL). Workers are
started with ``spawn`` (the driver may hold threads: DuckDB, Ray; forking them is unsafe)
and receive the recording once, at start-up.

At most ``workers`` replays run at a time, each with a slot number of its own, so that
each pins its tracer and tracee to a different CPU (``replay_outcome``).

Ray: one code path for a laptop and a cluster, as in ``compute.ray_driver``:
``lake.connect_ray(address)`` joins the named cluster (or ``RAY_ADDRESS``); with no address a
local cluster of kprobe's own is started for this campaign (``lake.cluster``: Ray's token
auth on) and shut down after it.
Each slot is an actor holding the recording, so it crosses the object store once per
worker, not once per replay.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kprobe.lake import ClusterUnavailable, connect_ray, one_line
from kprobe.replay_sandbox.engine import ReplayOptions
from kprobe.replay_sandbox.errors import FuzzError
from kprobe.replay_sandbox.perturb import Expectation, Outcome, Perturbation, replay_outcome
from kprobe.replay_sandbox.recording import Recording

Executor = Literal["auto", "inline", "processes", "ray"]
Kind = Literal["inline", "processes", "ray"]


@dataclass(frozen=True)
class Job:
    perturbations: tuple[Perturbation, ...]
    timeout_s: float | None = None


class Pool(Protocol):
    kind: Kind
    workers: int

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """The outcomes of ``jobs``, in their order."""

    def close(self) -> None: ...


def ray_configured(address: str | None) -> bool:
    """Ray can be used and a cluster is named (argument or ``RAY_ADDRESS``)."""
    return importlib.util.find_spec("ray") is not None and bool(
        address or os.environ.get("RAY_ADDRESS"))


def choose(executor: Executor, workers: int, ray_address: str | None) -> Kind:
    if executor != "auto":
        return executor
    if ray_configured(ray_address):
        return "ray"
    return "processes" if workers > 1 else "inline"


def open_pool(kind: Kind, workers: int | None, recording: Recording, options: ReplayOptions,
              expectation: Expectation, ray_address: str | None = None) -> Pool:
    """A pool of ``workers`` (None: the CPUs this process may use, or on Ray the cluster's)."""
    if kind == "inline":
        return InlinePool(recording, options, expectation)
    if kind == "processes":
        return ProcessPool(workers or len(os.sched_getaffinity(0)), recording, options,
                           expectation)
    return RayPool(workers, recording, options, expectation, ray_address)


class InlinePool:
    """One replay at a time, in this process (no start-up cost)."""

    kind: Kind = "inline"
    workers = 1

    def __init__(self, recording: Recording, options: ReplayOptions,
                 expectation: Expectation) -> None:
        self._args = (recording, options, expectation)

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        recording, options, expectation = self._args
        return [replay_outcome(recording, options, job.perturbations, expectation, None,
                               job.timeout_s) for job in jobs]

    def close(self) -> None:
        pass


# -- worker processes ----------
_worker_args: tuple[Recording, ReplayOptions, Expectation] | None = None


def _init_worker(recording: Recording, options: ReplayOptions,
                 expectation: Expectation) -> None:
    global _worker_args
    _worker_args = (recording, options, expectation)


def _run_in_worker(job: Job, slot: int) -> Outcome:
    assert _worker_args is not None, "worker not initialised"
    recording, options, expectation = _worker_args
    return replay_outcome(recording, options, job.perturbations, expectation, slot,
                          job.timeout_s)


class ProcessPool:
    """``workers`` spawned processes on this machine."""

    kind: Kind = "processes"

    def __init__(self, workers: int, recording: Recording, options: ReplayOptions,
                 expectation: Expectation) -> None:
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(recording, options, expectation))

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        free = list(range(self.workers))
        pending: dict[Future[Outcome], tuple[int, int]] = {}
        queue = list(enumerate(jobs))
        try:
            while queue or pending:
                while queue and free:
                    index, job = queue.pop(0)
                    slot = free.pop(0)
                    pending[self._executor.submit(_run_in_worker, job, slot)] = (index, slot)
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    index, slot = pending.pop(future)
                    free.append(slot)
                    results[index] = future.result()
        except BrokenProcessPool as err:
            raise FuzzError(f"a replay worker process died: {err}") from err
        return [results[i] for i in range(len(jobs))]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- Ray ----------
class _ReplayActor:
    """A Ray actor: one worker slot holding the recording (deserialised once)."""

    def __init__(self, recording: Recording, options: ReplayOptions, expectation: Expectation,
                 slot: int) -> None:
        self._args = (recording, options, expectation)
        self._slot = slot

    def run(self, perturbations: tuple[Perturbation, ...], timeout_s: float | None
            ) -> Outcome:
        recording, options, expectation = self._args
        return replay_outcome(recording, options, perturbations, expectation, self._slot,
                              timeout_s)


class RayPool:
    """One Ray actor per slot (``workers``, default the cluster's CPUs), each running one
    replay at a time."""

    kind: Kind = "ray"

    def __init__(self, workers: int | None, recording: Recording, options: ReplayOptions,
                 expectation: Expectation, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise FuzzError("--ray: the ray package is not installed") from None
        self._ray: Any = ray
        try:  # a cluster of our own is sized for the job
            self._started_here = connect_ray(
                address, num_cpus=workers or len(os.sched_getaffinity(0)),
                object_store_bytes=100 << 20)
        except ClusterUnavailable as err:
            raise FuzzError(str(err)) from None
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
            self.workers = max(1, min(cpus, workers) if workers else cpus)
            # Any: Ray's typing of remote classes does not follow our arguments
            actor: Any = ray.remote(num_cpus=1, max_restarts=0)(_ReplayActor)
            shared = ray.put(recording)  # once, whatever the number of actors
            self._actors = [actor.remote(shared, options, expectation, slot)
                            for slot in range(self.workers)]
        except ray.exceptions.RayError as err:
            self.close()
            raise FuzzError(f"Ray failed: {one_line(err)}") from err

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        ray = self._ray
        results: dict[int, Outcome] = {}
        free = list(range(self.workers))
        pending: dict[Any, tuple[int, int]] = {}
        queue = list(enumerate(jobs))
        try:
            while queue or pending:
                while queue and free:
                    index, job = queue.pop(0)
                    slot = free.pop(0)
                    ref = self._actors[slot].run.remote(job.perturbations, job.timeout_s)
                    pending[ref] = (index, slot)
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index, slot = pending.pop(ref)
                    free.append(slot)
                    results[index] = ray.get(ref)
        except ray.exceptions.RayError as err:
            raise FuzzError(f"Ray failed: {one_line(err)}") from err
        return [results[i] for i in range(len(jobs))]

    def close(self) -> None:
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor)
        if self._started_here:
            self._ray.shutdown()
