"""``POST /v1/sql`` and ``GET /v1/tables``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from lake.deltaio import open_table, translate_errors
from lake.errors import LakeError
from lake.schema import TABLE_NAMES
from query_api.deps import LocationDep, MetricsDep, ReadAccess, SettingsDep, SqlSlotsDep
from query_api.errors import BadRequest, QueryApiError
from query_api.problems import problem_responses
from query_api.schemas import SqlRequest, SqlResponse, TablesResponse
from query_api.sql import (
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
def run_sql(body: SqlRequest, location: LocationDep, settings: SettingsDep,
            metrics: MetricsDep, slots: SqlSlotsDep, _: ReadAccess,
            accept: Annotated[str | None, Header()] = None) -> Response:
    """One statement: SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN. DuckDB cannot
    reach files, URLs or extensions from it. Rows beyond ``max_rows`` are cut
    (``truncated``); a statement running past ``timeout_s`` is stopped (422)."""
    fmt = negotiate(accept)
    if len(body.sql) > settings.sql_max_chars:
        raise BadRequest(f"statement longer than {settings.sql_max_chars} characters")
    max_rows = min(body.max_rows if body.max_rows is not None else settings.sql_default_rows,
                   settings.sql_max_rows)
    timeout_s = min(body.timeout_s or settings.sql_timeout_s, settings.sql_timeout_s)
    try:
        with slots.hold():
            result = run_statement(location, body.sql, max_rows, timeout_s)
    except (LakeError, QueryApiError) as err:
        metrics.sql_queries.labels(type(err).__name__).inc()
        raise
    metrics.sql_queries.labels("ok").inc()
    headers = {"X-Kprobe-Row-Count": str(result.table.num_rows),
               "X-Kprobe-Truncated": "true" if result.truncated else "false"}
    if fmt == "json":
        content = json.dumps(json_body(result), ensure_ascii=False, allow_nan=False)
        return Response(content, media_type=JSON, headers=headers)
    return Response(encode(result, fmt), media_type=MEDIA[fmt], headers=headers)


@router.get("/tables", response_model=TablesResponse,
            responses=problem_responses(401, 403, 503),
            summary="Lake tables and their schemas")
def tables(location: LocationDep, _: ReadAccess) -> TablesResponse:
    def version(name: str) -> int | None:
        with translate_errors(f"open {name}"):
            table = open_table(location, name)
        return None if table is None else int(table.version())

    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = dict(zip(TABLE_NAMES, pool.map(version, TABLE_NAMES)))
    return TablesResponse.model_validate({"tables": describe_tables(versions.__getitem__)})
