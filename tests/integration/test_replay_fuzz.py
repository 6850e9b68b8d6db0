"""Timing fuzz on real programs (root): ``kprobe replay --fuzz N --seed S`` over a lake.

A payment client settles three payments over HTTP, each with a timeout, against a real
settlement server; PAY-1's reply comes after 650 ms. Recorded (reference recorder) with a
750 ms timeout, the reply came about 100 ms before the client would have given up:
fuzzing must find that delaying that one reply flips the outcome (PAY-1 times out) and
shrink every flip to that one row. Recorded with a 10 s timeout, no delay within 200 ms
changes anything. And two threads that print a line each, ordered by nothing but timing:
swapping their writes in the cross-thread order flips the output. N stays small: the
machine has 2 cores shared with others.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kprobe.cli import main
from kprobe.replay_sandbox.ddmin import ddmin
from kprobe.replay_sandbox.engine import ReplayOptions
from kprobe.replay_sandbox.fuzz import FuzzConfig, fuzz
from kprobe.replay_sandbox.perturb import (
    MS,
    Delay,
    Expectation,
    Swap,
    find_inputs,
    find_swaps,
    replay_outcome,
)
from tests.integration.test_replay_cli import _to_lake
from tests.integration.test_replay_recorder import RecordedRun, record
from tests.support import REPO, free_port, require, require_binary, require_root

PROGRAMS = REPO / "tests" / "programs"
PYTHON = "/usr/bin/python3"
ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]
SLOW_MS = 650
SETTLED = 'PAY-1: HTTP 200 {"status": "settled", "request": "PAY-1 slow"}'


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """The settlement server (PAY-1 answered after SLOW_MS); its port."""
    require_root()
    require_binary("bwrap")
    require(Path(PYTHON).exists(), PYTHON)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "replay_settlement_server.py"),
                             str(port), "--slow-ms", str(SLOW_MS)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _client(tmp_path: Path, lake_dir: Path, port: int, timeout_ms: int
            ) -> tuple[str, RecordedRun]:
    """Record the client with ``timeout_ms``; returns PID@NODE in ``lake_dir``."""
    run = record([PYTHON, str(PROGRAMS / "replay_payment_client.py"), str(port),
                  str(timeout_ms)], cwd=str(tmp_path), env=ENV)
    assert run.exit_code == 0 and SETTLED in run.stdout.decode(), run.stdout
    return _to_lake(run, lake_dir), run


@pytest.fixture(scope="module")
def close_call(server: int, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, str, RecordedRun]:
    """The client recorded with a 750 ms timeout (PAY-1's reply ~100 ms before it), in a
    lake: (lake, PID@NODE, the run)."""
    tmp = tmp_path_factory.mktemp("close-call")
    (tmp / "lake").mkdir()
    process, run = _client(tmp, tmp / "lake", server, 750)
    return tmp / "lake", process, run


def _fuzz(lake_dir: Path, process: str, capsys: pytest.CaptureFixture[str], *extra: str
          ) -> tuple[int, dict[str, Any]]:
    code = main(["replay", "--lake", str(lake_dir), "--process", process, "--format", "json",
                 *extra])
    captured = capsys.readouterr()
    assert captured.out.strip(), f"kprobe replay exit {code}, no report: {captured.err[-2000:]}"
    return code, json.loads(captured.out)


def test_fuzz_finds_the_reply_that_arrived_close_to_its_timeout(
        close_call: tuple[Path, str, RecordedRun],
        capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the client recorded with a 750 ms timeout: PAY-1's reply came ~100 ms before it
    lake_dir, process, _run = close_call
    # WHEN fuzzed: 12 perturbed replays, delays up to 200 ms, two worker processes
    code, report = _fuzz(lake_dir, process, capsys, "--fuzz", "12", "--seed", "1",
                         "--fuzz-workers", "2")
    # THEN the exit code says timing matters, and the baseline was the recorded outcome
    assert code == 1, report
    assert report["passed"] is False
    assert report["executor"] == "processes" and report["workers"] == 2
    assert report["baseline"]["status"] == "completed" and report["baseline"]["exit_code"] == 0
    # AND the one wait within 200 ms of its timeout is named as at risk
    (at_risk,) = report["candidates"]["at_risk"]
    assert at_risk["syscall"] == "poll" and at_risk["recorded_wait_ns"] > 500e6
    slack = at_risk["slack_ns"]
    assert 0 < slack < 200e6
    # AND every flip shrinks to exactly that one row, delayed past its slack
    flipped = report["runs"]["flipped"]
    assert flipped, report["perturbed"]
    (flip,) = report["minimal_flips"]
    (delay,) = flip["perturbations"]
    assert delay["kind"] == "delay" and (delay["tid"], delay["seq"]) == (
        at_risk["tid"], at_risk["seq"])
    assert delay["delay_ns"] > slack
    assert flip["found_by_runs"] == flipped and flip["count"] == len(flipped)
    for run in report["perturbed"]:
        rows = {(p.get("tid"), p.get("seq")) for p in run["perturbations"]}
        if run["flipped"]:
            assert (delay["tid"], delay["seq"]) in rows
    # AND the smallest flipping delay is found near the slack (the timeout decides)
    threshold = flip["threshold_ns"]
    assert threshold["not_flipping"] <= slack + 2e6 and threshold["flipping"] >= slack - 2e6
    assert threshold["flipping"] - threshold["not_flipping"] <= 200e6 / 64 + 1
    # AND the change is the one from production: PAY-1 times out, the others settle
    changes = " ".join(flip["changes"])
    assert "PAY-1: HTTP 504 settlement timed out after 750 ms" in changes, changes
    assert report["replays"]["thresholds"] >= 2 and report["replays_per_min"] > 0


def test_ddmin_over_real_replays_shrinks_to_the_late_reply(
        close_call: tuple[Path, str, RecordedRun]) -> None:
    # GIVEN a flipping set of 11 delays: PAY-1's reply 200 ms late, small delays before it
    # (they make the client only slightly late) and large ones after it (PAY-2's inputs)
    _lake, _process, run = close_call
    rec = run.recording()
    inputs = find_inputs(rec)
    (risk,) = [i for i in inputs if i.at_risk(200 * MS)]
    at = inputs.index(risk)
    failing = (*[Delay(i.tid, i.seq, 1 * MS) for i in inputs[max(0, at - 5):at]],
               Delay(risk.tid, risk.seq, 200 * MS),
               *[Delay(i.tid, i.seq, 150 * MS) for i in inputs[at + 1:at + 6]])
    options = ReplayOptions(mode="whatif")
    baseline = replay_outcome(rec, options, (), Expectation())
    assert replay_outcome(rec, options, failing, Expectation()).key != baseline.key

    def fails(sets: list[tuple[Delay, ...]]) -> list[bool]:
        return [replay_outcome(rec, options, s, Expectation()).key != baseline.key
                for s in sets]

    # WHEN shrunk by ddmin, each test a real replay
    shrunk = ddmin(failing, fails)
    # THEN exactly the late reply remains
    assert shrunk.minimal == (Delay(risk.tid, risk.seq, 200 * MS),)
    assert 2 <= shrunk.tests <= 2 * len(failing)


def test_fuzz_finds_nothing_when_timing_does_not_matter(
        server: int, tmp_path: Path, lake_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the client recorded with a 10 s timeout
    process, _run = _client(tmp_path, lake_dir, server, 10_000)
    # WHEN fuzzed in this process (one worker): a few replays, each perturbing something
    code, report = _fuzz(lake_dir, process, capsys, "--fuzz", "5", "--seed", "2",
                         "--fuzz-workers", "1", "--expect-exit", "0")
    # THEN no perturbation flips the outcome: exit 0
    assert code == 0, report
    assert report["passed"] and not report["runs"]["flipped"] and not report["minimal_flips"]
    assert report["candidates"]["inputs"] >= 6 and not report["candidates"]["at_risk"]
    assert all(run["perturbations"] for run in report["perturbed"])
    assert not report["runs"]["errors"] and report["executor"] == "inline"
    assert report["baseline"]["expectation_held"] is True


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local 2-CPU Ray cluster for this module, this process its driver; its GCS address.
    (With token auth, the suite's mode, tests/conftest.py: Ray's GCS listens on every
    interface, whatever ``_node_ip_address`` says.)"""
    require(importlib.util.find_spec("ray") is not None, "ray (pip install ray)")
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20,
                       _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False,
                       configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        yield str(context.address_info["gcs_address"])  # type: ignore[attr-defined]
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_fuzz_runs_its_replays_on_ray(close_call: tuple[Path, str, RecordedRun],
                                      ray_address: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``kprobe replay`` in this process, which is already connected to the module's cluster
    (``connect_ray`` keeps a connection it finds): the campaign's actors are owned by this
    process, and the campaign leaves the caller's connection up. (Its actors died "cancelled
    before it started running" in full runs while an earlier test's local cluster had left
    this process in Ray's token auth mode: tests/conftest.py,
    tests/integration/test_ray_process_state.py.)"""
    import ray

    # GIVEN the 750 ms recording and a Ray cluster this process is connected to
    lake_dir, process, _run = close_call
    # WHEN fuzzed as Ray actors, with the same seed as the local run
    code, report = _fuzz(lake_dir, process, capsys, "--fuzz", "12", "--seed", "1",
                         "--ray-address", ray_address)
    # THEN the replays ran on Ray and found the same single-row flip
    assert report["executor"] == "ray" and report["workers"] == 2
    assert not report["runs"]["errors"], report["perturbed"]
    assert code == 1, report
    (flip,) = report["minimal_flips"]
    assert len(flip["perturbations"]) == 1 and flip["perturbations"][0]["syscall"] == "poll"
    # AND the connection the campaign found is still up: it was not the campaign's to close
    assert ray.is_initialized()


def test_fuzz_swaps_two_lines_that_only_timing_orders(programs: Path, tmp_path: Path) -> None:
    """The outputs are checked against what the program really printed (its stdout pipe),
    not only against the recording. Limit: a recording orders two threads' writes by when
    each call was seen to return, a moment after its bytes reached the pipe, so two writes
    racing on one pipe can be recorded in the other order than the pipe got them (5 of 34
    recordings with adjacent writes, here); an exact replay then prints the recorded order.
    Such recordings are passed over here (another is made), and counted in the failure
    message if none of eight agrees."""
    require_root()
    require_binary("bwrap")
    # GIVEN two threads that each print a line once both are ready (no lock orders them),
    # recorded until the two writes are adjacent in the cross-thread order, and recorded in
    # the order in which the pipe got them
    disagreed = 0
    for _ in range(8):
        run = record([str(programs / "replay_race")], cwd=str(tmp_path), env=ENV)
        rec = run.recording()
        writes = {(r.tid, r.seq) for rows in rec.threads.values() for r in rows
                  if r.name == "write"}
        if not any({s.first, s.second} == writes for s in find_swaps(rec, 200 * MS)):
            continue
        if rec.outputs()[1] == run.stdout:
            break
        disagreed += 1
    else:
        pytest.fail(f"no recording of eight had the two writes adjacent and in the pipe's "
                    f"order ({disagreed} adjacent ones were recorded in the other order)")
    assert sorted(run.stdout.splitlines()) == [b"credit", b"debit"]
    # WHEN fuzzed (in this process)
    report = fuzz(rec, None, FuzzConfig(runs=3, seed=1, executor="inline"))
    # THEN the unperturbed replay printed exactly what the program printed
    assert dict(report.baseline.previews)[1] == run.stdout
    # AND serving the second write first flips the output: the lines change places
    assert not report.passed and report.flipped_runs
    (flip,) = report.flips
    (swap,) = flip.perturbations
    assert isinstance(swap, Swap) and {swap.first, swap.second} == writes
    first, second = run.stdout.splitlines(keepends=True)
    assert f"{(first + second).decode()!r} -> {(second + first).decode()!r}" in \
        " ".join(report.to_dict()["minimal_flips"][0]["changes"])
    # AND without order perturbations there is nothing to perturb in this program
    calm = fuzz(rec, None, FuzzConfig(runs=3, seed=1, executor="inline", swaps=False))
    assert calm.passed and not calm.runs and "nothing to perturb" in calm.render_text()
