"""What the console needs from the API, in-process: the console's files at ``/`` with a CSP
(deep links answer index.html, the API keeps its problems), ``GET /v1/whoami``,
``GET /v1/traces/{id}/processes`` and the ``service`` / ``order`` filters of
``GET /v1/transactions``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, LakeWriter, resolve
from tests.unit.test_compute_scenario import NODE, T0, WINDOW_END, WINDOW_START
from tests.unit.test_query_api_http import (  # noqa: F401 - fixtures
    ClientFactory,
    analysed_lake_fixture,
    analysed_template,
    assert_problem,
    make_client_fixture,
    tokens_fixture,
)

TRACE = "t1".ljust(32, "0")
HOUR = 3_600_000_000_000


@pytest.fixture
def built_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=root></div>"
                                     "<script type=module src=/assets/app-1.js></script>")
    (dist / "assets" / "app-1.js").write_text("console.log('kprobe')")
    (tmp_path / "secret.txt").write_text("not served")
    monkeypatch.setenv("KPROBE_API_CONSOLE_DIR", str(dist))
    return dist


def test_console_pages_are_index_html_with_a_strict_csp(built_console: Path,
                                                        make_client: ClientFactory) -> None:
    client = make_client(token=None)
    for path in ("/", "/transactions/PAY-1", "/replays/" + "a" * 32, "/live", "/x/y"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert page.text.startswith("<!doctype html>")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-cache"
    asset = client.get("/assets/app-1.js")
    assert asset.status_code == 200 and "kprobe" in asset.text
    assert "immutable" in asset.headers["cache-control"]
    assert "script-src 'self'" in asset.headers["content-security-policy"]
    # the files next to the build are not reachable through it
    for path in ("/assets/../secret.txt", "/assets/%2e%2e/secret.txt", "/secret.txt",
                 "/assets/..%2fsecret.txt"):
        assert "not served" not in client.get(path).text, path
    # the API's answers stay the API's: problems for unknown routes, its docs, its schema
    assert_problem(client.get("/v1/nothing"), 404, "not-found")
    assert_problem(client.get("/v1"), 404, "not-found")
    assert_problem(client.post("/somewhere", json={}), 401, "unauthorized")
    assert client.get("/openapi.json").json()["info"]["title"] == "kprobe query API"
    assert "swagger" in client.get("/docs").text.lower()
    # a HEAD is answered like a GET (link checkers, load balancers)
    assert client.head("/transactions/PAY-1").status_code == 200


def test_a_missing_build_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             make_client: ClientFactory) -> None:
    monkeypatch.setenv("KPROBE_API_CONSOLE_DIR", str(tmp_path / "nothing"))
    page = make_client(token=None).get("/transactions/PAY-1")
    assert page.status_code == 503 and "make setup" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_whoami(make_client: ClientFactory) -> None:
    assert make_client().get("/v1/whoami").json() == {"principal": "reader", "scopes": ["read"],
                                                      "auth": "token", "nodes": None}
    assert make_client(token="full").get("/v1/whoami").json()["scopes"] == ["read", "replay"]
    assert_problem(make_client(token=None).get("/v1/whoami"), 401, "unauthorized")
    assert_problem(make_client(token="replayer").get("/v1/whoami"), 403, "insufficient-scope",
                   "read")
    open_ = make_client(token=None, auth_disabled=True).get("/v1/whoami").json()
    assert open_ == {"principal": "anonymous", "scopes": ["read"], "auth": "none",
                     "nodes": None}


def test_trace_processes_name_the_recorded_exec_and_payloads(analysed_lake: Path,
                                                             make_client: ClientFactory
                                                             ) -> None:
    # GIVEN the handler's exec recorded before the trace (and a later exec of a reused pid)
    # and payload rows of it; the batch job has no span in the trace
    writer = LakeWriter.from_settings(LakeSettings(lake=str(analysed_lake), node=NODE))
    writer.append("processes", {
        "ts_ns": [T0 - 2 * HOUR, T0 + 60 * 1_000_000_000], "kind": ["exec", "exec"],
        "pid": [100, 100], "tid": [100, 100], "ppid": [1, 1], "comm": ["payment-handler"] * 2,
        "exe": ["/opt/pay/handler", "/usr/bin/other"],
        "argv": [["/opt/pay/handler", "--timeout-ms", "750"], ["other"]],
        "cgroup": ["/kprobe/7", "/"], "cgroup_id": [7, 1]})
    writer.append("syscall_data", {
        "ts_ns": [T0 - HOUR + i for i in range(3)], "pid": [100] * 3, "tid": [100] * 3,
        "seq": [1, 2, 3], "nr": [0] * 3, "arg_index": [1] * 3, "offset": [0] * 3,
        "data": [b"x"] * 3, "total_len": [1] * 3, "truncated": [False] * 3})
    client = make_client()
    # WHEN the console asks who ran the trace
    answer = client.get(f"/v1/traces/{TRACE}/processes",
                        params={"from": str(WINDOW_START), "to": str(WINDOW_END)})
    # THEN the handler, with the exec before the trace and its payload rows
    assert answer.status_code == 200, answer.text
    [process] = answer.json()["processes"]
    assert (process["node"], process["pid"]) == (NODE, 100)
    assert process["services"] == ["payment-handler"]
    assert process["argv"] == ["/opt/pay/handler", "--timeout-ms", "750"]
    assert process["exe"] == "/opt/pay/handler" and process["cgroup"] == "/kprobe/7"
    assert process["payload_rows"] == 3 and process["replayable"] is True
    assert set(process["span_names"]) >= {"POST /payments", "settlement.write"}
    assert all(s.startswith(f"{TRACE}:") for s in process["spans"])
    # a control: outside the range, and an unknown trace, there is nothing
    assert client.get(f"/v1/traces/{TRACE}/processes", params={
        "from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}).json()["processes"] == []
    assert client.get("/v1/traces/nope/processes").json() == {"trace_id": "nope",
                                                              "processes": []}
    assert_problem(client.get(f"/v1/traces/{TRACE}/processes",
                              params={"from": "now", "to": "-1h"}), 400, "bad-request")
    assert_problem(make_client(token=None).get(f"/v1/traces/{TRACE}/processes"), 401,
                   "unauthorized")


def test_without_payloads_recorded_a_process_is_not_replayable(make_client: ClientFactory
                                                               ) -> None:
    [process] = make_client().get(f"/v1/traces/{TRACE}/processes").json()["processes"]
    assert process["payload_rows"] == 0 and process["replayable"] is False
    assert process["exec_ns"] is None and process["argv"] is None  # only a "seen" row


def test_transactions_by_service_and_newest_first(analysed_lake: Path,
                                                  make_client: ClientFactory,
                                                  tmp_path: Path) -> None:
    from kprobe.compute.analysis import run_window
    from kprobe.compute.window import Window
    from tests.unit.test_compute_scenario import Scenario

    # GIVEN four more payments, two of them through a fraud service
    sc = Scenario()
    for i in range(4):
        sc.span(f"p{i}", "r", None, "payment-handler", "POST /payments", 100 + i, 101 + i,
                pid=100, tid=101, kind="SERVER", attrs={"payment.id": 5000 + i})
        if i % 2:
            sc.span(f"p{i}", "f", "r", "fraud", "score", 100.2 + i, 100.5 + i, pid=300,
                    tid=301, kind="SERVER")
    sc.write(analysed_lake)
    run_window(resolve(LakeSettings(lake=str(analysed_lake))),
               Window(WINDOW_START, WINDOW_END),
               ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
    client = make_client()
    oldest = [t["trace_id"] for t in client.get("/v1/transactions").json()["items"]]
    assert len(oldest) == 5
    # newest first, page by page, each once
    seen: list[str] = []
    url: str | None = "/v1/transactions?order=desc&limit=2"
    while url:
        page = client.get(url).json()
        seen.extend(t["trace_id"] for t in page["items"])
        url = page["next"]
    assert seen == oldest[::-1]
    # a service's transactions: those with a span of it, not only where it is the root
    fraud = client.get("/v1/transactions", params={"service": "fraud"}).json()["items"]
    assert [t["trace_id"] for t in fraud] == [f"p{i}".ljust(32, "0") for i in (1, 3)]
    assert all(t["service"] == "payment-handler" for t in fraud)
    assert client.get("/v1/transactions", params={"service": "nobody"}).json()["items"] == []
    failed = client.get("/v1/transactions", params={"service": "payment-handler",
                                                     "status": "failed", "order": "desc"})
    assert [t["trace_id"] for t in failed.json()["items"]] == [TRACE]
    # a cursor is bound to its order
    cursor = client.get("/v1/transactions", params={"limit": 1}).json()["next_cursor"]
    assert_problem(client.get("/v1/transactions", params={"order": "desc", "cursor": cursor}),
                   400, "bad-request", "order")
    assert_problem(client.get("/v1/transactions", params={"order": "sideways"}), 422,
                   "invalid-request")
