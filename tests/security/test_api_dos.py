"""Denial of service against a real ``kprobe serve`` is bounded (issue 14, item 3).

Each attack of the issue, for real, with ``/healthz`` polled from another process while it
runs: a 300 MB value, a million rows, one token taking every SQL slot, 300 connections
trickling headers and 300 idle ones, 64 kB and 200 kB headers, a body announced without a
token, a body trickled with one. Measured before (the server as it was): 200 with a 300 MB
body after 10.6 s; 1 M rows in one answer; another token's SELECT 42 waited 5.1-28.8 s;
connections open for as long as the client liked; 200 kB headers accepted; bodies read
before authentication. The latency figures are printed (the README's come from
tests/bench/bench_api_attacks.py); the assertions are about answers, limits and order, not
speed, except that ``/healthz`` must keep answering with a median under 100 ms.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

from tests.security.api_server import HealthFigures, HealthProbe, RecordedLake, Served, serve

pytestmark = pytest.mark.timeout(600)

ENV = {"KPROBE_API_HEADER_TIMEOUT_S": "2", "KPROBE_API_BODY_TIMEOUT_S": "3",
       "KPROBE_API_SQL_QUEUE_WAIT_S": "20"}


@pytest.fixture(scope="module")
def served(api_lake: RecordedLake, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    with serve(api_lake.lake, tmp_path_factory.mktemp("api-dos"), env=ENV) as server:
        yield server


def healthy(figures: HealthFigures, what: str) -> None:
    print(f"{what}: {figures.describe()}")
    assert figures.latencies_s and not figures.errors, figures.describe()
    assert figures.quantile(0.5) <= 0.1, figures.describe()


def test_a_300_mb_value_is_refused_not_sent(served: Served) -> None:
    probe = HealthProbe(served.base)
    with served.client("reader") as client:
        # the attack, verbatim: before, 200 with a 300 MB body after 10.6 s
        answer = client.post("/v1/sql", json={"sql": "SELECT repeat('x',300000000)"})
    healthy(probe.stop(), "during SELECT repeat('x',300000000)")
    assert answer.status_code == 422, answer.text[:300]
    # the row is over the answer's byte limit; on a machine busy enough that DuckDB takes
    # 30 s to build it, the time limit says no first: refused either way, never sent
    assert answer.json()["type"].rsplit(":", 1)[-1] in ("result-too-large",
                                                        "query-time-limit"), answer.text
    assert len(answer.content) < 10_000


def test_rows_and_bytes_are_cut_and_paged(served: Served) -> None:
    probe = HealthProbe(served.base)
    with served.client("reader") as client:
        many = {"sql": "SELECT range AS i FROM range(1000000) ORDER BY i",
                "max_rows": 10_000_000}
        first = client.post("/v1/sql", json=many)
        body = first.json()
        assert first.status_code == 200 and body["row_count"] == 100_000  # the server's cap
        assert body["truncated"] and body["truncated_by"] == "rows"
        assert body["next_offset"] == 100_000 and first.headers["x-kprobe-next-offset"] == \
            "100000"
        second = client.post("/v1/sql", json={**many, "offset": body["next_offset"]}).json()
        assert second["rows"][0] == [100_000] and second["rows"][-1] == [199_999]
        # ~100 MB of rows: cut by bytes, at a row boundary, and the next page continues
        wide = {"sql": "SELECT range AS i, repeat('x', 1000) AS pad FROM range(100000) "
                       "ORDER BY i", "max_rows": 100_000}
        cut = client.post("/v1/sql", json=wide)
        page = cut.json()
        assert page["truncated_by"] == "bytes" and 0 < page["row_count"] < 100_000
        assert len(cut.content) <= (32 << 20) + 4096
        assert page["next_offset"] == page["row_count"]
        after = client.post("/v1/sql", json={**wide, "offset": page["next_offset"]}).json()
        assert after["rows"][0][0] == page["row_count"]
        arrow = client.post("/v1/sql", json=wide,
                            headers={"Accept": "application/vnd.apache.arrow.stream"})
        table = pa.ipc.open_stream(io.BytesIO(arrow.content)).read_all()
        assert arrow.headers["x-kprobe-truncated"] == "true"
        assert int(arrow.headers["x-kprobe-next-offset"]) == table.num_rows < 100_000
        # the DuckDB database is bounded too
        limits = client.post("/v1/sql", json={
            "sql": "SELECT current_setting('memory_limit'), "
                   "current_setting('max_temp_directory_size')"}).json()["rows"][0]
        print("DuckDB limits:", limits)
        assert limits[0].startswith("1.0 GiB") or limits[0].startswith("1024")
    healthy(probe.stop(), "during 1 M rows and 100 MB answers")


_VICTIM = r"""
import sys, time, httpx
started = time.time()
answer = httpx.post(sys.argv[1] + "/v1/sql", json={"sql": "SELECT 42"},
                    headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=120)
print(answer.status_code, started, time.time())
"""


def test_one_token_cannot_hold_every_slot(served: Served) -> None:
    # GIVEN one token sending 40 slow statements at once (4 slots, 64 queue places)
    slow = {"sql": "SELECT count(*) FROM range(10000000000000)", "timeout_s": 8}
    results: list[tuple[int, float]] = []

    def hog() -> None:
        with served.client("reader", timeout=120) as client:
            status = client.post("/v1/sql", json=slow).status_code
            results.append((status, time.time()))

    probe = HealthProbe(served.base)
    hogs = [threading.Thread(target=hog) for _ in range(40)]
    for thread in hogs:
        thread.start()
    time.sleep(1)  # let them arrive; nothing below depends on this being long enough
    # WHEN another token asks for SELECT 42 (from its own process)
    victim = subprocess.run([sys.executable, "-c", _VICTIM, served.base,
                             served.tokens["reader2"]], capture_output=True, text=True,
                            timeout=120, check=True).stdout.split()
    for thread in hogs:
        thread.join()
    figures = probe.stop()
    status, asked, answered = int(victim[0]), float(victim[1]), float(victim[2])
    statuses = sorted(s for s, _ in results)
    print(f"victim: {status} in {answered - asked:.2f} s; the hog's answers: "
          f"{ {s: statuses.count(s) for s in set(statuses)} }")
    healthy(figures, "while one token holds its SQL slots")
    # THEN it is answered while the hog's statements still run (they run 8 s each)
    assert status == 200
    assert sum(1 for s, at in results if s == 422 and at > answered) >= 1
    # AND the hog gets its share: at most half the slots, 16 waiting, the rest 429
    assert statuses.count(429) >= 40 - 2 - 16 - 1, statuses


def _connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1 << 16) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_and_idle_connections_are_closed(served: Served) -> None:
    probe = HealthProbe(served.base)
    trickling = [_connect(served) for _ in range(300)]
    idle = [_connect(served) for _ in range(300)]
    for sock in trickling:
        sock.send(b"GET /v1/tables HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    open_ = set(range(len(trickling)))
    while open_ and time.monotonic() - started < 30:
        for i in list(open_):
            try:
                trickling[i].send(b"X-Slow: 1\r\n")  # one header line a second, never done
            except OSError:
                open_.discard(i)
        time.sleep(1)
    closed_idle = sum(_closed(sock) for sock in idle)
    elapsed = time.monotonic() - started
    for sock in trickling + idle:
        sock.close()
    healthy(probe.stop(), "during 300 slow + 300 idle connections")
    print(f"trickling closed by the server after {elapsed:.1f} s; idle closed: {closed_idle}")
    assert not open_, f"{len(open_)} trickling connections still open after 30 s"
    assert closed_idle == 300


def _answer(sock: socket.socket, within_s: float) -> bytes:
    sock.setblocking(True)
    sock.settimeout(within_s)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


def test_oversized_headers_are_refused(served: Served) -> None:
    for size, expected in ((8_000, b" 200 "), (64_000, b" 431 "), (200_000, b" 400 ")):
        sock = _connect(served)
        sock.setblocking(True)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size +
                     b"\r\n\r\n")
        first = _answer(sock, 10).split(b"\r\n", 1)[0]
        sock.close()
        print(f"{size} B header: {first!r}")
        assert expected in first + b" "


def test_bodies_are_not_read_before_authentication(served: Served) -> None:
    head = (b"POST /v1/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900000\r\n")
    for auth in (b"", b"Authorization: Bearer kp_not_a_token\r\n"):
        sock = _connect(served)
        sock.setblocking(True)
        sock.sendall(head + auth + b"\r\n")  # the body is announced, never sent
        first = _answer(sock, 5).split(b"\r\n", 1)[0]
        sock.close()
        print(f"no body, {'an unknown' if auth else 'no'} token: {first!r}")
        assert first.startswith(b"HTTP/1.1 401"), first
    # a known token may send a body, but not forever
    sock = _connect(served)
    sock.setblocking(True)
    sock.sendall(b"POST /v1/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 100\r\nAuthorization: Bearer " +
                 served.tokens["reader"].encode() + b"\r\n\r\n{")
    sock.settimeout(0.5)
    started = time.monotonic()
    answer = b""
    while not answer and time.monotonic() - started < 30:
        try:
            sock.send(b" ")
            answer = sock.recv(4096)
        except TimeoutError:
            continue
    sock.close()
    status_line = answer.split(b"\r\n", 1)[0]
    print(f"body trickled: {status_line!r} after {time.monotonic() - started:.1f} s")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
