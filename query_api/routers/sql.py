"""``POST /v1/sql`` and ``GET /v1/tables``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from kprobe.lake.errors import LakeError
from kprobe.lake.sql_guard import check_read_only
from kprobe.query_api.audit import note
from kprobe.query_api.deps import LakeDbDep, MetricsDep, ReadAccess, SettingsDep, SqlAdmissionDep
from kprobe.query_api.errors import BadRequest, QueryApiError, QueryTimeLimit
from kprobe.query_api.payload_scope import may_read_payloads
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import SqlRequest, SqlResponse, TablesResponse
from kprobe.query_api.sql import (
    ARROW,
    JSON,
    MEDIA,
    PARQUET,
    describe_tables,
    encode,
    json_body,
    negotiate,
    run_statement,
)

router = APIRouter(prefix="/v1", tags=["sql"])

_SQL_RESPONSES = problem_responses(400, 401, 403, 413, 422, 503,
                                   _406="Accept names no format we produce")
_SQL_RESPONSES[200] = {
    "description": "the rows: JSON by default, Arrow IPC stream or Parquet by Accept",
    "content": {JSON: {}, ARROW: {}, PARQUET: {}}}


@router.post("/sql", response_model=SqlResponse, responses=_SQL_RESPONSES,
             summary="Run one read-only SQL statement over the lake")
async def run_sql(request: Request, body: SqlRequest, settings: SettingsDep,
                  metrics: MetricsDep, admission: SqlAdmissionDep, db: LakeDbDep,
                  principal: ReadAccess,
                  accept: Annotated[str | None, Header()] = None) -> Response:
    """One statement: SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN. DuckDB cannot
    reach files, URLs or extensions from it. The answer holds at most ``max_rows`` rows and
    the server's byte limit: beyond either it is cut at a row boundary (``truncated``,
    ``truncated_by``) and ``next_offset`` asks for the rest (send it back as ``offset``
    with the same statement; give the statement an ORDER BY on a unique key for pages that
    never overlap). A statement running past ``timeout_s``, its encoding included, is
    stopped (422). When every slot of the replica is taken: 503 with Retry-After; when this
    token already has its share running and waiting: 429."""
    fmt = negotiate(accept)
    if len(body.sql) > settings.sql_max_chars:
        raise BadRequest(f"statement longer than {settings.sql_max_chars} characters")
    note(request, statement=body.sql)
    max_rows = min(body.max_rows if body.max_rows is not None else settings.sql_default_rows,
                   settings.sql_max_rows)
    timeout_s = min(body.timeout_s or settings.sql_timeout_s, settings.sql_timeout_s)
    max_bytes = settings.sql_max_bytes

    def work() -> Response:
        started = time.perf_counter()
        result = run_statement(db, body.sql, max_rows, timeout_s, max_bytes=max_bytes,
                               offset=body.offset,
                               payloads=may_read_payloads(principal))
        deadline = started + timeout_s
        if fmt == "json":
            content, result = json_body(result, deadline, max_bytes)
        else:
            if time.perf_counter() > deadline:
                raise QueryTimeLimit("encoding the answer ran past the statement's time "
                                     "limit: ask for fewer rows or columns")
            content = encode(result, fmt)
        note(request, rows=result.table.num_rows, truncated=result.truncated)
        headers = {"X-Kprobe-Row-Count": str(result.table.num_rows),
                   "X-Kprobe-Truncated": "true" if result.truncated else "false"}
        if result.next_offset is not None:
            headers["X-Kprobe-Next-Offset"] = str(result.next_offset)
        return Response(content, media_type=MEDIA[fmt], headers=headers)

    try:
        check_read_only(body.sql)  # refused before it waits for a slot
        response = await admission.run(work, principal.name)
    except (LakeError, QueryApiError) as err:
        metrics.sql_queries.labels(type(err).__name__).inc()
        raise
    metrics.sql_queries.labels("ok").inc()
    return response


@router.get("/tables", response_model=TablesResponse,
            responses=problem_responses(401, 403, 503),
            summary="Lake tables and their schemas")
def tables(db: LakeDbDep, _: ReadAccess) -> TablesResponse:
    versions = db.tables.versions()
    return TablesResponse.model_validate({"tables": describe_tables(versions.__getitem__)})
