"""Two ``kprobe serve`` replicas over one S3 lake (SeaweedFS): any replica answers.

The agent records the ledger workload straight into ``s3://…`` and ``kprobe analyze``
publishes its graph there; ``kprobe run --payloads`` records the timeout story there too
(``timeout_story``). Replica A launches a replay and streams a commit live; replica B
answers the job (which must reproduce production exactly), the SQL and the explanation
from the lake alone, and runs a what-if that changes the outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from kprobe.lake import LakeWriter, resolve
from kprobe.query_api.auth import add_token
from tests.integration.timeout_story import SETTLED, TIMED_OUT, TIMEOUT_ARG, record_timeout_story
from tests.s3server import S3Server
from tests.support import REPO, free_port, require_root, wait_healthy

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
pytestmark = pytest.mark.timeout(300)


def _serve(env: dict[str, str], tokens_file: Path, log: Path) -> tuple[subprocess.Popen[bytes],
                                                                       str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*KPROBE, "serve", "--tokens-file", str(tokens_file), "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, log)
    return proc, base


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def replicas(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, object]]:
    require_root()
    tmp = tmp_path_factory.mktemp("query-api-s3")
    env = {**os.environ, **s3_server.env("lake"), "KPROBE_API_LIVE_POLL_INTERVAL_S": "0.2",
           "KPROBE_COMPUTE_GRAPH_CACHE_DIR": str(tmp / "graph-cache")}
    run = subprocess.run([*KPROBE, "run", "--spool-dir", str(tmp / "spool"), "--",
                          sys.executable, "-P",
                          str(REPO / "tests" / "programs" / "ledger_workload.py"),
                          "--ledger", str(tmp / "ledger.db"), "--payments", "20"],
                         env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert run.returncode == 0, run.stderr
    found = subprocess.run([*KPROBE, "sql", "--format", "json",
                            "SELECT pid, node, min(start_ns) lo, max(end_ns) hi FROM spans "
                            "GROUP BY ALL"], env=env, capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    [spans] = json.loads(found.stdout)
    analyze = subprocess.run([*KPROBE, "analyze", "--from", str(spans["lo"] - 10**9), "--to",
                              str(spans["hi"] + 10**9), "--window", "10m", "--executor",
                              "local"], env=env, capture_output=True, text=True, timeout=120,
                             cwd=REPO)
    assert analyze.returncode == 0, analyze.stderr
    # AND the timeout story recorded with payloads, what replays need
    story = record_timeout_story(s3_server.lake_settings("lake"), env, tmp)
    tokens_file = tmp / "tokens.json"
    token = add_token(tokens_file, "ops", ["read", "replay"])
    # replay reports show the program's bytes only with the payloads scope
    auditor = add_token(tokens_file, "auditor", ["read", "replay", "payloads"])
    a, base_a = _serve(env, tokens_file, tmp / "a.log")
    # replica B has its own graph cache: it downloads the snapshot itself
    b, base_b = _serve({**env, "KPROBE_COMPUTE_GRAPH_CACHE_DIR": str(tmp / "cache-b")},
                       tokens_file, tmp / "b.log")
    try:
        yield {"a": base_a, "b": base_b, "token": token, "env": env, "spans": spans,
               "story": story, "auditor": auditor,
               "tokens_file": tokens_file, "tmp": tmp, "s3": s3_server}
    finally:
        _stop(a)
        _stop(b)


def _client(replicas: dict[str, object], which: str, token: str = "token") -> httpx.Client:
    return httpx.Client(base_url=str(replicas[which]), timeout=60,
                        headers={"Authorization": f"Bearer {replicas[token]}"})


def test_both_replicas_answer_from_the_lake(replicas: dict[str, object]) -> None:
    with _client(replicas, "a") as a, _client(replicas, "b") as b:
        for client in (a, b):
            assert client.get("/readyz").json()["lake"].startswith("s3://")
        count = b.post("/v1/sql", json={
            "sql": "SELECT count(*) FROM spans WHERE name = 'POST /payments'"}).json()
        assert count["rows"] == [[20]]
        [failed] = a.get("/v1/transactions", params={"status": "failed", "limit": 1}
                         ).json()["items"]
        txn = failed["business_id"]
        assert (a.get(f"/v1/transactions/{txn}/explain").json()
                == b.get(f"/v1/transactions/{txn}/explain").json())


def _finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET /v1/replays/{id} until the job ends."""
    deadline = time.monotonic() + 150
    while True:
        answer = client.get(f"/v1/replays/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_a_replay_launched_on_one_replica_is_answered_by_the_other(
        replicas: dict[str, object]) -> None:
    # GIVEN the client of the timeout story recorded with payloads into the S3 lake
    story = replicas["story"]
    with _client(replicas, "a", "auditor") as a, _client(replicas, "b", "auditor") as b:
        # WHEN replica A replays it exactly
        launched = a.post("/v1/replays", json={"process": story, "timeout_s": 60})
        assert launched.status_code == 202, launched.text
        job_id = launched.json()["id"]
        assert b.get(f"/v1/replays/{job_id}").json()["status"] in ("running", "succeeded")
        # THEN replica B answers it: loaded from S3, it reproduced production exactly
        job = _finished(b, job_id)
        report = b.get(f"/v1/replays/{job_id}/report").json()
    assert job["status"] == "succeeded", job
    assert job["summary"]["status"] == "completed" and job["summary"]["outputs_match"], job
    assert TIMED_OUT in report["replayed_text"]["1"], report["replayed_text"]
    assert job["owner"] != "" and job["finished_ns"]
    s3 = replicas["s3"]
    assert isinstance(s3, S3Server)
    prefix = f"lake/jobs/replays/{job_id}/"
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    assert f"{prefix}job.json" in {o["Key"] for o in listed["Contents"]}


def test_a_what_if_over_s3_changes_the_outcome(replicas: dict[str, object]) -> None:
    # GIVEN the same recording, and the client's timeout raised from 750 to 1500 ms
    body = {"process": replicas["story"], "timeout_s": 60, "expect_exit": 0,
            "set_args": [{"index": TIMEOUT_ARG, "value": "1500"}]}
    with _client(replicas, "b", "auditor") as b:
        # WHEN replayed through replica B
        launched = b.post("/v1/replays", json=body)
        assert launched.status_code == 202, launched.text
        job = _finished(b, launched.json()["id"])
        report = b.get(f"/v1/replays/{job['id']}/report").json()
    # THEN PAY-1 is settled with the reply the server really sent: not what was recorded
    assert job["status"] == "succeeded" and job["summary"]["outputs_match"] is False, job
    stdout = report["replayed_text"]["1"]
    assert SETTLED in stdout and TIMED_OUT not in stdout, stdout


def test_live_stream_over_s3(replicas: dict[str, object]) -> None:
    url = str(replicas["a"]).replace("http", "ws") + "/v1/live?kind=lost&node=s3-live"
    s3 = replicas["s3"]
    assert isinstance(s3, S3Server)
    settings = s3.lake_settings("lake", node="s3-live")
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {replicas['token']}"},
                    open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        LakeWriter(resolve(settings), "s3-live").append(
            "lost", {"ts_ns": [time.time_ns()], "source": ["s3-test"], "count": [3]})
        message = json.loads(ws.recv(timeout=15))
    assert message["type"] == "events" and message["table"] == "lost"
    assert message["rows"][0]["source"] == "s3-test" and message["rows"][0]["node"] == "s3-live"


def test_a_commit_to_s3_is_in_the_next_answer_of_every_replica(
        replicas: dict[str, object]) -> None:
    """Each replica keeps its tables open between requests: a commit made through S3 is
    in the next answer of both, however recently they read the table."""
    s3 = replicas["s3"]
    assert isinstance(s3, S3Server)
    writer = LakeWriter(resolve(s3.lake_settings("lake", node="s3-fresh")), "s3-fresh")
    count = {"sql": "SELECT count(*) FROM lost WHERE node = 's3-fresh'"}
    with _client(replicas, "a") as a, _client(replicas, "b") as b:
        for client in (a, b):
            assert client.post("/v1/sql", json=count).json()["rows"] == [[0]]
        for i in range(1, 4):
            writer.append("lost", {"ts_ns": [time.time_ns()], "source": ["s3-fresh"],
                                   "count": [i]})
            for client in (a, b):
                assert client.post("/v1/sql", json=count).json()["rows"] == [[i]]


def test_readiness_fails_with_an_unreachable_lake(replicas: dict[str, object]) -> None:
    env = dict(replicas["env"])  # type: ignore[call-overload]
    env.update({"KPROBE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                "KPROBE_API_READINESS_TIMEOUT_S": "5"})
    tmp = replicas["tmp"]
    assert isinstance(tmp, Path)
    proc, base = _serve(env, Path(str(replicas["tokens_file"])), tmp / "c.log")
    try:
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith("application/problem+json")
        assert "lake unavailable" in ready.json()["detail"]
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        _stop(proc)
