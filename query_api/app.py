"""The FastAPI application: routers, error handlers, middleware, lifespan.

Stateless: every answer comes from the lake (tables, graph snapshots, job documents), so
any number of replicas can serve behind a load balancer. ``create_app()`` with no
arguments reads ``KPROBE_API_*`` / ``KPROBE_*`` settings (``uvicorn --factory``); tests
may pass settings. Either way they become the dependency overrides of ``get_settings``,
``get_lake_settings`` and ``get_compute_settings``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings
from kprobe.query_api import audit, console, docs, problems
from kprobe.query_api.audit import AuditMiddleware
from kprobe.query_api.http_guard import FrontDoor
from kprobe.query_api.limits import BodyLimitMiddleware
from kprobe.query_api.metrics import ApiMetrics, MetricsMiddleware
from kprobe.query_api.routers import (
    graph,
    health,
    live,
    replays,
    sql,
    timeline,
    trace_processes,
    traces,
    transactions,
    whoami,
)
from kprobe.query_api.settings import (
    ApiSettings,
    get_compute_settings,
    get_lake_settings,
    get_settings,
)

T = TypeVar("T")


def _version() -> str:
    try:
        return version("kprobe")
    except PackageNotFoundError:
        return "0"


class _DeniedHandshakeFilter(logging.Filter):
    """uvicorn 0.54's websockets-sansio protocol logs "ASGI callable returned without
    completing handshake" after a WebSocket denial response (a refused token), although the
    denial was sent correctly; drop that one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


_DENIED_FILTER = _DeniedHandshakeFilter()


def _constant(value: T) -> Callable[[], Awaitable[T]]:
    async def dependency() -> T:
        return value

    return dependency


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    hub = getattr(app.state, "live_hub", None)
    if hub is not None:
        await hub[1].close()
    runner = getattr(app.state, "replay_runner", None)
    if runner is not None:
        runner[1].stop_all()
    db = getattr(app.state, "lake_db", None)
    if db is not None:
        db[1].close()
    pool = getattr(app.state, "cypher_pool", None)
    if pool is not None:
        pool[1].close()
    ondemand = getattr(app.state, "ondemand", None)
    if ondemand is not None:  # a running analysis finishes; queued ones are dropped
        ondemand[1].close()
    spill = getattr(app.state, "spill_dir", None)
    if spill is not None:
        shutil.rmtree(spill, ignore_errors=True)


def create_app(settings: ApiSettings | None = None, lake: LakeSettings | None = None,
               compute: ComputeSettings | None = None) -> FastAPI:
    app = FastAPI(
        title="kprobe query API",
        version=_version(),
        summary="SQL over the event lake, causal explanations and graphs, timelines, a live "
                "stream of new events and failures, and sandboxed replays.",
        lifespan=_lifespan,
        docs_url=None, redoc_url=None,  # /docs is served locally (docs.py); no ReDoc
    )
    # The settings are read once, here, and served by ``async`` overrides: a plain function
    # as a dependency would cost every request a hop to a worker thread (see deps.py).
    effective = settings or get_settings()
    app.dependency_overrides[get_settings] = _constant(effective)
    app.dependency_overrides[get_lake_settings] = _constant(lake or get_lake_settings())
    app.dependency_overrides[get_compute_settings] = _constant(
        compute or get_compute_settings())
    logging.getLogger("uvicorn.error").addFilter(_DENIED_FILTER)  # idempotent
    audit.configure(effective.audit_log)
    app.state.metrics = ApiMetrics()
    problems.install(app)
    docs.install(app)
    for module in (health, sql, transactions, traces, trace_processes, graph, timeline, live,
                   replays, whoami):
        app.include_router(module.router)
    console.install(app, effective.console_dir)  # last: answers what no route does
    # Innermost first. Outward: the body's size and time limits, CORS, the front door
    # (health, Host, loopback, authentication before the body is read), metrics (every
    # answer, refusals included), the audit line (every SQL/Cypher/replay request).
    app.add_middleware(BodyLimitMiddleware, max_bytes=effective.max_request_bytes,
                       timeout_s=effective.body_timeout_s)
    if effective.cors_origins:  # closed by default: no CORS headers at all
        app.add_middleware(CORSMiddleware, allow_origins=effective.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept"],
                           expose_headers=["X-Kprobe-Row-Count", "X-Kprobe-Truncated",
                                           "X-Kprobe-Next-Offset", "Location"],
                           max_age=600)
    app.add_middleware(FrontDoor, settings=effective)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(AuditMiddleware)
    return app
