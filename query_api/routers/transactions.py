"""``GET /v1/transactions`` (paged) and ``GET /v1/transactions/{id}/explain``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from compute.explain import explain
from compute.graph.store import select_snapshots
from query_api.cache import encode_answer, snapshots_key
from query_api.causal import Cursor, Order, Status, list_transactions
from query_api.deps import (
    CausalCacheDep,
    ComputeSettingsDep,
    GraphSlotsDep,
    LocationDep,
    ReadAccess,
    SettingsDep,
    parse_time,
)
from query_api.errors import BadRequest
from query_api.problems import problem_responses
from query_api.schemas import Explanation, TransactionPage

router = APIRouter(prefix="/v1/transactions", tags=["causal"])
_ERRORS = problem_responses(400, 401, 403, 404, 503)

TimeParam = Annotated[str | None, Query(max_length=64, description=(
    "ISO 8601 (2026-01-01T14:00:00Z), epoch s or ns, now, or -15m"))]
WindowParam = Annotated[list[str] | None, Query(max_length=100, description=(
    "only these analysed windows (repeatable)"))]


def links(trace_id: str) -> dict[str, str]:
    tid = quote(trace_id, safe="")
    return {"explain": f"/v1/transactions/{tid}/explain", "graph": f"/v1/traces/{tid}/graph"}


@router.get("", response_model=TransactionPage, responses=_ERRORS,
            summary="Transactions (root operations of traces) in the analysed windows")
def transactions(request: Request, location: LocationDep, compute: ComputeSettingsDep,
                 settings: SettingsDep, slots: GraphSlotsDep, _: ReadAccess,
                 status: Annotated[Status, Query()] = "all",
                 from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
                 to: TimeParam = None, window: WindowParam = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
                 cursor: Annotated[str | None, Query(max_length=512)] = None,
                 service: Annotated[str | None, Query(min_length=1, max_length=256,
                                                      description=(
                     "only transactions with a span of this service"))] = None,
                 order: Annotated[Order, Query(description=(
                     "by start time: asc (oldest first) or desc (newest first)"))] = "asc",
                 kind: Annotated[str | None, Query(min_length=1, max_length=64, description=(
                     "with status=failed: only failures whose root cause is of this kind "
                     "(memory_pressure, cpu_contention...) or of this failure kind "
                     "(timeout, error)"))] = None,
                 ) -> dict[str, Any]:
    """Ordered by start time (``order``). ``status=failed`` keeps transactions where any
    operation failed (an error or a missed deadline); ``service`` those with a span of that
    service. Pass ``next_cursor`` back as ``cursor`` (with the same ``order``)."""
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    if start is not None and end is not None and end <= start:
        raise BadRequest("to must be after from")
    with slots.hold():
        items, next_cursor = list_transactions(
            location, compute, status=status, start_ns=start, end_ns=end,
            limit=min(limit, settings.transactions_max_page),
            cursor=Cursor.decode(cursor) if cursor else None, window_ids=window,
            service=service, order=order, kind=kind)
    for item in items:
        item["links"] = links(item["trace_id"])
    token = next_cursor.encode() if next_cursor else None
    next_url = str(request.url.include_query_params(cursor=token)) if token else None
    return {"items": items, "next_cursor": token, "next": next_url}


@router.get("/{txn}/explain", response_model=Explanation, responses=_ERRORS,
            summary="A transaction as a causal chain, business event to kernel event")
def explain_transaction(txn: Annotated[str, Path(min_length=1, max_length=256)],
                        location: LocationDep, compute: ComputeSettingsDep,
                        slots: GraphSlotsDep, cache: CausalCacheDep, _: ReadAccess,
                        from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
                        to: TimeParam = None, window: WindowParam = None) -> Response:
    """The same document as ``kprobe explain TXN --format json``: ``txn`` is a business
    id (payment id...), a trace id or a span id."""
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    # listed before computing: see query_api.cache
    snapshots = select_snapshots(location, window_ids=window or None, start_ns=start,
                                 end_ns=end)

    def compute_answer() -> bytes:
        with slots.hold():
            results = explain(location, txn, compute, window_ids=window or None,
                              start_ns=start, end_ns=end)
        return encode_answer(Explanation, {"query": txn, "transactions": results})

    body = cache.get_or_compute(("explain", txn, snapshots_key(snapshots)), compute_answer)
    return Response(body, media_type="application/json")
