"""Dependencies, as ``Annotated`` aliases the routers put in their signatures.

Per-process objects (the live hub, the replay runner, the token store, the DuckDB database
with its open tables, the SQL admission, the causal answer cache) hang off ``app.state``
and are built on first use from the injected settings, so tests that override
``get_settings`` / ``get_lake_settings`` get objects built from their settings.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeDatabase, LakeLocation, LakeSettings, resolve
from kprobe.lake.timespec import TimeSpecError, parse_instant
from kprobe.query_api.admission import Admission, lower_priority
from kprobe.query_api.auth import Principal, TokenStore, authenticate
from kprobe.query_api.cache import AnswerCache
from kprobe.query_api.causal import Slots
from kprobe.query_api.confine import unavailable_reason
from kprobe.query_api.cypher_worker import CypherPool
from kprobe.query_api.errors import BadRequest, Forbidden, ServiceUnavailable
from kprobe.query_api.live import LiveHub
from kprobe.query_api.metrics import ApiMetrics
from kprobe.query_api.ondemand import OnDemand
from kprobe.query_api.replays import ReplayRunner
from kprobe.query_api.settings import (
    ApiSettings,
    Scope,
    get_compute_settings,
    get_lake_settings,
    get_settings,
)

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
LakeSettingsDep = Annotated[LakeSettings, Depends(get_lake_settings)]
ComputeSettingsDep = Annotated[ComputeSettings, Depends(get_compute_settings)]

_bearer = HTTPBearer(auto_error=False, description="a token from the tokens file")
_state_lock = threading.Lock()
T = TypeVar("T")


# The dependencies below that only look up per-process objects are ``async def``: FastAPI
# runs a plain ``def`` dependency on a worker thread, and under load every such hop is a
# thread switch and a wait for the GIL (profiled with 50 concurrent clients: the hops and
# the location's ``Path.resolve`` were most of an explain served from the cache).


def location_of(request: HTTPConnection, lake: LakeSettings) -> LakeLocation:
    """The lake's location, resolved once per settings (a bare path is resolved on disk)."""
    location: LakeLocation = _state(request, "location", lake, lambda: resolve(lake))
    return location


async def get_location(request: HTTPConnection, lake: LakeSettingsDep) -> LakeLocation:
    return location_of(request, lake)


LocationDep = Annotated[LakeLocation, Depends(get_location)]


async def get_metrics(request: HTTPConnection) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def _state(request: HTTPConnection, name: str, key: Any, build: Any) -> Any:
    """``app.state.<name>`` built by ``build()``; rebuilt if ``key`` (its settings) changed."""
    with _state_lock:
        current = getattr(request.app.state, name, None)
        if current is None or current[0] != key:
            current = (key, build())
            setattr(request.app.state, name, current)
        return current[1]


def token_store(request: HTTPConnection, settings: ApiSettings) -> TokenStore | None:
    """The token store, or None when authentication is disabled."""
    if settings.auth_disabled:
        return None
    if settings.tokens_file is None:
        raise ServiceUnavailable("no tokens file configured (KPROBE_API_TOKENS_FILE or "
                                 "kprobe serve --tokens-file); every request is refused")
    path = settings.tokens_file
    store: TokenStore = _state(request, "token_store", str(path), lambda: TokenStore(path))
    return store


def _require(scope: Scope, node_confined: bool = False) -> Any:
    # on the event loop: a stat of the tokens file and a hash (it re-reads the file only
    # when the file changed). node_confined: the route confines its answer to the token's
    # nodes; any other route refuses a node-scoped token (query_api/auth.py).
    async def check(request: Request, settings: SettingsDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None,
                                           Depends(_bearer)],
                    ) -> Principal:
        token = credentials.credentials if credentials else None
        store = token_store(request, settings)
        try:
            principal = authenticate(store, token, scope, node_confined=node_confined)
        except Forbidden:
            known = store.lookup(token) if store is not None and token else None
            request.state.principal = known.name if known else "anonymous"
            raise
        request.state.principal = principal.name  # for the audit line
        return principal

    return check


ReadAccess = Annotated[Principal, Depends(_require("read"))]
# read, for routes that confine what they read and return to the token's nodes
NodeReadAccess = Annotated[Principal, Depends(_require("read", node_confined=True))]
ReplayAccess = Annotated[Principal, Depends(_require("replay"))]


def get_hub(request: HTTPConnection, location: LocationDep, settings: SettingsDep,
            metrics: MetricsDep) -> LiveHub:
    hub: LiveHub = _state(request, "live_hub", (location, settings.model_dump_json()),
                          lambda: LiveHub(location, settings, metrics))
    return hub


def get_runner(request: HTTPConnection, location: LocationDep, lake: LakeSettingsDep,
               settings: SettingsDep, metrics: MetricsDep) -> ReplayRunner:
    runner: ReplayRunner = _state(
        request, "replay_runner", (location, settings.model_dump_json()),
        lambda: ReplayRunner(location, lake, settings, metrics))
    return runner


async def get_graph_slots(request: HTTPConnection, settings: SettingsDep) -> Slots:
    slots: Slots = _state(request, "graph_slots",
                          (settings.graph_max_open, settings.graph_wait_s),
                          lambda: Slots("graph", settings.graph_max_open,
                                        settings.graph_wait_s))
    return slots


async def get_lake_db(request: HTTPConnection, location: LocationDep,
                      settings: SettingsDep) -> LakeDatabase:
    """The process's DuckDB database over the lake, with its open tables."""
    def build() -> LakeDatabase:
        spill = settings.sql_temp_directory
        if spill is None:  # private to this process; removed at shutdown (app.py)
            spill = Path(tempfile.mkdtemp(prefix="kprobe-serve-spill-"))
            request.app.state.spill_dir = spill
        before = _thread_ids()
        db = LakeDatabase(location, threads=settings.sql_threads,
                          memory_limit=settings.sql_memory_limit,
                          max_staleness_s=settings.lake_max_staleness_s,
                          temp_directory=str(spill),
                          max_temp_size=settings.sql_max_temp_size)
        lower_priority(sorted(_thread_ids() - before))  # DuckDB's own worker threads
        return db

    db: LakeDatabase = _state(
        request, "lake_db",
        (location, settings.sql_threads, settings.sql_memory_limit,
         settings.lake_max_staleness_s, settings.sql_temp_directory,
         settings.sql_max_temp_size), build)
    return db


async def get_sql_admission(request: HTTPConnection, settings: SettingsDep,
                            metrics: MetricsDep) -> Admission:
    def build() -> Admission:
        built = Admission("SQL", settings.sql_max_concurrent, settings.sql_max_queued,
                          settings.sql_queue_wait_s,
                          running_per_principal=settings.sql_max_concurrent_per_token,
                          queued_per_principal=settings.sql_max_queued_per_token)
        metrics.admitted.labels("sql").set_function(lambda: built.admitted)
        return built

    admission: Admission = _state(
        request, "sql_admission",
        (settings.sql_max_concurrent, settings.sql_max_queued, settings.sql_queue_wait_s,
         settings.sql_max_concurrent_per_token, settings.sql_max_queued_per_token),
        build)
    return admission


async def get_cypher_pool(request: HTTPConnection, location: LocationDep,
                          settings: SettingsDep, compute: ComputeSettingsDep
                          ) -> CypherPool | None:
    """The confined Cypher workers of this process (None: ``cypher_isolation = "none"``)."""
    if settings.cypher_isolation == "none":
        return None
    reason = unavailable_reason()
    if reason is not None:
        raise ServiceUnavailable(f"Cypher is refused on this host: its worker cannot be "
                                 f"confined: {reason} (KPROBE_API_CYPHER_ISOLATION=none "
                                 "runs it behind the parser alone)")
    from kprobe.compute.graph.store import readable_roots

    roots = readable_roots(location, compute)
    pool: CypherPool = _state(
        request, "cypher_pool", (location, tuple(roots), settings.cypher_workers,
                                 settings.graph_wait_s),
        lambda: CypherPool(roots, settings.cypher_workers, settings.graph_wait_s))
    return pool


async def get_causal_cache(request: HTTPConnection, settings: SettingsDep) -> AnswerCache:
    cache: AnswerCache = _state(request, "causal_cache", settings.causal_cache_entries,
                                lambda: AnswerCache(settings.causal_cache_entries))
    return cache


async def get_ondemand(request: HTTPConnection, location: LocationDep,
                       settings: SettingsDep, compute: ComputeSettingsDep,
                       metrics: MetricsDep) -> OnDemand:
    """This process's on-demand analyses (query_api/ondemand.py)."""
    def build() -> OnDemand:
        from kprobe.compute.analysis import run_window_if, write_edges
        from kprobe.compute.graph.store import list_snapshots
        from kprobe.compute.window_lock import is_busy

        def analyse(window: Window, proceed: Callable[[], bool]) -> None:
            # the path of `kprobe analyze` for one window: run_window, then write_edges
            output = run_window_if(location, window, compute, proceed)
            if output is not None:
                write_edges(location, [output], compute)

        def published_since(window: Window, ns: int) -> bool:
            return any(s.window_id == window.id and int(s.manifest.get("created_ns", 0)) >= ns
                       for s in list_snapshots(location))

        return OnDemand(analyse, lambda window: is_busy(location, window, compute),
                        published_since,
                        max_concurrent=settings.analyze_max_concurrent,
                        timeout_s=settings.analyze_timeout_s,
                        count=lambda outcome: metrics.analyses.labels(outcome).inc())

    ondemand: OnDemand = _state(
        request, "ondemand", (location, compute.model_dump_json(),
                              settings.analyze_max_concurrent, settings.analyze_timeout_s),
        build)
    return ondemand


GraphSlotsDep = Annotated[Slots, Depends(get_graph_slots)]
OnDemandDep = Annotated[OnDemand, Depends(get_ondemand)]
LakeDbDep = Annotated[LakeDatabase, Depends(get_lake_db)]
SqlAdmissionDep = Annotated[Admission, Depends(get_sql_admission)]
CausalCacheDep = Annotated[AnswerCache, Depends(get_causal_cache)]
CypherPoolDep = Annotated[CypherPool | None, Depends(get_cypher_pool)]
RunnerDep = Annotated[ReplayRunner, Depends(get_runner)]
HubDep = Annotated[LiveHub, Depends(get_hub)]


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def parse_time(value: str | None, name: str) -> int | None:
    """A time parameter as epoch ns (None stays None); BadRequest names the parameter."""
    if value is None or value == "":
        return None
    try:
        parsed = parse_instant(value)
    except TimeSpecError as err:
        raise BadRequest(f"{name}: {err}") from None
    except (OverflowError, ValueError, OSError):
        raise BadRequest(f"{name}: {value!r} is out of range") from None
    if not 0 <= parsed < 2**63:
        raise BadRequest(f"{name}: {value!r} is out of range")
    return parsed
