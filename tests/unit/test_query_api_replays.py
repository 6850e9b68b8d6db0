"""Replay jobs: the command line a request becomes, outcomes, job state in the lake."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kprobe.lake import LakeSettings, resolve
from kprobe.query_api.errors import BadRequest
from kprobe.query_api.metrics import ApiMetrics
from kprobe.query_api.replays import JobStore, ReplayRunner, outcome, typed_request, worker_input
from kprobe.query_api.schemas import ReplayRequest
from kprobe.query_api.settings import ApiSettings
from kprobe.query_api.storage import LakeFiles
from tests.unit.test_query_api_http import (  # noqa: F401 - fixtures
    ClientFactory,
    analysed_lake_fixture,
    analysed_template,
    assert_problem,
    make_client_fixture,
    tokens_fixture,
)

pytestmark = pytest.mark.timeout(120)


def test_a_request_becomes_the_workers_typed_request() -> None:
    request = ReplayRequest.model_validate({
        "process": "4721@node-1", "from": "2026-01-01T14:00:00Z", "to": "1767276000.5",
        "inject": ["fsync:+50ms", "recv fd=7:+800ms"],
        "set_args": [{"index": 1, "value": "--fast"}], "env": {"B": "2", "A": "1"},
        "cmd": "/usr/bin/env 'two words'", "mode": "whatif", "expect_exit": 0,
        "timeout_s": 30})
    typed = typed_request(request)
    assert (typed.pid, typed.node, typed.timeout_s) == (4721, "node-1", 30)
    assert typed.from_ns == 1767276000 * 10**9 and typed.to_ns == 1767276000_500_000_000
    assert typed.injections == ("fsync:+50ms", "recv fd=7:+800ms")
    assert typed.set_args == ((1, "--fast"),) and typed.env == (("A", "1"), ("B", "2"))
    assert typed.cmd == ("/usr/bin/env", "two words") and typed.sandbox
    document = worker_input(typed, "s3://bucket/lake", ["/etc/kprobe/tokens.json"])
    assert document["named_files"] == "public" and document["lake"] == "s3://bucket/lake"
    assert document["request"]["process"] == "4721@node-1"
    assert json.loads(json.dumps(document)) == document


@pytest.mark.parametrize("body", [
    {"process": "1@n", "from": "yesterday"}, {"process": "1@n", "cmd": "'unclosed"},
    {"process": "1@n", "cmd": "   "}, {"process": "1@n", "inject": ["fsync"]},
    {"process": "0@n"}])
def test_a_request_the_worker_would_refuse_is_a_bad_request(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as err:
        typed_request(ReplayRequest.model_validate(body))
    assert "\n" not in str(err.value)


def test_outcomes_follow_the_workers_exit_code() -> None:
    report = {"status": "completed", "mode": "exact", "exit_code": 0, "outputs_match": True}
    answer = json.dumps({"kind": "replay", "passed": True, "report": report})
    assert outcome(0, answer, "")["status"] == "succeeded"
    failed = outcome(1, answer, "")
    assert failed["status"] == "failed" and failed["expectation_held"] is False
    assert failed["summary"]["outputs_match"] is True and failed["report"]
    error = outcome(2, json.dumps({"kind": "error", "error": "no exec of pid 1 on n"}),
                    "warming up\n")
    assert error["status"] == "error" and error["error"] == "no exec of pid 1 on n"
    crash = outcome(1, "", "Traceback (most recent call last):\nValueError: bad\n")
    assert crash["status"] == "error" and crash["error"] == "ValueError: bad"
    killed = outcome(-9, "", "replay worker: killed after 60 s\n")
    assert killed["status"] == "error" and killed["error"] == "killed after 60 s"


def test_job_documents_live_in_the_lake(lake_dir: Path) -> None:
    store = JobStore(LakeFiles(resolve(LakeSettings(lake=str(lake_dir)))))
    store.put({"id": "a" * 32, "status": "running"})
    store.put({"id": "a" * 32, "status": "succeeded"})
    assert store.get("a" * 32) == {"id": "a" * 32, "status": "succeeded"}
    assert store.get("b" * 32) is None and store.get_report("a" * 32) is None
    folder = lake_dir / "jobs" / "replays" / ("a" * 32)
    assert sorted(p.name for p in folder.iterdir()) == ["job.json"]  # no temporary left


def test_a_job_without_heartbeat_is_lost(lake_dir: Path) -> None:
    runner = ReplayRunner(resolve(LakeSettings(lake=str(lake_dir))), LakeSettings(),
                          ApiSettings(replay_heartbeat_s=1), ApiMetrics())
    stale = {"id": "c" * 32, "status": "running", "heartbeat_ns": time.time_ns() - 60 * 10**9}
    assert runner.is_lost(stale)
    assert not runner.is_lost({**stale, "heartbeat_ns": time.time_ns()})
    assert not runner.is_lost({**stale, "status": "succeeded"})


def _wait_terminal(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/replays/{job_id}").json()
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_a_replay_that_cannot_run_ends_in_error_with_the_reason(
        make_client: ClientFactory) -> None:
    client = make_client(token="full")
    # GIVEN a process the lake never recorded
    response = client.post("/v1/replays", json={"process": "999999@nowhere"})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "running" and response.headers["location"] == job["links"]["self"]
    # WHEN it ends THEN it is an error carrying the command's one-line reason
    ended = _wait_terminal(client, job["id"])
    assert ended["status"] == "error" and ended["exit_code"] == 2
    assert ended["error"] and "\n" not in ended["error"]
    assert ended["finished_ns"] >= ended["started_ns"]
    assert_problem(client.get(f"/v1/replays/{job['id']}/report"), 404, "not-found",
                   ended["error"])


def test_replay_requests_are_validated_and_bounded(make_client: ClientFactory) -> None:
    client = make_client(token="full", replay_max_running=1)
    for bad in ({"process": "abc"}, {"process": "1@n", "inject": ["x\u0000"]},
                {"process": "1@n", "env": {"1BAD": "x"}}, {"process": "1@n", "mode": "fast"},
                {"process": "1@n", "timeout_s": 0}, {"process": "1@n", "shell": "rm"}):
        assert_problem(client.post("/v1/replays", json=bad), 422, "invalid-request")
    first = client.post("/v1/replays", json={"process": "1@n"})
    assert first.status_code == 202
    busy = client.post("/v1/replays", json={"process": "1@n"})
    assert_problem(busy, 429, "too-many-requests", "already running")
    assert busy.headers["retry-after"] == "5"
    assert_problem(client.get(f"/v1/replays/{first.json()['id']}/report"), 409, "conflict",
                   "still running")
    _wait_terminal(client, first.json()["id"])
    assert_problem(client.get("/v1/replays/" + "f" * 32), 404, "not-found")
    assert_problem(client.get("/v1/replays/../etc"), 404, "not-found")
    assert_problem(client.get("/v1/replays/XYZ"), 422, "invalid-request")


class _TornOnce:
    """Lake files whose job document reads torn once, as an object store can hand back a
    document being rewritten (seen on SeaweedFS: a 500 from GET /v1/replays/{id})."""

    def __init__(self, document: bytes, torn: int) -> None:
        self.document = document
        self.torn = torn
        self.reads = 0

    def read_bytes(self, relative: str) -> bytes | None:
        self.reads += 1
        if self.reads <= self.torn:
            return self.document[: len(self.document) // 2]
        return self.document


def test_a_torn_read_of_a_job_document_is_read_again() -> None:
    document = json.dumps({"id": "j1", "status": "running"}, indent=1).encode()
    files = _TornOnce(document, torn=2)
    assert JobStore(files).get("j1") == {"id": "j1", "status": "running"}  # type: ignore[arg-type]
    assert files.reads == 3
    # a document that never reads whole is an error, not a job
    with pytest.raises(ValueError):
        JobStore(_TornOnce(document, torn=99)).get("j1")  # type: ignore[arg-type]
