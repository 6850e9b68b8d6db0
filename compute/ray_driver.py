"""Running windows: in-process for one, as Ray tasks for many (or when a cluster is named).

One code path for laptop and cluster: ``lake.connect_ray(address)`` joins the cluster
named (or ``RAY_ADDRESS``) or starts a local one. Each window is
``compute.analysis.run_window`` (a plain function: reads the lake, publishes its graph
snapshot, returns its causal edges); the driver collects the edges and writes them to the
lake once, so tasks never race on the ``causal_edges`` table. At most
``ray_max_in_flight`` tasks are submitted at a time (default twice the cluster's CPUs), so
a month of windows does not flood the object store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from kprobe import lake
from kprobe.compute.analysis import WindowOutput, run_window, write_edges
from kprobe.compute.domain import Rules, load_rules
from kprobe.compute.errors import ComputeError, DistributedError
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import one_line

Executor = Literal["auto", "local", "ray"]


def analyze_windows(location: lake.LakeLocation, windows: list[Window],
                    settings: ComputeSettings, *, rules: Rules | None = None,
                    executor: Executor = "auto",
                    on_done: Callable[[WindowOutput], None] | None = None,
                    ) -> tuple[list[WindowOutput], int]:
    """Analyse ``windows``; returns their outputs (window order) and causal-edge rows written."""
    rules = rules or load_rules(settings.rules_path)
    use_ray = executor == "ray" or (
        executor == "auto" and (len(windows) > 1 or settings.ray_address is not None))
    if use_ray:
        outputs = _on_ray(location, windows, settings, rules, on_done)
    else:
        outputs = []
        for window in windows:
            output = run_window(location, window, settings, rules)
            outputs.append(output)
            if on_done:
                on_done(output)
    return outputs, write_edges(location, outputs, settings)


def start_ray(settings: ComputeSettings) -> bool:
    """Join (or start) the cluster unless this process already has; True when this call
    did, so the caller shuts it down (a long-lived driver, ``kprobe analyze --follow``,
    keeps one cluster for its life instead of one per batch of windows)."""
    try:
        return lake.connect_ray(settings.ray_address, num_cpus=settings.ray_num_cpus,
                                object_store_bytes=(settings.ray_object_store_mb or 0) << 20)
    except lake.ClusterUnavailable as err:
        raise DistributedError(str(err)) from None


def _on_ray(location: lake.LakeLocation, windows: list[Window], settings: ComputeSettings,
            rules: Rules, on_done: Callable[[WindowOutput], None] | None) -> list[WindowOutput]:
    import ray  # only the driver of a distributed run needs Ray imported
    from ray.exceptions import RayError, RayTaskError

    started_here = start_ray(settings)
    try:
        # Any: Ray's typing of remote functions does not follow our arguments
        task: Any = ray.remote(num_cpus=1, max_retries=2)(run_window)
        in_flight = settings.ray_max_in_flight or max(
            2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
        # a task holds one CPU: its DuckDB gets one thread unless told otherwise. With a
        # thread per core each, the tasks oversubscribed the cores, and a second thread
        # bought a window no time anyway (bench_compute, 2 cores: 7.8 s per window on one
        # thread, 8.0 s on two, 25 % more CPU)
        per_task = settings.model_copy(update={"duckdb_threads": settings.duckdb_threads or 1})
        location_ref, settings_ref, rules_ref = (ray.put(location), ray.put(per_task),
                                                 ray.put(rules))
        pending: dict[Any, int] = {}
        results: dict[int, WindowOutput] = {}
        queue = list(enumerate(windows))
        while queue or pending:
            while queue and len(pending) < in_flight:
                index, window = queue.pop(0)
                pending[task.remote(location_ref, window, settings_ref, rules_ref)] = index
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    output = ray.get(ref)
                except RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, ComputeError | lake.LakeError):
                        raise type(cause)(f"window {windows[index].id}: {cause}") from err
                    raise DistributedError(f"window {windows[index].id} failed: "
                                           f"{one_line(err)}") from err
                results[index] = output
                if on_done:
                    on_done(output)
        return [results[i] for i in range(len(windows))]
    except RayError as err:
        raise DistributedError(f"Ray failed: {one_line(err)}") from err
    finally:
        if started_here:
            ray.shutdown()
