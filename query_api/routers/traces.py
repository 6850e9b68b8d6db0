"""``GET /v1/traces/{trace_id}/graph``: a trace's causal graph for a force layout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from kprobe.query_api.cache import encode_answer, snapshots_key
from kprobe.query_api.causal import select, trace_graph
from kprobe.query_api.deps import (
    CausalCacheDep,
    ComputeSettingsDep,
    GraphSlotsDep,
    LocationDep,
    ReadAccess,
    parse_time,
)
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.routers.transactions import TimeParam, WindowParam
from kprobe.query_api.schemas import TraceGraph

router = APIRouter(prefix="/v1/traces", tags=["causal"])


@router.get("/{trace_id}/graph", response_model=TraceGraph,
            responses=problem_responses(400, 401, 403, 404, 503),
            summary="Nodes and links of a trace's causal graph, colour-coded by delay")
def graph(trace_id: Annotated[str, Path(min_length=1, max_length=128)],
          location: LocationDep, compute: ComputeSettingsDep, slots: GraphSlotsDep,
          cache: CausalCacheDep, _: ReadAccess,
          from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
          to: TimeParam = None, window: WindowParam = None) -> Response:
    """Spans (group ``span``), the kernel episodes, threads and processes that delayed
    them, and links ``CHILD_OF`` / ``DELAYED_BY`` / ``CAUSED_BY`` with ``delay_ns``. Each
    node and link has a ``colour`` from the ``legend`` (green under 1 ms ... red from
    100 ms); ``source``/``target`` are node ids, as d3-force expects."""
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    # listed before computing: see query_api.cache
    snapshots = select(location, window or None, start, end)

    def compute_answer() -> bytes:
        with slots.hold():
            found = trace_graph(location, compute, trace_id, window_ids=window or None,
                                start_ns=start, end_ns=end)
        return encode_answer(TraceGraph, found)

    body = cache.get_or_compute(("graph", trace_id, snapshots_key(snapshots)),
                                compute_answer)
    return Response(body, media_type="application/json")
