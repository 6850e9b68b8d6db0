"""On-demand analysis through a real ``kprobe serve`` over a lake the real agent recorded.

Module fixture (root): ``kprobe run`` records the lock scenario (a thread holding the ledger
lock makes payments miss their 50 ms deadline) into a fresh lake that nobody analyses; two
``kprobe serve`` replicas answer over it, with a reader token, a token limited to the
recording's node and one limited to another node. The first explanation asked analyses the
payment's window (three requests at once, on both replicas, start one analysis),
``kprobe explain`` then reuses the snapshot, and the other node's token gets nothing of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kprobe.compute.window import Window
from kprobe.query_api.auth import add_token
from tests.e2e.scenarios.harness import ScenarioRun, record
from tests.e2e.scenarios.telemetry import Operation
from tests.support import REPO, deadline_s, free_port, require_root, wait_healthy

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
pytestmark = pytest.mark.timeout(600)


@dataclass
class Served:
    bases: list[str]  # two replicas
    lake: Path
    tokens: dict[str, str]
    node: str
    missed: list[Operation]  # payments that missed their deadline, in one window
    run: ScenarioRun  # the recording (its diagnosis when an answer is wrong)

    def client(self, token: str, replica: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.bases[replica], timeout=deadline_s(300),
                            headers={"Authorization": f"Bearer {self.tokens[token]}"})


def _kprobe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_root()
    tmp = tmp_path_factory.mktemp("query-api-ondemand")
    # GIVEN a lake the agent recorded, never analysed: a ledger service whose snapshot
    # thread holds the ledger lock, so payments miss their 50 ms deadline
    run = record(tmp, "lock", "--ops", "20", "--deadline-ms", "50", "--interval-ms", "150")
    lake = run.lake
    window_ns = 60 * 10**9  # kprobe analyze's default window
    by_window: dict[int, list[Operation]] = {}
    for op in run.truth.missed():
        by_window.setdefault(op.start_ns // window_ns, []).append(op)
    assert by_window, "no payment missed its deadline"
    missed = max(by_window.values(), key=len)
    found = _kprobe("sql", "--lake", str(lake), "--format", "json",
                    "SELECT DISTINCT node FROM spans")
    assert found.returncode == 0, found.stderr
    [row] = json.loads(found.stdout)
    assert not (lake / "graphs").exists()
    tokens_file = tmp / "tokens.json"
    node = row["node"]
    tokens = {"reader": add_token(tokens_file, "reader", ["read"]),
              "mine": add_token(tokens_file, "mine", ["read"], nodes=[node]),
              "other": add_token(tokens_file, "other", ["read"], nodes=["elsewhere"])}
    # two replicas over the same lake (two processes: `kprobe serve` on two ports)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    bases = []
    try:
        for replica in ("a", "b"):
            port = free_port()
            log = open(tmp / f"serve-{replica}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            # a bound far above one window's analysis here, so a busy machine does not turn
            # the first answer into a 503 (the bound itself: tests/unit/)
            procs.append(subprocess.Popen(
                [*KPROBE, "serve", "--lake", str(lake), "--tokens-file", str(tokens_file),
                 "--port", str(port), "--analyze-timeout", str(deadline_s(240))],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "KPROBE_COMPUTE_GRAPH_CACHE_DIR": str(tmp / "cache")}))
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base, log in zip(procs, bases, logs, strict=True):
            wait_healthy(proc, base, Path(log.name))
        yield Served(bases, lake, tokens, node, missed, run)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in logs:
            log.close()


def _analyses(served: Served, outcome: str) -> float:
    """The outcome's count, over both replicas."""
    series = f'kprobe_api_ondemand_analyses_total{{outcome="{outcome}"}}'
    total = 0.0
    for base in served.bases:
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
            if line.startswith(series + " "):
                total += float(line.split()[-1])
    return total


def test_the_first_request_analyses_the_window_once_and_answers_the_root_cause(
        served: Served, tmp_path: Path) -> None:
    payment = served.missed[0].payment_id
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def ask(replica: int) -> None:
        with served.client("reader", replica) as client:
            response = client.get(f"/v1/transactions/{payment}/explain")
        with lock:
            answers.append(response)

    # WHEN three engineers ask for the same late payment at once: two of them on one
    # replica, the third on the other
    threads = [threading.Thread(target=ask, args=(replica,)) for replica in (0, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s(300))
    # THEN all get its explanation, from one analysis of its window
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    print("on-demand outcomes:", {o: _analyses(served, o) for o in (
        "started", "joined", "waited", "busy", "refused", "timed_out", "failed")})
    assert _analyses(served, "started") == 1
    # the others shared it: in the same process, or waiting for the other process's
    assert _analyses(served, "joined") + _analyses(served, "waited") == 2
    [txn] = answers[0].json()["transactions"]
    assert txn["failed"] and txn["root_cause"] is not None, (
        f"{json.dumps(txn)[:3000]}\n{served.run.diagnose(served.missed[:1], [])}")
    window = txn["window"]
    assert "@" not in window  # the reader's window is every node's, as kprobe analyze makes
    assert (served.lake / "graphs" / window / "manifest.json").is_file()
    # AND the snapshot is where kprobe analyze puts it: the CLI and the next request reuse it
    cli = _kprobe("explain", "--lake", str(served.lake), payment, "--format", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == answers[0].json()
    if len(served.missed) > 1:  # another payment of the same window: no analysis
        with served.client("reader") as client:
            other = client.get(f"/v1/transactions/{served.missed[1].payment_id}/explain")
        assert other.status_code == 200, other.text
    assert _analyses(served, "started") == 1
    # AND it is the explanation kprobe analyze gives for that window (one analyser)
    copy = tmp_path / "lake"
    shutil.copytree(served.lake, copy, ignore=shutil.ignore_patterns("graphs"))
    start = Window.parse(window)
    analysed = _kprobe("analyze", "--lake", str(copy), f"--from={start.start_ns}",
                       f"--to={start.end_ns}", "--executor", "local")
    assert analysed.returncode == 0, analysed.stderr
    again = _kprobe("explain", "--lake", str(copy), payment, "--format", "json")
    assert again.returncode == 0, again.stderr
    [by_cli] = json.loads(again.stdout)["transactions"]
    assert by_cli["root_cause"] == txn["root_cause"] and by_cli["window"] == window


def test_a_token_of_another_node_gets_nothing_of_it(served: Served) -> None:
    payment = served.missed[0].payment_id
    with served.client("other") as client:
        refused = client.get(f"/v1/transactions/{payment}/explain")
        assert refused.status_code == 404, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "transactions" not in refused.json()
        sql = client.post("/v1/sql", json={"sql": "SELECT count(*) FROM spans"})
        assert sql.status_code == 403 and "limited to nodes" in sql.json()["detail"]
    started = _analyses(served, "started")
    assert not any(p.name.endswith("@elsewhere") for p in (served.lake / "graphs").iterdir())
    # control: a token of the recording's node gets it, from a window of that node only
    with served.client("mine") as client:
        answer = client.get(f"/v1/transactions/{payment}/explain")
    assert answer.status_code == 200, answer.text
    [txn] = answer.json()["transactions"]
    assert txn["window"].endswith(f"@{served.node}") and txn["failed"]
    assert _analyses(served, "started") == started + 1
