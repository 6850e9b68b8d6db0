"""The console in a real browser (Debian's Chromium driven by Playwright) against a real
``kprobe serve`` on a lake recorded by the real demo (root: zram, memory cgroups, BPF).

The ground truth is the demo's own report: the failed payment's id, the batch job's and
the settlement service's pids, the gateway's pid and its 750 ms timeout. The journey an
engineer takes: search the payment, see the chain as graph nodes (memory pressure, the
batch job's PID), drill into the reclaim episode (the kernel's reclaim rows on the
settlement service), see the settlement write and the reclaim episode on the timeline, and
replay the gateway exactly (504, as in production) and with 1500 ms (200) side by side.
Screenshots of every step are kept under the pytest tmp dir and copied to
build/console-screenshots/. Also: nothing is loaded from another origin (and the CSP says
so), problems are messages, a --no-auth server is read-only, the live stream shows what
the server dropped, and axe-core finds no serious accessibility violation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from kprobe.lake import LakeSettings, LakeWriter, resolve
from tests import browser
from tests.support import REPO, free_port, require

SHOTS = REPO / "build" / "console-screenshots"
REPLAY_TIMEOUT_MS = 600_000  # two replays on a loaded 2-CPU machine: ~15 s each seen


@dataclass
class Server:
    base: str
    lake: Path
    report: dict[str, Any]
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def demo(demo_run: tuple[dict[str, Any], Path], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[dict[str, Any], Path]:
    """The session's one real demo run (conftest), on a copy of its lake: the live-stream
    test writes spans into it."""
    why = browser.missing()
    require(why is None, why or "")
    report, lake = demo_run
    assert report["replay"]["exact_fails_as_in_production"], report["replay"]
    copy = tmp_path_factory.mktemp("console-demo") / "lake"
    shutil.copytree(lake, copy)
    return report, copy


def _serve(lake: Path, tmp: Path, *args: str, env: dict[str, str] | None = None
           ) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = open(tmp / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "kprobe", "serve", "--lake", str(lake),
                             "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp / f"serve-{port}.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "kprobe serve did not answer within 60 s"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server(demo: tuple[dict[str, Any], Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    report, lake = demo
    tmp = tmp_path_factory.mktemp("console-serve")
    tokens_file = tmp / "tokens.json"
    tokens = {}
    for name, scopes in (("full", "read,replay,payloads"), ("reader", "read")):
        out = subprocess.run([sys.executable, "-m", "kprobe", "serve", "--tokens-file",
                              str(tokens_file), "--new-token", name, "--scopes", scopes],
                             capture_output=True, text=True, check=True)
        tokens[name] = out.stdout.strip()
    base, proc = _serve(lake, tmp, "--tokens-file", str(tokens_file))
    yield Server(base, lake, report, tokens, proc)
    _stop(proc)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    why = browser.missing()
    require(why is None, why or "")
    with browser.chromium() as launched:
        yield launched


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("console-screenshots")
    yield path
    SHOTS.mkdir(parents=True, exist_ok=True)
    for shot in path.glob("*.png"):
        shutil.copy2(shot, SHOTS / shot.name)


class Watched:
    """A page whose requests, console errors and CSP violations are recorded."""

    def __init__(self, chromium: Any, base: str) -> None:
        self.base = base
        self.context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)

    def login(self, token: str) -> None:
        self.page.goto(self.base + "/")
        self.page.fill("#token-input", token)
        self.page.click("text=Use token")
        self.page.wait_for_selector("text=Recent failures")

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base + "/", "ws://127.0.0.1"))]

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e]

    def close(self) -> None:
        self.context.close()


def _labels(page: Any) -> list[str]:
    return list(page.eval_on_selector_all(
        "[data-testid=causal-graph] [data-node-id]",
        "els => els.map(e => e.getAttribute('aria-label'))"))


def _axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the current page."""
    page.evaluate(browser.AXE.read_text())  # evaluated by the browser's tooling, not the page
    found: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))")
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_search_explain_drill_timeline_and_replay(server: Server, chromium: Any,
                                                  shots: Path) -> None:
    report = server.report
    payment = report["failed_payment_id"]
    batch_pid = report["batch_job_pid"]
    settlement_pid = report["pids"]["settlement"]
    watched = Watched(chromium, server.base)
    page = watched.page
    try:
        # GIVEN the console with a token; the failure is among the recent ones
        watched.login(server.tokens["full"])
        page.wait_for_selector(f"text={payment}")
        assert "memory pressure" in page.inner_text("table.transactions")
        page.screenshot(path=str(shots / "01-search.png"), full_page=True)
        # WHEN she searches the payment
        page.fill("#search-text", payment)
        page.click("button:has-text('Search')")
        page.wait_for_url(f"**/transactions/{quote(payment)}")
        page.wait_for_selector("[data-testid=causal-graph] [data-node-id]", timeout=120_000)
        # THEN the chain is graph nodes: the payment, the settlement write, the memcg
        # reclaim episode (root cause) and the batch job's PID (its driver)
        labels = _labels(page)
        def one(*parts: str) -> str:
            hits = [lab for lab in labels if all(p.lower() in lab.lower() for p in parts)]
            assert hits, (parts, labels)
            return hits[0]
        one("payment-gateway: POST /payments")
        one("payment-gateway: POST /postings")
        one("settlement-service: settlement.write", "on the critical path")
        one("memory pressure: memcg reclaim", "root cause")
        one(f"batch job PID {batch_pid}", "driver")
        assert "memory pressure" in page.inner_text("[data-testid=root-cause]")
        page.locator("[data-testid=causal-graph]").screenshot(path=str(shots / "03-graph.png"))
        # WHEN she drills into the reclaim episode (from the keyboard)
        episode = page.locator("[data-testid=causal-graph] [data-node-id^='mem:']").first
        episode.focus()
        page.keyboard.press("Enter")
        rows = page.locator("table.rows", has=page.locator("caption",
                                                           has_text="Reclaim rows"))
        rows.locator("tbody tr").first.wait_for(timeout=60_000)
        # THEN the kernel's reclaim rows of the settlement service during its write
        header = rows.locator("thead th").all_inner_texts()
        kinds = rows.locator(f"tbody td:nth-child({header.index('kind') + 1})").all_inner_texts()
        pids = rows.locator(f"tbody td:nth-child({header.index('pid') + 1})").all_inner_texts()
        assert kinds and set(kinds) == {"memcg_reclaim"}, kinds
        assert set(pids) == {str(settlement_pid)}, pids
        culprits = page.locator("table.rows", has=page.locator("caption", has_text="Culprits"))
        culprits.locator("tbody tr").first.wait_for(timeout=60_000)
        assert "kprobe.demo.batch_job" in culprits.inner_text()
        assert str(batch_pid) in culprits.inner_text()
        page.locator("[data-testid=drill-section]").screenshot(path=str(shots / "04-drill.png"))
        # THEN the timeline holds the settlement write and the reclaim episode, drawn
        summary = page.locator("[data-testid=timeline-summary]")
        summary.wait_for(timeout=120_000)
        critical = summary.locator("table").first.inner_text()
        assert "memcg reclaim episode" in critical, critical  # the root cause, on the path
        lanes = page.locator("[data-testid=timeline-summary] details table").text_content() or ""
        assert "span · settlement-service: settlement.write" in lanes, lanes
        assert lanes.count(f"PID {settlement_pid} · memory") == 1, lanes
        drawn = page.eval_on_selector(
            "[data-testid=timeline-chart] canvas",
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }")
        assert drawn > 10_000, drawn
        chart = page.locator("[data-testid=timeline-chart]")
        chart.focus()
        page.keyboard.press("+")
        page.wait_for_selector("text=showing +")
        page.keyboard.press("0")
        page.locator(".timeline").screenshot(path=str(shots / "05-timeline.png"))
        # WHEN she replays the gateway exactly and with its timeout at 1500 ms
        timeout = page.locator("#timeout-value")
        assert "--settlement-timeout-ms" in page.inner_text("label[for=timeout-value]")
        timeout.fill("1500")
        page.click("button:has-text('Run exact and what-if replays')")
        exact = page.locator("[data-testid=replay-exact] [data-testid=http-status]")
        what_if = page.locator("[data-testid=replay-what-if] [data-testid=http-status]")
        exact.wait_for(timeout=REPLAY_TIMEOUT_MS)
        what_if.wait_for(timeout=REPLAY_TIMEOUT_MS)
        # THEN 504 as in production beside 200 with the settlement's real reply
        assert exact.inner_text().startswith("HTTP 504"), exact.inner_text()
        assert what_if.inner_text().startswith("HTTP 200"), what_if.inner_text()
        body = page.locator("[data-testid=replay-what-if] .answer-body").inner_text()
        assert payment in body and '"settled"' in body, body
        assert "timed out" in page.locator("[data-testid=replay-exact] .answer-body").inner_text()
        page.locator(".replay-panel").screenshot(path=str(shots / "06-replay.png"))
        page.screenshot(path=str(shots / "02-transaction.png"), full_page=True)
        # AND the page's URL holds the replays: a reload shows them again
        assert "exact=" in page.url and "whatif=" in page.url
        page.reload()
        page.locator("[data-testid=replay-what-if] [data-testid=http-status]").wait_for(
            timeout=120_000)
        assert page.locator("[data-testid=replay-exact] [data-testid=http-status]"
                            ).inner_text().startswith("HTTP 504")
        # AND the what-if has a page of its own, from which it can be launched again
        whatif_id = page.url.split("whatif=")[1].split("&")[0]
        page.goto(f"{server.base}/replays/{whatif_id}?answer={quote(payment)}")
        page.locator("[data-testid=http-status]").wait_for(timeout=60_000)
        assert page.locator("[data-testid=http-status]").inner_text().startswith("HTTP 200")
        assert page.locator("button:has-text('Launch this replay')").is_enabled()
        assert page.locator("text=argv[").first.inner_text().endswith("= 1500")
        page.screenshot(path=str(shots / "07-replay-page.png"), full_page=True)
        assert watched.foreign() == [], watched.foreign()
        assert watched.csp_violations() == [], watched.csp_violations()
    finally:
        watched.close()


def test_console_is_same_origin_and_deep_linked(server: Server) -> None:
    payment = server.report["failed_payment_id"]
    # the demo names the console page of its failed payment
    assert server.report["console_url"].endswith(f"/transactions/{payment}")
    for path in ("/", f"/transactions/{payment}", "/replays/" + "0" * 32, "/live", "/nowhere"):
        answer = httpx.get(server.base + path, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(
            "text/html"), (path, answer.status_code)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "http" not in csp.replace("'self'", "")  # no other origin allowed
    # the API keeps its own answers: problems, never the console's page
    nothing = httpx.get(server.base + "/v1/nothing", timeout=10)
    assert nothing.status_code == 404
    assert nothing.headers["content-type"].startswith("application/problem+json")
    assert httpx.post(server.base + "/nowhere", timeout=10).status_code in (401, 404, 405)
    # the page loads only this server's files
    index = httpx.get(server.base + "/", timeout=10).text
    assert "://" not in index, index


def test_problems_are_messages_and_the_token_is_asked_for(server: Server, chromium: Any,
                                                          shots: Path) -> None:
    watched = Watched(chromium, server.base)
    page = watched.page
    try:
        page.goto(server.base + "/transactions/PAY-NOPE-0")
        page.wait_for_selector("#token-input")  # no token yet: asked for, not a blank page
        page.fill("#token-input", "kp_not-a-token")
        page.click("text=Use token")
        page.wait_for_selector("text=Token refused")
        assert "unknown bearer token" in page.inner_text(".problem")
        page.fill("#token-input", server.tokens["reader"])
        page.click("text=Use token")
        # the refusal stays on the page until the new token's answer replaces it: wait for
        # that answer itself (ciY read the first alert while it was still the refusal)
        alert = page.locator("[role=alert]", has_text="Transaction not found (404)")
        alert.wait_for(timeout=60_000)
        assert "PAY-NOPE-0" in alert.inner_text()
        assert page.locator("text=Token refused").count() == 0
        page.screenshot(path=str(shots / "08-problem.png"), full_page=True)
        # the token lives in this tab's session storage
        assert page.evaluate("sessionStorage.getItem('kprobe.console.token')") == \
            server.tokens["reader"]
        # a token without the replay scope sees why it cannot replay
        page.goto(f"{server.base}/transactions/{server.report['failed_payment_id']}")
        page.wait_for_selector("text=lacks the replay scope", timeout=120_000)
        assert page.locator("button:has-text('Run exact and what-if')").count() == 0
        # and without payloads, the replay's answer bytes are not shown
        page.goto(server.base + "/nowhere/at/all")
        page.wait_for_selector("text=No page here")
    finally:
        watched.close()


def test_no_auth_console_is_read_only_and_live_shows_drops(
        demo: tuple[dict[str, Any], Path], chromium: Any, shots: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    report, lake = demo
    # a server whose live queue holds one message of one row: a burst must be dropped
    base, proc = _serve(lake, tmp_path_factory.mktemp("console-noauth"), "--no-auth", env={
        "KPROBE_API_LIVE_QUEUE_MESSAGES": "1", "KPROBE_API_LIVE_ROWS_PER_MESSAGE": "1",
        "KPROBE_API_LIVE_POLL_INTERVAL_S": "0.2"})
    watched = Watched(chromium, base)
    page = watched.page
    try:
        page.goto(f"{base}/transactions/{report['failed_payment_id']}")
        page.wait_for_selector("text=read-only (no tokens)")
        page.wait_for_selector("text=is read-only: replays need a token", timeout=120_000)
        assert page.locator("button:has-text('Run exact and what-if')").count() == 0
        page.screenshot(path=str(shots / "09-read-only.png"), full_page=True)
        page.goto(f"{base}/live")
        page.wait_for_selector("[data-testid=live-status]:has-text('Connected')")
        writer = LakeWriter(resolve(LakeSettings(lake=str(lake))), "console-live")
        now = time.time_ns()

        def burst(n: int, name: str) -> None:
            writer.append("spans", {
                "trace_id": ["c" * 32] * n, "span_id": [f"{i:016x}" for i in range(n)],
                "service": ["console-test"] * n, "name": [name] * n,
                "start_ns": [now + i for i in range(n)],
                "end_ns": [now + 1000 + i for i in range(n)],
                "status": ["ERROR"] * n, "status_message": ["burst"] * n, "pid": [4242] * n})

        # WHEN 6 failed spans come in one commit (12 messages: events and failures)
        burst(6, "burst-one")
        page.wait_for_selector("[data-testid=live-rows]:has-text('console-test')",
                               timeout=30_000)
        # THEN the next message carries the count of what was dropped, and it is shown
        burst(1, "burst-two")
        page.wait_for_function(
            "() => parseInt(document.querySelector('[data-testid=live-dropped]').innerText"
            ".replace(/,/g, '')) >= 10", timeout=30_000)
        # the client-side filter keeps only matching rows
        page.fill("#live-text", "burst-two")
        page.wait_for_selector("[data-testid=live-rows]:has-text('burst-two')", timeout=30_000)
        assert "burst-one" not in page.inner_text("[data-testid=live-rows]")
        page.screenshot(path=str(shots / "10-live.png"), full_page=True)
        assert watched.csp_violations() == [], watched.csp_violations()
        assert watched.foreign() == [], watched.foreign()
    finally:
        watched.close()
        _stop(proc)


def test_axe_finds_no_serious_violation(server: Server, chromium: Any) -> None:
    payment = server.report["failed_payment_id"]
    watched = Watched(chromium, server.base)
    page = watched.page
    try:
        watched.login(server.tokens["full"])
        found = {"/": _axe(page)}
        page.goto(f"{server.base}/transactions/{quote(payment)}")
        page.wait_for_selector("[data-testid=timeline-summary]", timeout=120_000)
        page.locator("[data-testid=causal-graph] [data-node-id^='mem:']").first.click()
        page.locator("table.rows tbody tr").first.wait_for(timeout=60_000)
        found["/transactions"] = _axe(page)
        page.goto(f"{server.base}/live")
        page.wait_for_selector("[data-testid=live-status]")
        found["/live"] = _axe(page)
        page.goto(f"{server.base}/sql?q=" + quote("SELECT kind, count(*) FROM mem GROUP BY 1"))
        page.wait_for_selector("table.rows")
        found["/sql"] = _axe(page)
        assert all(not v for v in found.values()), json.dumps(found, indent=1)
        # the graph's nodes and the timeline take keyboard focus and have text alternatives
        page.goto(f"{server.base}/transactions/{quote(payment)}")
        page.wait_for_selector("[data-testid=timeline-chart]", timeout=120_000)
        for selector in ("[data-testid=causal-graph] [data-node-id]",
                         "[data-testid=timeline-chart]"):
            element = page.locator(selector).first
            element.focus()
            assert page.evaluate("document.activeElement.getAttribute('aria-label')")
            assert element.evaluate("e => e === document.activeElement")
    finally:
        watched.close()
