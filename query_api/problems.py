"""RFC 9457 problem details: every error leaves the service as ``application/problem+json``.

This module is the one place that maps errors to HTTP statuses: ours (``QueryApiError``
carries its own), the lake's and the causal engine's (table below), FastAPI's validation
errors and Starlette's HTTP exceptions. Anything else is a 500 whose detail does not leak
internals; the traceback goes to the server log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kprobe.compute import errors as compute_errors
from kprobe.lake import errors as lake_errors
from kprobe.lake import one_line
from kprobe.query_api.errors import QueryApiError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:kprobe:problem:"

# (error class, status, problem slug, title): first match wins, so subclasses come first.
_MAPPED: tuple[tuple[type[Exception], int, str, str], ...] = (
    (lake_errors.ReadOnlyViolation, 400, "sql-refused", "SQL statement refused"),
    (lake_errors.UnknownTable, 404, "unknown-table", "Unknown table"),
    (lake_errors.LakeUnavailable, 503, "lake-unavailable", "Lake unavailable"),
    (lake_errors.SchemaVersionError, 500, "schema-version", "Lake schema version mismatch"),
    (lake_errors.QueryError, 400, "query-failed", "Query failed"),
    (lake_errors.LakeError, 500, "lake-error", "Lake error"),
    (compute_errors.WindowError, 400, "bad-time-range", "Bad time range"),
    (compute_errors.GraphNotFound, 404, "graph-not-found", "No analysed window"),
    (compute_errors.QueryNotFound, 400, "cypher-failed", "Graph query failed"),
    (compute_errors.NotFound, 404, "transaction-not-found", "Transaction not found"),
    (compute_errors.ComputeError, 500, "compute-error", "Causal engine error"),
)
_STATUS_TITLES = {400: "Bad request", 401: "Authentication required", 403: "Forbidden",
                  404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
                  413: "Request too large", 415: "Unsupported media type",
                  422: "Invalid request", 429: "Too many requests"}


class Problem(BaseModel):
    """An RFC 9457 problem document (extension members allowed)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[f"{TYPE_PREFIX}sql-refused"])
    title: str
    status: int
    detail: str
    instance: str | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text,
           "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in ((400, "Bad request"), (401, "Missing or unknown bearer token"),
                       (403, "Token lacks the scope"), (404, "Not found"),
                       (413, "Request too large"), (422, "Invalid request"),
                       (503, "Lake unavailable"))
}


def problem_responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these problem statuses; ``described`` adds others
    (``_409="the replay is still running"``)."""
    out: dict[int | str, dict[str, Any]] = {code: PROBLEM_RESPONSES[code] for code in codes}
    for key, text in described.items():
        out[int(key.lstrip("_"))] = {**PROBLEM_RESPONSES[400], "description": text}
    return out


def problem_response(status: int, slug: str, title: str, detail: str, *,
                     instance: str | None = None, headers: dict[str, str] | None = None,
                     extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"type": TYPE_PREFIX + slug, "title": title, "status": status,
                            "detail": detail}
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return Response(json.dumps(jsonable_encoder(body), ensure_ascii=False), status_code=status,
                    media_type=PROBLEM_JSON, headers=headers)


def classify(err: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, slug, title, headers) for an error of ours, the lake's or the engine's."""
    if isinstance(err, QueryApiError):
        return err.status, err.problem, err.title, err.headers
    for cls, status, slug, title in _MAPPED:
        if isinstance(err, cls):
            if cls is lake_errors.QueryError and "Permission Error" in str(err):
                # DuckDB's external-access lock refused a file, URL or extension
                return 400, "sql-refused", "SQL statement refused", {}
            return status, slug, title, {}
    return 500, "internal-error", "Internal error", {}


def detail_of(err: Exception) -> str:
    """An error text fit for a problem's detail (``lake.one_line``), or the error's type."""
    return one_line(err, 600) if str(err).strip() else type(err).__name__


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def known(request: Request, err: Exception) -> Response:
        status, slug, title, headers = classify(err)
        if status == 503:  # overload or an unreadable lake: the reason says it all
            log.warning("%s %s: %s", request.method, request.url.path, detail_of(err))
        elif status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, err, exc_info=err)
        return problem_response(status, slug, title, detail_of(err),
                                instance=request.url.path, headers=headers)

    async def validation(request: Request, err: Exception) -> Response:
        assert isinstance(err, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in err.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(422, "invalid-request", "Invalid request",
                                f"{where}: {first['msg']}" if where else str(first["msg"]),
                                instance=request.url.path, extra={"errors": errors})

    async def http(request: Request, err: Exception) -> Response:
        assert isinstance(err, StarletteHTTPException)
        title = _STATUS_TITLES.get(err.status_code, "Error")
        detail = err.detail if isinstance(err.detail, str) else title
        slug = title.lower().replace(" ", "-")
        return problem_response(err.status_code, slug, title, detail,
                                instance=request.url.path, headers=dict(err.headers or {}))

    async def unexpected(request: Request, err: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return problem_response(500, "internal-error", "Internal error",
                                "unexpected server error; the server log has the details",
                                instance=request.url.path)

    app.add_exception_handler(QueryApiError, known)
    app.add_exception_handler(lake_errors.LakeError, known)
    app.add_exception_handler(compute_errors.ComputeError, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)
