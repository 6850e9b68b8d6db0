"""``POST /v1/graph/cypher`` (read-only Cypher on window snapshots) and the window list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from compute.graph import list_snapshots
from query_api.causal import run_cypher, select
from query_api.cypher_guard import check_read_only
from query_api.deps import (
    ComputeSettingsDep,
    GraphSlotsDep,
    LocationDep,
    ReadAccess,
    SettingsDep,
    parse_time,
)
from query_api.problems import problem_responses
from query_api.schemas import CypherRequest, CypherResponse

router = APIRouter(prefix="/v1/graph", tags=["causal"])


@router.post("/cypher", response_model=CypherResponse,
             responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
             summary="Read-only Cypher on the analysed windows' graph snapshots")
def cypher(body: CypherRequest, location: LocationDep, compute: ComputeSettingsDep,
           settings: SettingsDep, slots: GraphSlotsDep, _: ReadAccess) -> dict[str, Any]:
    """Runs on every selected window (``window``, or ``from``/``to``, default all); rows
    get a ``window`` column. Write clauses, COPY, LOAD, EXPORT, INSTALL, ATTACH and CALL
    (other than catalogue functions) are refused before the engine sees them."""
    statement = check_read_only(body.cypher)
    snapshots = select(location, body.window, parse_time(body.from_, "from"),
                       parse_time(body.to, "to"))
    max_rows = min(body.max_rows if body.max_rows is not None else settings.cypher_max_rows,
                   settings.cypher_max_rows)
    timeout_s = min(body.timeout_s or settings.cypher_timeout_s, settings.cypher_timeout_s)
    with slots.hold():
        return run_cypher(location, compute, statement, dict(body.params), snapshots,
                          max_rows=max_rows, timeout_s=timeout_s)


@router.get("/windows", summary="Analysed windows with a graph snapshot",
            responses=problem_responses(401, 403, 503))
def windows(location: LocationDep, _: ReadAccess) -> dict[str, Any]:
    return {"windows": [{"window": s.window_id, "start_ns": s.window.start_ns,
                         "end_ns": s.window.end_ns, "nodes": list(s.window.nodes),
                         "counts": s.manifest.get("counts", {}),
                         "created_ns": s.manifest.get("created_ns")}
                        for s in list_snapshots(location)]}
