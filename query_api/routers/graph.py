"""``POST /v1/graph/cypher`` (read-only Cypher on window snapshots) and the window list."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from kprobe.compute.graph import list_snapshots
from kprobe.query_api.audit import note
from kprobe.query_api.causal import run_cypher, select
from kprobe.query_api.cypher_guard import check_read_only
from kprobe.query_api.deps import (
    ComputeSettingsDep,
    CypherPoolDep,
    GraphSlotsDep,
    LocationDep,
    ReadAccess,
    SettingsDep,
    parse_time,
)
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import CypherRequest, CypherResponse
from kprobe.query_api.sql import table_rows

router = APIRouter(prefix="/v1/graph", tags=["causal"])


@router.post("/cypher", response_model=CypherResponse,
             responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
             summary="Read-only Cypher on the analysed windows' graph snapshots")
def cypher(request: Request, body: CypherRequest, location: LocationDep,
           compute: ComputeSettingsDep, settings: SettingsDep, slots: GraphSlotsDep,
           pool: CypherPoolDep, _: ReadAccess) -> Response:
    """Runs on every selected window (``window``, or ``from``/``to``, default all); rows
    get a ``window`` column. Only the read-only subset is accepted (MATCH, OPTIONAL MATCH,
    WHERE, WITH, UNWIND, RETURN, ORDER BY, SKIP, LIMIT, UNION, and CALL of the catalogue
    functions); the statement then runs in a confined worker that cannot read host files
    or reach the network. Answers are cut at ``max_rows`` and the server's byte limit
    (``truncated``); page with SKIP/LIMIT on an ORDER BY."""
    note(request, statement=body.cypher)
    statement = check_read_only(body.cypher)
    snapshots = select(location, body.window, parse_time(body.from_, "from"),
                       parse_time(body.to, "to"))
    max_rows = min(body.max_rows if body.max_rows is not None else settings.cypher_max_rows,
                   settings.cypher_max_rows)
    timeout_s = min(body.timeout_s or settings.cypher_timeout_s, settings.cypher_timeout_s)
    with slots.hold():
        result = run_cypher(location, compute, statement, dict(body.params), snapshots,
                            max_rows=max_rows, max_bytes=settings.cypher_max_bytes,
                            timeout_s=timeout_s, pool=pool)
    table = result.table
    note(request, rows=table.num_rows, truncated=result.truncated)
    rows: list[list[Any]] = []
    for start in range(0, table.num_rows, 2048):  # a slice at a time: the GIL is shared
        rows.extend(table_rows(table.slice(start, 2048)))
    document = {"columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
                "rows": rows, "row_count": table.num_rows, "truncated": result.truncated,
                "truncated_by": ("rows" if table.num_rows >= max_rows else "bytes")
                if result.truncated else None,
                "windows": [s.window_id for s in snapshots]}
    return Response(json.dumps(document, ensure_ascii=False, allow_nan=False),
                    media_type="application/json")


@router.get("/windows", summary="Analysed windows with a graph snapshot",
            responses=problem_responses(401, 403, 503))
def windows(location: LocationDep, _: ReadAccess) -> dict[str, Any]:
    return {"windows": [{"window": s.window_id, "start_ns": s.window.start_ns,
                         "end_ns": s.window.end_ns, "nodes": list(s.window.nodes),
                         "counts": s.manifest.get("counts", {}),
                         "created_ns": s.manifest.get("created_ns")}
                        for s in list_snapshots(location)]}
