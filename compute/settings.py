"""Settings of the causal engine, from ``KPROBE_COMPUTE_*`` environment variables.

No instance is created at import time: callers build one (``ComputeSettings()``) and pass it
down, so Ray tasks receive exactly the settings of the driver.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MS = 1_000_000
S = 1_000_000_000


class ComputeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KPROBE_COMPUTE_", extra="ignore")

    # Windows ------------------------------------------------------------------------------
    window_ns: int = Field(default=60 * S, gt=0)  # default window length for `analyze`
    max_windows: int = Field(default=10_000, gt=0)  # refuse absurd ranges
    # Kernel history loaded before the window, so a thread's state at the window start is
    # known (its last switch happened before the window).
    lookback_ns: int = Field(default=5 * S, ge=0)
    # Blocked intervals (offcpu, reclaim, block I/O) may have started this long before.
    long_interval_ns: int = Field(default=120 * S, ge=0)
    # Parent spans that started this long before the window are loaded for context.
    span_context_ns: int = Field(default=300 * S, ge=0)

    # Attribution ---------------------------------------------------------------------------
    # A cause edge below this delay is noise (a healthy span has short waits everywhere).
    min_delay_ns: int = Field(default=1 * MS, ge=0)
    # A failed operation's causes: the first few by rank, and every one at least this large
    # (concurrent faults are all reported, however many neighbours delayed it a little).
    material_delay_ns: int = Field(default=10 * MS, ge=0)
    # Reclaim rows (any thread, same memcg) closer than this form one pressure episode.
    episode_gap_ns: int = Field(default=1 * S, ge=0)
    # Retransmits on one connection closer than this form one network episode.
    net_episode_gap_ns: int = Field(default=1 * S, ge=0)
    # page_alloc/fault rows are per flush interval, stamped at its end: look this far after
    # an episode for the allocations that happened during it.
    alloc_flush_slack_ns: int = Field(default=5 * S, ge=0)
    # A disk wait on a device while it is idle this soon after one of its busy periods (its
    # writes held back after the latency that busy period caused) is that period's cost.
    disk_aftermath_ns: int = Field(default=250 * MS, ge=0)
    # An offcpu row belongs to the blocked interval that starts within this of its ts.
    offcpu_match_tolerance_ns: int = Field(default=50_000, ge=0)
    # Follow lock holders and remote servers this many hops from the operation.
    max_chain_depth: int = Field(default=3, ge=0, le=8)
    # Drivers (processes) kept per episode, and evidence rows kept per edge.
    max_drivers: int = Field(default=5, gt=0)
    max_evidence_rows: int = Field(default=20, gt=0)
    page_size: int = Field(default=4096, gt=0)
    # Interval joins are bucketed on time so that a thread with a million intervals and a
    # thousand spans is not a million-by-thousand join.
    join_bucket_ns: int = Field(default=20 * MS, gt=0)
    # Timelines of every thread, not only those that ran spans and their wakers (slower).
    timeline_all_threads: bool = False

    # Domain --------------------------------------------------------------------------------
    rules_path: Path | None = None  # default: compute/domain_rules.yaml

    # Engines -------------------------------------------------------------------------------
    duckdb_threads: int | None = None  # None: every core in-process, 1 in a Ray task
    duckdb_memory_limit: str | None = None
    graph_buffer_pool_mb: int = Field(default=256, gt=0)
    graph_cache_dir: Path = Path.home() / ".cache" / "kprobe" / "graphs"
    ray_address: str | None = None  # None: a local cluster (or RAY_ADDRESS)
    ray_num_cpus: int | None = None  # local cluster only
    ray_object_store_mb: int | None = None  # local cluster only
    ray_max_in_flight: int = Field(default=0, ge=0)  # 0: twice the cluster's CPUs
