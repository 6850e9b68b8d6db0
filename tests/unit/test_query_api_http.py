"""The HTTP service in-process (TestClient): health, metrics, auth, problems, limits, CORS.

Shared fixtures for the other ``test_query_api_*`` unit modules live here: a lake holding
the payment scenario of the causal-engine tests, analysed into a graph snapshot, and a
tokens file with one token per scope combination.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kprobe.compute.analysis import run_window
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeSettings, resolve
from kprobe.query_api import create_app
from kprobe.query_api.auth import TokenStore, add_token, hash_token, parse_tokens
from kprobe.query_api.errors import ServiceUnavailable
from kprobe.query_api.settings import ApiSettings
from tests.unit.test_compute_scenario import WINDOW_END, WINDOW_START, payment_scenario

PROBLEM = "application/problem+json"


@pytest.fixture(scope="session")
def analysed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The payment scenario (payment 98721 times out under memcg reclaim), analysed once."""
    lake = tmp_path_factory.mktemp("query-api-template") / "lake"
    payment_scenario().write(lake)
    run_window(resolve(LakeSettings(lake=str(lake))), Window(WINDOW_START, WINDOW_END),
               ComputeSettings(graph_cache_dir=lake.parent / "graph-cache"))
    return lake


@pytest.fixture(name="analysed_lake")
def analysed_lake_fixture(lake_dir: Path, analysed_template: Path) -> Path:
    """A private copy of the analysed lake (tests append to it)."""
    shutil.copytree(analysed_template, lake_dir, dirs_exist_ok=True)
    return lake_dir


@pytest.fixture(name="tokens")
def tokens_fixture(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "tokens.json"
    made = {name: add_token(path, name, scopes) for name, scopes in
            (("reader", ["read"]), ("replayer", ["replay"]), ("full", ["read", "replay"]))}
    return {"path": path, **made}


ClientFactory = Callable[..., TestClient]


@pytest.fixture(name="make_client")
def make_client_fixture(analysed_lake: Path, tokens: dict[str, Any], tmp_path: Path
                ) -> Iterator[ClientFactory]:
    """``make_client(**settings)``: a TestClient on an app over the analysed lake, with the
    reader token unless ``token=`` says otherwise."""
    clients: list[TestClient] = []

    def make(token: str | None = "reader", lake: Path | None = None,
             **overrides: Any) -> TestClient:
        settings = ApiSettings(**{"tokens_file": tokens["path"],
                                  "allowed_hosts": ["localhost", "testserver"], **overrides})
        app = create_app(settings, LakeSettings(lake=str(lake or analysed_lake), node="n1"),
                         ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
        client = TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000),
                            raise_server_exceptions=False)
        if token:
            client.headers["Authorization"] = f"Bearer {tokens.get(token, token)}"
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def assert_problem(response: Any, status: int, slug: str, *in_detail: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:kprobe:problem:{slug}", body
    assert body["status"] == status and body["title"] and body["detail"]
    for text in in_detail:
        assert text in body["detail"], body
    return body


# -- health -----------------------------------------------------------------------------------
def test_health_and_readiness(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(token=None)
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["lake"].startswith("file://")
    # GIVEN a lake directory that does not exist THEN not ready, with the reason
    missing = make_client(token=None, lake=tmp_path / "nowhere")
    assert_problem(missing.get("/readyz"), 503, "lake-unavailable", "does not exist")
    assert missing.get("/healthz").status_code == 200  # alive all the same


def test_metrics_count_requests_by_route(make_client: ClientFactory) -> None:
    client = make_client()
    client.get("/v1/tables")
    client.get("/v1/replays/" + "0" * 32)
    text = client.get("/metrics").text
    assert 'kprobe_api_requests_total{method="GET",route="/v1/tables",status="200"} 1.0' in text
    assert 'route="/v1/replays/{job_id}",status="404"' in text  # templates, not raw paths
    assert "kprobe_api_live_clients 0.0" in text


# -- auth -------------------------------------------------------------------------------------
def test_missing_wrong_and_underscoped_tokens(make_client: ClientFactory) -> None:
    anonymous = make_client(token=None)
    body = assert_problem(anonymous.post("/v1/sql", json={"sql": "SELECT 1"}), 401,
                          "unauthorized", "missing bearer token")
    assert body["instance"] == "/v1/sql"
    response = make_client(token="not-a-token").get("/v1/tables")
    assert_problem(response, 401, "unauthorized", "unknown bearer token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    # a replay-only token cannot read; a read-only token cannot launch replays
    assert_problem(make_client(token="replayer").get("/v1/tables"), 403,
                   "insufficient-scope", "'read' scope")
    denied = make_client(token="reader").post("/v1/replays", json={"process": "1@n1"})
    assert_problem(denied, 403, "insufficient-scope", "'replay' scope")
    assert 'scope="replay"' in denied.headers["www-authenticate"]
    assert make_client(token="full").get("/v1/tables").status_code == 200


def test_auth_can_be_disabled_but_not_by_omission(make_client: ClientFactory) -> None:
    assert make_client(token=None, auth_disabled=True).get("/v1/tables").status_code == 200
    no_file = make_client(token=None, tokens_file=None)
    assert_problem(no_file.get("/v1/tables"), 503, "service-unavailable", "no tokens file")


def test_tokens_are_stored_hashed_and_reloaded(tokens: dict[str, Any]) -> None:
    text = tokens["path"].read_text()
    assert tokens["reader"] not in text and hash_token(tokens["reader"]) in text
    assert oct(tokens["path"].stat().st_mode & 0o777) == "0o600"
    store = TokenStore(tokens["path"])
    principal = store.lookup(tokens["full"])
    assert principal is not None and principal.scopes == {"read", "replay"}
    assert store.lookup("kp_guess") is None
    # WHEN a token is added to the file THEN the running store sees it
    added = add_token(tokens["path"], "late", ["read"])
    assert store.lookup(added) is not None


@pytest.mark.parametrize("text,reason", [
    ("{", "invalid"),
    ('{"tokens": [{"name": "x", "sha256": "abc", "scopes": ["read"]}]}', "64 hex"),
    ('{"tokens": [{"name": "x", "sha256": "' + "a" * 64 + '", "scopes": ["admin"]}]}',
     "unknown scope 'admin'"),
])
def test_a_broken_tokens_file_is_a_clear_error(text: str, reason: str) -> None:
    with pytest.raises(ServiceUnavailable, match=reason):
        parse_tokens(text)


# -- problems, limits, CORS ------------------------------------------------------------------
def test_unknown_routes_and_invalid_bodies_are_problems(make_client: ClientFactory) -> None:
    client = make_client()
    assert_problem(client.get("/v1/nothing"), 404, "not-found")
    body = assert_problem(client.post("/v1/sql", json={"sql": ""}), 422, "invalid-request",
                          "body.sql")
    assert body["errors"][0]["loc"] == ["body", "sql"]
    assert_problem(client.post("/v1/sql", json={"sql": "SELECT 1", "extra": 1}), 422,
                   "invalid-request", "extra")
    assert_problem(client.get("/v1/healthz"), 404, "not-found")


def test_request_size_limit(make_client: ClientFactory) -> None:
    client = make_client(max_request_bytes=1000)
    big = {"sql": "SELECT '" + "x" * 2000 + "'"}
    assert_problem(client.post("/v1/sql", json=big), 413, "payload-too-large", "1000 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield b'{"sql": "SELECT \''
        for _ in range(20):
            yield b"x" * 100
        yield b"'\"}"

    streamed = client.post("/v1/sql", content=chunks(),
                           headers={"content-type": "application/json"})
    assert_problem(streamed, 413, "payload-too-large")
    assert client.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 200


def test_cors_is_closed_by_default_and_opens_per_origin(make_client: ClientFactory) -> None:
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    closed = make_client(token=None)
    assert "access-control-allow-origin" not in closed.options("/v1/sql",
                                                               headers=preflight).headers
    assert "access-control-allow-origin" not in closed.get(
        "/healthz", headers={"Origin": "https://dash.example"}).headers
    opened = make_client(cors_origins=["https://dash.example"])
    answer = opened.options("/v1/sql", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://dash.example"
    other = opened.options("/v1/sql", headers={**preflight, "Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_openapi_documents_every_resource(make_client: ClientFactory) -> None:
    schema = make_client(token=None).get("/openapi.json").json()
    assert {"/v1/sql", "/v1/tables", "/v1/transactions", "/v1/transactions/{txn}/explain",
            "/v1/traces/{trace_id}/graph", "/v1/graph/cypher", "/v1/timeline",
            "/v1/replays", "/v1/replays/{job_id}", "/v1/replays/{job_id}/report",
            "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "Problem" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    json.dumps(schema)


# -- kprobe serve -----------------------------------------------------------------------------
def test_serve_creates_tokens_and_refuses_to_run_open(tmp_path: Path, lake_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from kprobe.cli import main

    path = tmp_path / "tokens.json"
    assert main(["serve", "--tokens-file", str(path), "--new-token", "ci",
                 "--scopes", "read,replay"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("kp_") and token not in path.read_text()
    assert TokenStore(path).lookup(token) is not None
    # WHEN started with neither tokens nor --no-auth THEN a one-line refusal, exit 2
    assert main(["serve", "--lake", str(lake_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kprobe serve: no tokens: give --tokens-file")
    assert len(err.strip().splitlines()) == 1
    assert main(["serve", "--new-token", "x"]) == 2
    assert main(["serve", "--tokens-file", str(path), "--new-token", "x",
                 "--scopes", "admin"]) == 2
    assert "scopes must be among read, replay" in capsys.readouterr().err
