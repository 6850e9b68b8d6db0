"""Who may call a real ``kprobe serve``, from where (issue 14, item 5), and what is written
down about it (the audit line).

- ``--no-auth`` is read-only (a replay is 403 and nothing is launched) and loopback-only
  (``kprobe serve --no-auth --host 0.0.0.0`` exits 2 with a one-line reason). Before: it
  granted ``replay`` (root on the host, item 1) and bound wherever it was told.
- The ``Host`` header must be one the server answers to: a DNS-rebinding page (its own
  name resolving to 127.0.0.1) gets 421. Before: any Host was answered.
- A WebSocket ``Origin`` of another site is refused (403), the server's own and a
  configured CORS origin are accepted. Before: any Origin.
- One audit line per SQL, Cypher and replay request, with the token's name and a hash of
  the statement, never the statement.
- ``/docs`` works without the internet: its Swagger UI files come from this server.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.security.api_server import RecordedLake, Served, kprobe, serve

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def served(api_lake: RecordedLake, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    with serve(api_lake.lake, tmp_path_factory.mktemp("api-access"),
               args=("--cors-origin", "https://console.bank.example")) as server:
        yield server


def test_no_auth_is_read_only(api_lake: RecordedLake, tmp_path: Path) -> None:
    with serve(api_lake.lake, tmp_path, auth=False) as open_server, \
            open_server.client(token=None) as client:
        # reads work without a token
        assert client.post("/v1/sql", json={"sql": "SELECT count(*) FROM spans"}
                           ).json()["rows"] == [[52]]
        # a replay does not (the issue: --no-auth granted replay, and replay was root)
        refused = client.post("/v1/replays", json={
            "process": f"{api_lake.pid}@{api_lake.node}", "cmd": "/bin/sh -c 'id'"})
        print(refused.status_code, refused.text[:200])
        assert refused.status_code == 403, refused.text
        assert "'replay' scope" in refused.json()["detail"]
    assert not (api_lake.lake / "jobs").exists()  # no job was ever created


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_no_auth_refuses_to_listen_beyond_loopback(api_lake: RecordedLake, host: str) -> None:
    run = kprobe("serve", "--lake", str(api_lake.lake), "--no-auth", "--host", host,
                 "--port", "1", timeout=60)
    print(run.stderr.strip())
    assert run.returncode == 2
    assert "loopback" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_a_foreign_host_header_is_refused(served: Served) -> None:
    with served.client("reader") as client:
        for host in ("attacker.example", "attacker.example:80", "127.0.0.1.attacker.example",
                     "localhost.:1"):
            answer = client.post("/v1/sql", json={"sql": "SELECT 1"}, headers={"Host": host})
            print(f"Host {host}: {answer.status_code}")
            assert answer.status_code == 421, answer.text
            assert answer.json()["type"].endswith("host-not-allowed")
        # the control: the names of this server are answered
        for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}", "localhost"):
            assert client.post("/v1/sql", json={"sql": "SELECT 1"},
                               headers={"Host": host}).status_code == 200


def _ws(served: Served, origin: str | None, host: str | None = None) -> int:
    """The handshake's status; ``host``: the name in the URL (and so in Host), the socket
    still going to this server (a DNS-rebound name)."""
    url = f"ws://{host or '127.0.0.1'}:{served.port}/v1/live?kind=lost"
    headers = {"Authorization": f"Bearer {served.tokens['reader']}"}
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        with ws_connect(url, additional_headers=headers, origin=origin,  # type: ignore[arg-type]
                        open_timeout=10, sock=sock) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_websocket_origin_and_host_are_checked(served: Served) -> None:
    assert _ws(served, "https://attacker.example") == 403
    assert _ws(served, "null") == 403
    assert _ws(served, None, host="attacker.example") == 421
    # controls: no Origin (not a browser), the server's own, a configured CORS origin
    assert _ws(served, None) == 101
    assert _ws(served, f"http://127.0.0.1:{served.port}") == 101
    assert _ws(served, "https://console.bank.example") == 101


def test_every_sql_cypher_and_replay_request_is_audited(served: Served) -> None:
    statement = "SELECT count(*) AS n FROM spans WHERE name = 'PAY-SECRET-4242'"
    cypher = "MATCH (s:Span) RETURN count(*) AS n"
    before = len(served.audit_lines())
    with served.client("reader") as client:
        assert client.post("/v1/sql", json={"sql": statement}).status_code == 200
        assert client.post("/v1/graph/cypher", json={"cypher": cypher}).status_code == 200
        assert client.post("/v1/sql", json={"sql": "COPY spans TO '/tmp/x'"}
                           ).status_code == 400
        assert client.post("/v1/replays", json={"process": "1@n"}).status_code == 403
    with httpx.Client(base_url=served.base) as anonymous:
        assert anonymous.post("/v1/sql", json={"sql": statement}).status_code == 401
    # a line is written when its request ends, just after the answer went out: wait for it
    deadline = time.monotonic() + 30
    while len(lines := served.audit_lines()) < before + 5:
        assert time.monotonic() < deadline, lines[before:]
        time.sleep(0.05)
    for line in lines[before:]:
        print(json.dumps(line))
    sql_ok, cypher_ok, refused, replay, anonymous_line = lines[before:before + 5]
    digest = hashlib.sha256(statement.encode()).hexdigest()[:16]
    assert sql_ok["kind"] == "sql" and sql_ok["principal"] == "reader"
    assert sql_ok["status"] == 200 and sql_ok["rows"] == 1
    assert sql_ok["statement_sha256"] == digest and sql_ok["duration_ms"] >= 0
    assert cypher_ok["kind"] == "cypher" and cypher_ok["rows"] == 1
    assert refused["status"] == 400 and replay["kind"] == "replay"
    assert replay["status"] == 403 and replay["principal"] == "reader"
    assert anonymous_line["principal"] == "-" and anonymous_line["status"] == 401
    assert anonymous_line["statement_sha256"] is None  # refused before its body was read
    assert "PAY-SECRET-4242" not in served.log()  # the statement itself is never logged


def test_swagger_ui_is_served_locally(served: Served) -> None:
    with httpx.Client(base_url=served.base) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "/docs/static/swagger-ui-bundle.js" in page.text
        for cdn in ("cdn.", "jsdelivr", "unpkg", "http://", "https://"):
            assert cdn not in page.text.replace(served.base, ""), cdn
        bundle = client.get("/docs/static/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 500_000
        assert client.get("/docs/static/swagger-ui.css").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "kprobe query API"
