"""``GET /v1/transactions`` (paged) and ``GET /v1/transactions/{id}/explain``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from kprobe.compute.errors import GraphNotFound, NotFound
from kprobe.compute.explain import explain
from kprobe.compute.graph.store import SnapshotInfo, list_snapshots, select_snapshots
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeDatabase, LakeLocation
from kprobe.query_api import ondemand as ondemand_mod
from kprobe.query_api.auth import node_scope
from kprobe.query_api.cache import encode_answer, snapshots_key
from kprobe.query_api.causal import Cursor, Order, Status, list_transactions
from kprobe.query_api.deps import (
    CausalCacheDep,
    ComputeSettingsDep,
    GraphSlotsDep,
    LakeDbDep,
    LocationDep,
    NodeReadAccess,
    OnDemandDep,
    ReadAccess,
    SettingsDep,
    parse_time,
)
from kprobe.query_api.errors import BadRequest
from kprobe.query_api.ondemand import OnDemand
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import Explanation, TransactionPage
from kprobe.query_api.settings import ApiSettings

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
                        settings: SettingsDep, slots: GraphSlotsDep, cache: CausalCacheDep,
                        db: LakeDbDep, ondemand: OnDemandDep, principal: NodeReadAccess,
                        from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
                        to: TimeParam = None, window: WindowParam = None) -> Response:
    """The same document as ``kprobe explain TXN --format json``: ``txn`` is a business
    id (payment id...), a trace id or a span id.

    When the transaction's window was never analysed, or spans reached it after its
    analysis, that window is analysed now (unless ``window`` is given or the server runs
    with ``KPROBE_API_ANALYZE_ON_DEMAND=false``), within ``KPROBE_API_ANALYZE_TIMEOUT_S``:
    past it, 503 ``analysis-running`` with Retry-After while the analysis finishes. A token
    limited to nodes reads and analyses only windows of its nodes."""
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    nodes = node_scope(principal)
    began = time.monotonic()

    def answer() -> tuple[bytes, list[SnapshotInfo]]:
        # listed before computing: see query_api.cache
        snapshots = ondemand_mod.visible(
            select_snapshots(location, window_ids=window or None, start_ns=start,
                             end_ns=end), nodes)
        if not snapshots:  # never explain() with no window ids: that reads every window
            raise NotFound(f"no transaction, trace or span {txn!r} in the analysed windows "
                           "this token may read")
        ids = [s.window_id for s in snapshots]

        def compute_answer() -> bytes:
            with slots.hold():
                results = explain(location, txn, compute, window_ids=ids)
            return encode_answer(Explanation, {"query": txn, "transactions": results})

        return (cache.get_or_compute(("explain", txn, snapshots_key(snapshots)),
                                     compute_answer), snapshots)

    if not settings.analyze_on_demand or window:
        return Response(answer()[0], media_type="application/json")
    try:
        body, snapshots = answer()
        answered = {t["window"] for t in json.loads(body)["transactions"]}
        todo = [s.window for s in snapshots if s.window_id in answered
                and ondemand_mod.needs_recheck(s, settings.analyze_recheck_s)
                and ondemand_mod.freshness(s, ondemand.owned_spans(db, s.window))
                == "stale"]
        if not todo:
            return Response(body, media_type="application/json")
    except (NotFound, GraphNotFound) as err:
        with slots.hold():  # a scan of the spans: bounded like a graph read
            todo = _unanalysed(txn, location, compute, settings, db, ondemand, nodes, start,
                               end)
        if not todo:
            raise err from None
    for target in todo:
        ondemand.ensure(target, settings.analyze_timeout_s - (time.monotonic() - began))
    return Response(answer()[0], media_type="application/json")


def _unanalysed(txn: str, location: LakeLocation, compute: ComputeSettings,
                settings: ApiSettings, db: LakeDatabase, ondemand: OnDemand,
                nodes: tuple[str, ...] | None, start: int | None, end: int | None
                ) -> list[Window]:
    """Windows that own a trace ``txn`` names in the lake (of the caller's nodes) and whose
    snapshot is missing or does not hold it."""
    hi = end if end is not None else time.time_ns() + 1
    lo = start if start is not None else hi - int(settings.analyze_search_s * 1e9)
    found = ondemand_mod.locate(db, txn, nodes, max(lo, 0), hi,
                                ondemand_mod.id_attributes(compute),
                                settings.analyze_max_windows)
    snapshots = ondemand_mod.visible(list_snapshots(location), nodes)
    by_id = {s.window_id: s for s in snapshots}
    windows: dict[str, Window] = {}
    for first_ns, node in found:
        target = ondemand_mod.window_for(first_ns, node, nodes, snapshots, compute.window_ns)
        have = by_id.get(target.id)
        # a snapshot that read every span the window owns now and still does not name the
        # transaction would not name it after another analysis either
        if have is not None and "inputs" in have.manifest and ondemand_mod.freshness(
                have, ondemand.owned_spans(db, target)) == "fresh":
            continue
        windows.setdefault(target.id, target)
    return list(windows.values())
