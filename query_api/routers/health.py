"""Liveness, readiness (the lake answers) and Prometheus metrics; no token needed."""

from __future__ import annotations

import concurrent.futures

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from lake.deltaio import open_table, translate_errors
from lake.errors import LakeUnavailable
from lake.storage import LakeLocation
from query_api.deps import LocationDep, MetricsDep, SettingsDep
from query_api.problems import problem_responses
from query_api.schemas import Health

router = APIRouter(tags=["health"])
# Readiness probes run here, never on the request threads: a hung lake must not pile up
# threads (one probe at a time; the others wait for its answer or the timeout).
_probe = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


def lake_reachable(location: LakeLocation) -> None:
    """Raise LakeUnavailable unless the lake's storage answers."""
    if location.scheme == "file":
        if not location.local_path.is_dir():
            raise LakeUnavailable(f"lake unavailable: {location.local_path} does not exist")
        return
    with translate_errors("open agent_meta"):
        open_table(location, "agent_meta")  # a missing table is fine; no answer is not


@router.get("/readyz", response_model=Health, summary="The lake is reachable",
            responses=problem_responses(503))
def readyz(location: LocationDep, settings: SettingsDep) -> Health:
    future = _probe.submit(lake_reachable, location)
    try:
        future.result(timeout=settings.readiness_timeout_s)
    except concurrent.futures.TimeoutError:
        raise LakeUnavailable(f"lake unavailable: {location.root} did not answer within "
                              f"{settings.readiness_timeout_s:g} s") from None
    return Health(status="ready", lake=location.root)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
