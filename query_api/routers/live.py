"""``WS /v1/live``: new events and new failures as they are committed to the lake.

Query parameters (each repeatable): ``node``, ``pid``, ``kind`` (a table name, or
``failure`` for new failed spans; default: every table but ``syscall_data``, and
failures). Authentication: ``Authorization: Bearer <token>``, or, from a browser (which
cannot set headers on a WebSocket), the subprotocols ``kprobe.live.v1`` and
``bearer.<token>``. A refused handshake is answered with a problem+json HTTP response.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from kprobe.lake.errors import LakeError
from kprobe.query_api.auth import authenticate, bearer_token
from kprobe.query_api.deps import get_hub, location_of, token_store
from kprobe.query_api.errors import BadRequest, QueryApiError, ServiceUnavailable
from kprobe.query_api.live import KINDS, Filters, Subscriber
from kprobe.query_api.payload_scope import may_read_payloads
from kprobe.query_api.problems import classify, detail_of, problem_response
from kprobe.query_api.settings import get_lake_settings, get_settings

router = APIRouter(prefix="/v1", tags=["live"])
SUBPROTOCOL = "kprobe.live.v1"
HEARTBEAT_S = 15.0


def parse_filters(ws: WebSocket) -> Filters:
    params = ws.query_params
    unknown = set(params) - {"node", "pid", "kind"}
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0]!r} (node, pid, kind)")
    nodes = params.getlist("node")
    try:
        pids = [int(p) for p in params.getlist("pid")]
    except ValueError:
        raise BadRequest("pid must be an integer") from None
    if any(not 0 <= p < 2**31 for p in pids):
        raise BadRequest("pid out of range")
    kinds = params.getlist("kind")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise BadRequest(f"unknown kind {bad[0]!r}; known: {', '.join(KINDS)}")
    filters = Filters(nodes=frozenset(nodes) if nodes else None,
                      pids=frozenset(pids) if pids else None)
    return replace(filters, kinds=frozenset(kinds)) if kinds else filters


def _offered_token(ws: WebSocket) -> tuple[str | None, bool]:
    """(token, whether the kprobe subprotocol was offered)."""
    token = bearer_token(ws.headers.get("authorization"))
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
    for proto in offered:
        if token is None and proto.startswith("bearer."):
            token = proto[len("bearer."):]
    return token, SUBPROTOCOL in offered


async def _resolve(ws: WebSocket, dependency: Any) -> Any:
    """A settings dependency, honouring ``app.dependency_overrides`` (``create_app`` sets
    them, as ``async`` functions)."""
    value = ws.app.dependency_overrides.get(dependency, dependency)()
    return await value if inspect.isawaitable(value) else value


@router.websocket("/live")
async def live(ws: WebSocket) -> None:
    try:
        settings = await _resolve(ws, get_settings)
        token, subprotocol = _offered_token(ws)
        principal = authenticate(token_store(ws, settings), token, "read")
        filters = replace(parse_filters(ws), payloads=may_read_payloads(principal))
        location = location_of(ws, await _resolve(ws, get_lake_settings))
        hub = get_hub(ws, location, settings, ws.app.state.metrics)
        if len(hub.subscribers) >= settings.live_max_clients:
            raise ServiceUnavailable(f"{len(hub.subscribers)} live clients already "
                                     "connected to this replica; retry later")
        sub = await hub.subscribe(filters)  # the baseline: every later commit is sent
    except (QueryApiError, LakeError) as err:
        status, slug, title, headers = classify(err)
        await ws.send_denial_response(problem_response(
            status, slug, title, detail_of(err), instance=ws.url.path, headers=headers))
        return
    try:
        await ws.accept(subprotocol=SUBPROTOCOL if subprotocol else None)
        await _send(ws, {"type": "subscribed", "filters": filters.describe(),
                         "poll_interval_s": settings.live_poll_interval_s,
                         "queue_messages": settings.live_queue_messages})
        sender = asyncio.create_task(_pump(ws, sub))
        receiver = asyncio.create_task(_drain(ws))
        done, pending = await asyncio.wait({sender, receiver},
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in done:  # a closed socket ends the stream; nothing to report
            if not task.cancelled():
                task.exception()
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(json.dumps(message, separators=(",", ":"), allow_nan=False))


async def _pump(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        try:
            message = await asyncio.wait_for(sub.queue.get(), timeout=HEARTBEAT_S)
        except TimeoutError:
            message = {"type": "heartbeat"}
        dropped = sub.take_dropped()
        if dropped is not None:
            await _send(ws, dropped)
        await _send(ws, message)


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it goes away."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
