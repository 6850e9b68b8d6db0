"""Timing fuzz on a recording made by the agent (root): ``kprobe run --payloads`` with the
defaults records a payment client, then ``kprobe replay --fuzz N`` perturbs it.

The client settles three payments over HTTP with a 750 ms timeout against a real settlement
server (not recorded: a peer) that answers PAY-1 after 650 ms: the reply came about 100 ms
before the client would have given up. The fuzz must name that wait as at risk and shrink
every flip to a delay of that one reply past its slack. The control: recorded with a 10 s
timeout, no delay within 200 ms changes the outcome.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_replay import pid_of, record, replay
from tests.support import REPO, free_port, require_binary, require_root

pytestmark = pytest.mark.timeout(900)
PROGRAMS = REPO / "tests" / "programs"
CLIENT = str(PROGRAMS / "replay_payment_client.py")
SETTLED = 'PAY-1: HTTP 200 {"status": "settled", "request": "PAY-1 slow"}'
TIMED_OUT = "PAY-1: HTTP 504 settlement timed out after 750 ms"


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """The settlement server, answering PAY-1 after 650 ms; its port."""
    require_root()
    require_binary("bwrap")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "replay_settlement_server.py"),
                             str(port), "--slow-ms", "650"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _recorded_client(tmp: Path, port: int, timeout_ms: int) -> tuple[Path, str]:
    recorded = record(tmp, "/usr/bin/python3", CLIENT, str(port), str(timeout_ms))
    assert recorded.run.returncode == 0, recorded.run.stderr[-2000:]
    assert SETTLED in recorded.run.stdout, recorded.run.stdout
    return recorded.lake, pid_of(recorded.lake, CLIENT)


def _fuzz(lake: Path, process: str, *extra: str) -> tuple[int, dict[str, Any]]:
    return replay(lake, process, "--fuzz-workers", "2", "--expect-output-match", *extra,
                  timeout=600)


def test_fuzz_on_an_agent_recording_finds_the_reply_close_to_its_timeout(
        server: int, tmp_path: Path) -> None:
    # GIVEN the client recorded by the agent, with the defaults, 750 ms timeout
    lake, process = _recorded_client(tmp_path, server, 750)
    # WHEN fuzzed: 8 perturbed replays with delays up to 200 ms
    code, report = _fuzz(lake, process, "--fuzz", "8", "--seed", "1")
    # THEN timing matters, and the unperturbed replay is the recorded outcome
    assert code == 1 and report["passed"] is False, report
    assert report["baseline"]["status"] == "completed" and report["baseline"]["exit_code"] == 0
    # AND the wait that got its reply ~100 ms before its timeout is the one at risk
    (at_risk,) = report["candidates"]["at_risk"]
    assert at_risk["syscall"] in ("poll", "ppoll", "select", "pselect6", "epoll_wait")
    assert 0 < at_risk["slack_ns"] < 200e6, at_risk
    # AND every flip shrinks to a delay of that reply past its slack: PAY-1 times out
    flip = report["minimal_flips"][0]
    (delay,) = flip["perturbations"]
    assert delay["kind"] == "delay" and (delay["tid"], delay["seq"]) == (
        at_risk["tid"], at_risk["seq"])
    assert delay["delay_ns"] > at_risk["slack_ns"]
    assert TIMED_OUT in " ".join(flip["changes"]), flip["changes"]


def test_fuzz_on_an_agent_recording_finds_nothing_when_timing_does_not_matter(
        server: int, tmp_path: Path) -> None:
    # GIVEN the client recorded with a 10 s timeout: 650 ms is far from it
    lake, process = _recorded_client(tmp_path, server, 10_000)
    # WHEN fuzzed
    code, report = _fuzz(lake, process, "--fuzz", "6", "--seed", "1")
    # THEN no perturbation flips the outcome
    assert code == 0 and report["passed"] is True, report
    assert report["runs"]["flipped"] == [] and report["minimal_flips"] == []
    assert report["baseline"]["status"] == "completed"
