"""Settings of the HTTP service, from ``KPROBE_API_*`` environment variables.

Nothing is created at import time: ``get_settings()`` (cached) builds the one instance a
process uses and routes receive it through ``Depends``; tests replace it with
``app.dependency_overrides[get_settings]``. The lake's own settings (``KPROBE_LAKE``,
``KPROBE_S3_*``) stay in ``lake.LakeSettings`` and the causal engine's in
``compute.ComputeSettings``; both are injected the same way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings

# payloads: on top of read, what programs exchanged (query_api/payload_scope.py)
Scope = Literal["read", "replay", "payloads"]
SCOPES: tuple[Scope, ...] = ("read", "replay", "payloads")


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KPROBE_API_", extra="ignore")

    # Listening (used by `kprobe serve`) -----------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)

    # Security ------------------------------------------------------------------------------
    # JSON file of {"tokens": [{"name", "sha256", "scopes"}]}; only hashes are stored.
    tokens_file: Path | None = None
    # Serve without tokens (a trusted loopback only); `kprobe serve` asks for --no-auth.
    auth_disabled: bool = False
    # Origins allowed to call from a browser; empty = CORS closed (no CORS headers at all).
    cors_origins: list[str] = Field(default_factory=list)
    # Host header values accepted (DNS rebinding: a browser page of another site resolving
    # its name to this server). Empty: the bind address and the loopback names; "*" any
    # (the default when bound to a wildcard address, where names are the deployment's).
    # WebSocket Origins must be one of these hosts or a cors_origins entry.
    allowed_hosts: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(default=1 << 20, gt=0)
    # HTTP front door (`kprobe serve`): a request's line and headers must arrive within
    # header_timeout_s and fit in max_header_bytes; its body within body_timeout_s. At most
    # max_connections at once; beyond, new connections are closed at once.
    header_timeout_s: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 << 10, ge=1024)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    # One structured line per SQL, Cypher and replay request (logger kprobe.audit); a path
    # appends them to that file instead of standard error.
    audit_log: Path | None = None
    # The built console served at / (query_api/console.py); default: console/dist of the
    # source tree (make setup builds it).
    console_dir: Path | None = None

    # SQL -----------------------------------------------------------------------------------
    sql_default_rows: int = Field(default=10_000, gt=0)
    sql_max_rows: int = Field(default=100_000, gt=0)
    # Bytes of one answer (Arrow bytes read, and the encoded body): more is cut at a row
    # boundary (truncated, truncated_by "bytes", next_offset to ask for the rest).
    sql_max_bytes: int = Field(default=32 << 20, gt=0)
    sql_timeout_s: float = Field(default=30.0, gt=0)
    sql_max_chars: int = Field(default=100_000, gt=0)
    # Statements (SQL, timelines) running at once in this process. They share one DuckDB
    # database, whose threads already use every core: more at once only adds memory
    # (measured on 2 cores: 11.5 statements/s with 2 at once, 11.8 with 4, 10.8 with 8).
    sql_max_concurrent: int = Field(default=4, gt=0)
    # Statements waiting for a slot, in arrival order; one more is refused at once with
    # 503 + Retry-After, and so is one that waited sql_queue_wait_s without a slot.
    sql_max_queued: int = Field(default=64, ge=0)
    sql_queue_wait_s: float = Field(default=30.0, gt=0)
    # DuckDB threads and memory limit of this process's database (None: DuckDB's defaults,
    # every core and 80% of RAM). Shared by its running statements; with several workers
    # on one machine, divide.
    sql_threads: int | None = Field(default=None, gt=0)
    sql_memory_limit: str | None = Field(default="1GiB",
                                         pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    # Where statements over the memory limit spill, and how much (default: a private
    # directory of this process under the system's temporary directory, removed on exit).
    sql_temp_directory: Path | None = None
    sql_max_temp_size: str = Field(default="4GiB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    # Statements of one token running / waiting at once: one client cannot take every slot
    # (default: half the slots, at least 1; queued beyond the per-token cap: 429).
    sql_max_concurrent_per_token: int | None = Field(default=None, gt=0)
    sql_max_queued_per_token: int = Field(default=16, ge=0)

    # Lake freshness ------------------------------------------------------------------------
    # Open Delta tables are kept between requests and checked for new commits: 0 checks
    # for every request (a commit that completed before a request arrived is always in its
    # answer; concurrent requests share checks); a positive value lets a check serve
    # requests arriving up to that many seconds after it began (fewer object-store
    # listings, commits visible up to that late).
    lake_max_staleness_s: float = Field(default=0.0, ge=0, le=60)
    # Explanations and trace graphs kept per process, keyed by the graph snapshots they
    # were computed from (a re-analysis publishes a new snapshot, hence a new key).
    causal_cache_entries: int = Field(default=256, ge=0)

    # Causal graph --------------------------------------------------------------------------
    cypher_timeout_s: float = Field(default=30.0, gt=0)
    cypher_max_rows: int = Field(default=10_000, gt=0)
    cypher_max_bytes: int = Field(default=16 << 20, gt=0)  # Arrow bytes of one answer
    # User Cypher runs in confined worker processes (query_api/cypher_worker.py): "sandbox"
    # (the default) refuses Cypher with 503 where the kernel cannot confine them (no
    # Landlock ABI 4); "none" runs it in the server process behind the parser alone.
    cypher_isolation: Literal["sandbox", "none"] = "sandbox"
    cypher_workers: int = Field(default=2, gt=0, le=14)
    transactions_max_page: int = Field(default=500, gt=0)
    # Graph snapshots open at once in this process. Each open LadybugDB database reserves
    # 8 TiB of address space: ~16 at once exhaust a 47-bit address space (measured: 50
    # concurrent explains failed with "Mmap for size 8796093022208 failed").
    graph_max_open: int = Field(default=8, gt=0, le=14)
    graph_wait_s: float = Field(default=30.0, gt=0)

    # On-demand analysis (query_api/ondemand.py) --------------------------------------------
    # An explanation asked for a transaction whose window has no graph snapshot, or whose
    # snapshot is older than spans that arrived since, analyses that window in this process
    # (as `kprobe analyze` would, publishing its snapshot). Needs write access to the lake's
    # graphs/ and causal_edges; false: answer only from existing snapshots.
    analyze_on_demand: bool = True
    # How long a request waits for its analysis; past it, 503 "analysis of window W is
    # running; retry after N s" and the analysis finishes in the background.
    analyze_timeout_s: float = Field(default=20.0, gt=0, le=600)
    # Analyses running at once in this process; one more is refused (503 + Retry-After).
    analyze_max_concurrent: int = Field(default=1, gt=0, le=8)
    # Without from/to, how far back (seconds) the spans table is searched for the transaction.
    analyze_search_s: float = Field(default=86_400.0, gt=0)
    # Windows a request may analyse (a business id that names several traces).
    analyze_max_windows: int = Field(default=4, gt=0, le=64)
    # Snapshots made within this many seconds after their window's end are checked for
    # spans that arrived since (one count per answer); older ones are final.
    analyze_recheck_s: float = Field(default=900.0, ge=0)

    # Timeline ------------------------------------------------------------------------------
    timeline_max_points: int = Field(default=2_000, ge=100)  # per section of a response
    timeline_max_threads: int = Field(default=64, gt=0)

    # Live stream ---------------------------------------------------------------------------
    live_poll_interval_s: float = Field(default=0.5, gt=0)
    live_queue_messages: int = Field(default=256, gt=0)  # per client, then drop and tell
    live_rows_per_message: int = Field(default=500, gt=0)
    live_max_clients: int = Field(default=200, gt=0)

    # Replays -------------------------------------------------------------------------------
    replay_max_running: int = Field(default=2, gt=0)  # per replica; more -> 429
    replay_heartbeat_s: float = Field(default=5.0, gt=0)
    ray_address: str | None = None  # set: replays run as Ray tasks on that cluster
    readiness_timeout_s: float = Field(default=5.0, gt=0)


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()


@lru_cache
def get_lake_settings() -> LakeSettings:
    return LakeSettings()


@lru_cache
def get_compute_settings() -> ComputeSettings:
    return ComputeSettings()
