"""Fair admission (query_api/admission.py) and the front door's host rules
(query_api/http_guard.py), in-process: no server, no timing, only order and counts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from kprobe.query_api.admission import Admission
from kprobe.query_api.errors import Overloaded, TooManyRequests
from kprobe.query_api.http_guard import allowed_hosts, host_name, is_loopback, origin_allowed
from kprobe.query_api.settings import ApiSettings


def test_one_principal_cannot_take_every_slot() -> None:
    async def scenario() -> None:
        admission = Admission("SQL", running=4, queued=64, wait_s=30, queued_per_principal=8)
        release = threading.Event()

        def slow() -> str:
            assert release.wait(30)
            return "slow"

        # GIVEN one principal with 10 statements in (2 run: half the slots; 8 wait)
        hog = [asyncio.create_task(admission.run(slow, "hog")) for _ in range(10)]
        await asyncio.sleep(0.2)
        assert admission.admitted == 10
        # WHEN it sends one more THEN 429 (its queue is full), not 503
        with pytest.raises(TooManyRequests, match="'hog' already has 2"):
            await admission.run(slow, "hog")
        # AND another principal runs at once, while the hog's are all still held
        assert await admission.run(lambda: 42, "other") == 42
        assert not any(task.done() for task in hog)
        release.set()
        assert await asyncio.gather(*hog) == ["slow"] * 10
        assert admission.admitted == 0

    asyncio.run(scenario())


def test_a_freed_slot_goes_to_the_principal_running_fewest() -> None:
    async def scenario() -> None:
        admission = Admission("SQL", running=2, queued=10, wait_s=30,
                              running_per_principal=2)
        gates = {name: threading.Event() for name in ("a1", "a2", "a3", "b1")}
        order: list[str] = []

        def work(name: str) -> None:
            order.append(name)
            assert gates[name].wait(30)

        async def until(condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 10
            while not condition():
                assert time.monotonic() < deadline, "condition not reached in 10 s"
                await asyncio.sleep(0.005)

        a1 = asyncio.create_task(admission.run(lambda: work("a1"), "a"))
        a2 = asyncio.create_task(admission.run(lambda: work("a2"), "a"))
        await until(lambda: len(order) == 2)  # both of a's running
        a3 = asyncio.create_task(admission.run(lambda: work("a3"), "a"))  # waits first
        await until(lambda: admission.admitted == 3)
        b1 = asyncio.create_task(admission.run(lambda: work("b1"), "b"))  # waits second
        await until(lambda: admission.admitted == 4)
        gates["a1"].set()
        await a1
        await until(lambda: len(order) == 3)
        # b runs nothing, a runs one: the slot goes to b although a3 waited longer
        assert sorted(order[:2]) == ["a1", "a2"] and order[2] == "b1"
        for gate in gates.values():
            gate.set()
        await asyncio.gather(a2, a3, b1)
        assert order[-1] == "a3"

    asyncio.run(scenario())


def test_a_full_replica_is_503() -> None:
    async def scenario() -> None:
        admission = Admission("SQL", running=1, queued=0, wait_s=30)
        release = threading.Event()
        held = asyncio.create_task(admission.run(lambda: release.wait(30), "a"))
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded, match="retry in 1 s"):
            await admission.run(lambda: None, "b")
        release.set()
        await held

    asyncio.run(scenario())


def test_hosts_and_origins() -> None:
    local = ApiSettings(host="127.0.0.1", cors_origins=["https://console.example"])
    assert allowed_hosts(local) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts(ApiSettings(host="0.0.0.0")) is None  # names are the deployment's
    assert allowed_hosts(ApiSettings(host="0.0.0.0", allowed_hosts=["api.bank"])) == {
        "api.bank"}
    assert [host_name(h) for h in ("a.b:80", "[::1]:8470", "x", "::1")] == [
        "a.b", "::1", "x", "::1"]
    assert origin_allowed(None, local) and origin_allowed("https://console.example", local)
    assert origin_allowed("http://localhost:8470", local)
    for origin in ("https://attacker.example", "null", "file://", "http://127.0.0.1.evil"):
        assert not origin_allowed(origin, local), origin
    assert [is_loopback(a) for a in ("127.0.0.1", "127.5.0.1", "::1", "localhost", "10.0.0.1",
                                     "0.0.0.0", "", None)] == [True] * 4 + [False] * 4
