"""``WS /v1/live`` and its hub: new commits reach clients, filters, back-pressure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import WebSocketDenialResponse

from kprobe.lake import LakeSettings, LakeWriter, resolve
from kprobe.lake.maintenance import compact
from kprobe.query_api.live import Filters, LiveHub
from kprobe.query_api.metrics import ApiMetrics
from kprobe.query_api.settings import ApiSettings
from tests.unit.test_compute_scenario import T0
from tests.unit.test_query_api_http import (  # noqa: F401 - fixtures
    ClientFactory,
    analysed_lake_fixture,
    analysed_template,
    make_client_fixture,
    tokens_fixture,
)

pytestmark = pytest.mark.timeout(60)


def _spans(n: int, *, status: str = "OK", pid: int = 100, start: int = T0) -> dict[str, Any]:
    return {"trace_id": [f"{i:032x}" for i in range(n)],
            "span_id": [f"{i:016x}" for i in range(n)], "service": ["svc"] * n,
            "name": [f"op{i}" for i in range(n)], "start_ns": [start + i for i in range(n)],
            "end_ns": [start + i + 10 for i in range(n)], "status": [status] * n,
            "status_message": ["boom" if status == "ERROR" else None] * n, "pid": [pid] * n}


def _writer(lake: Path, node: str = "n1") -> LakeWriter:
    return LakeWriter(resolve(LakeSettings(lake=str(lake))), node)


def test_a_commit_after_connecting_reaches_the_client(make_client: ClientFactory,
                                                      analysed_lake: Path,
                                                      tokens: dict[str, Any]) -> None:
    client = make_client(token=None, live_poll_interval_s=0.05)
    with client.websocket_connect("/v1/live?kind=spans&kind=failure",
                                  headers={"Authorization": f"Bearer {tokens['reader']}"}
                                  ) as ws:
        hello = ws.receive_json()
        assert hello["type"] == "subscribed"
        assert hello["filters"]["kind"] == ["failure", "spans"]
        # WHEN a failed span is committed after the subscription
        _writer(analysed_lake).append("spans", _spans(1, status="ERROR"))
        first, second = ws.receive_json(), ws.receive_json()
    by_type = {m["type"]: m for m in (first, second)}
    assert by_type["events"]["table"] == "spans"
    [row] = by_type["events"]["rows"]
    assert row["name"] == "op0" and row["node"] == "n1" and row["hour"]
    assert by_type["failures"]["rows"][0]["status_message"] == "boom"


def test_browsers_authenticate_with_a_subprotocol(make_client: ClientFactory,
                                                  tokens: dict[str, Any]) -> None:
    client = make_client(token=None)
    with client.websocket_connect(
            "/v1/live", subprotocols=["kprobe.live.v1", f"bearer.{tokens['reader']}"]) as ws:
        assert ws.accepted_subprotocol == "kprobe.live.v1"
        assert ws.receive_json()["type"] == "subscribed"


@pytest.mark.parametrize("url,token,status,reason", [
    ("/v1/live", None, 401, "missing bearer token"),
    ("/v1/live", "wrong", 401, "unknown bearer token"),
    ("/v1/live", "replayer", 403, "'read' scope"),
    ("/v1/live?kind=nothing", "reader", 400, "unknown kind 'nothing'"),
    ("/v1/live?pid=x", "reader", 400, "pid must be an integer"),
    ("/v1/live?colour=red", "reader", 400, "unknown parameter 'colour'"),
])
def test_refused_handshakes_are_problems(make_client: ClientFactory, tokens: dict[str, Any],
                                         url: str, token: str | None, status: int,
                                         reason: str) -> None:
    headers = {"Authorization": f"Bearer {tokens.get(token, token)}"} if token else {}
    with pytest.raises(WebSocketDenialResponse) as refused, \
            make_client(token=None).websocket_connect(url, headers=headers):
        pass
    assert refused.value.status_code == status
    assert refused.value.headers["content-type"].startswith("application/problem+json")
    assert reason in refused.value.json()["detail"]


async def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _a_whole_poll_later(hub: LiveHub) -> None:
    """Until a whole poll of the hub has run since this call (the second one from now has
    started: polls and their deliveries run one after the other), so whatever was committed
    before the call has been delivered: a poll of the condition "nothing else arrives"."""
    def polls() -> float:
        return hub.metrics.registry.get_sample_value("kprobe_api_live_polls_total") or 0.0

    start = polls()
    await _wait_for(lambda: polls() >= start + 2)


def _hub(lake: Path, **settings: Any) -> LiveHub:
    return LiveHub(resolve(LakeSettings(lake=str(lake))),
                   ApiSettings(live_poll_interval_s=0.05, **settings), ApiMetrics())


def test_a_slow_client_is_told_what_it_dropped(analysed_lake: Path) -> None:
    async def scenario() -> None:
        hub = _hub(analysed_lake, live_queue_messages=2, live_rows_per_message=1)
        sub = await hub.subscribe(Filters(kinds=frozenset({"spans"})))
        try:
            # GIVEN a client that reads nothing WHEN 10 one-row messages are due
            await asyncio.to_thread(_writer(analysed_lake).append, "spans", _spans(10))
            await _wait_for(lambda: sub.dropped_messages > 0)
            # THEN its queue holds exactly its bound and the rest is counted, not kept
            assert sub.queue.qsize() == 2
            assert sub.take_dropped() == {"type": "dropped", "messages": 8, "rows": 8}
            assert [len(sub.queue.get_nowait()["rows"]) for _ in range(2)] == [1, 1]
            assert hub.metrics.registry.get_sample_value(
                "kprobe_api_live_dropped_messages_total") == 8
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_filters_by_node_pid_and_kind(analysed_lake: Path) -> None:
    async def scenario() -> None:
        hub = _hub(analysed_lake)
        mine = await hub.subscribe(Filters(nodes=frozenset({"n2"}), pids=frozenset({7})))
        failures = await hub.subscribe(Filters(kinds=frozenset({"failure"})))
        try:
            await asyncio.to_thread(_writer(analysed_lake, "n2").append, "spans",
                                    _spans(3, pid=7, status="ERROR"))
            await asyncio.to_thread(_writer(analysed_lake, "n2").append, "spans",
                                    _spans(2, pid=8))
            await asyncio.to_thread(_writer(analysed_lake, "n1").append, "spans",
                                    _spans(2, pid=7))
            await asyncio.to_thread(_writer(analysed_lake, "n2").append, "sched", {
                "ts_ns": [T0, T0 + 1], "kind": ["switch", "switch"], "prev_pid": [7, 9],
                "next_pid": [9, 9]})
            await _wait_for(lambda: mine.queue.qsize() >= 3 and failures.queue.qsize() >= 1)
            await _a_whole_poll_later(hub)  # nothing else may arrive
            got = [mine.queue.get_nowait() for _ in range(mine.queue.qsize())]
            tables = sorted((m["type"], m.get("table"), len(m["rows"])) for m in got)
            assert tables == [("events", "sched", 1), ("events", "spans", 3),
                              ("failures", None, 3)]
            only = [failures.queue.get_nowait() for _ in range(failures.queue.qsize())]
            assert [(m["type"], len(m["rows"])) for m in only] == [("failures", 3)]
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_rewrite_is_a_notice_not_a_resend(analysed_lake: Path) -> None:
    async def scenario() -> None:
        writer = _writer(analysed_lake)
        for _ in range(3):
            writer.append("spans", _spans(2))
        hub = _hub(analysed_lake)
        sub = await hub.subscribe(Filters(kinds=frozenset({"spans"})))
        try:
            await asyncio.to_thread(compact, resolve(LakeSettings(lake=str(analysed_lake))),
                                    tables=["spans"])
            await _wait_for(lambda: sub.queue.qsize() >= 1)
            message = sub.queue.get_nowait()
            assert message["type"] == "notice" and "rewritten" in message["message"]
            await asyncio.to_thread(writer.append, "spans", _spans(1))
            await _wait_for(lambda: sub.queue.qsize() >= 1)
            assert len(sub.queue.get_nowait()["rows"]) == 1  # only the new row
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_only_wanted_tables_are_polled_and_a_late_kind_starts_afresh(
        analysed_lake: Path) -> None:
    async def scenario() -> None:
        hub = _hub(analysed_lake)
        lost = await hub.subscribe(Filters(kinds=frozenset({"lost"})))
        try:
            # GIVEN one client of `lost` only: spans are not polled
            await asyncio.to_thread(_writer(analysed_lake).append, "spans", _spans(2))
            await _wait_for(lambda: (hub.metrics.registry.get_sample_value(
                "kprobe_api_live_polls_total") or 0) >= 3)
            assert hub._tails is not None and hub._tails["spans"].idle
            # WHEN a client of spans arrives, and then a span is committed
            spans = await hub.subscribe(Filters(kinds=frozenset({"spans"})))
            await asyncio.to_thread(_writer(analysed_lake).append, "spans",
                                    _spans(1, start=T0 + 100))
            await _wait_for(lambda: spans.queue.qsize() >= 1)
            await _a_whole_poll_later(hub)
            # THEN it gets that span only, not the two committed while nobody watched
            got = [spans.queue.get_nowait() for _ in range(spans.queue.qsize())]
            assert [len(m["rows"]) for m in got] == [1]
            assert lost.queue.qsize() == 0
        finally:
            await hub.close()

    asyncio.run(scenario())
