"""Liveness, readiness (the lake answers) and Prometheus metrics; no token needed."""

from __future__ import annotations

import asyncio
import concurrent.futures

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from kprobe.lake import LakeError, LakeUnavailable
from kprobe.query_api.deps import LakeDbDep, LocationDep, MetricsDep, SettingsDep
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import Health

router = APIRouter(tags=["health"])
# Readiness probes run here, never on the request threads: a hung lake must not pile up
# threads (one probe at a time; the others wait for its answer or the timeout).
_probe = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    # answered by the front door (query_api/http_guard.py) before routing; kept here for
    # the schema and for apps run without it
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="The lake is reachable and readable",
            responses=problem_responses(503))
async def readyz(location: LocationDep, settings: SettingsDep, db: LakeDbDep) -> Health:
    future = asyncio.get_running_loop().run_in_executor(_probe, db.tables.check_readable)
    try:
        await asyncio.wait_for(asyncio.shield(future), settings.readiness_timeout_s)
    except TimeoutError:
        raise LakeUnavailable(f"lake unavailable: {location.root} did not answer within "
                              f"{settings.readiness_timeout_s:g} s") from None
    except LakeError as err:
        if isinstance(err, LakeUnavailable):
            raise
        raise LakeUnavailable(f"lake unreadable: {err}") from None
    return Health(status="ready", lake=location.root)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
