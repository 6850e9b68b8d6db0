"""``kprobe analyze --follow``'s follower: the watermark from the agents' flush markers,
windows analysed once closed, and again when late rows reach them (synthetic lake rows)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from kprobe.compute.errors import GraphNotFound, NotFound
from kprobe.compute.explain import explain
from kprobe.compute.follow import Follower, FollowOptions
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeLocation, LakeSettings, LakeWriter, resolve
from tests.unit.test_compute_scenario import T0, Scenario, payment_scenario

S = 1_000_000_000
W0 = T0 - 60 * S  # the 60 s window holding the payment (13:59:00-14:00:00)


def marker(lake_dir: Path, node: str, ts_ns: int, kind: str = "flush") -> None:
    """What an agent's flush (or stop) writes after its batches."""
    LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node=node)).append(
        "agent_meta", pa.table({"ts_ns": [ts_ns], "kind": [kind], "boot_id": ["b"]}))


def follower(lake_dir: Path, **options: object) -> Follower:
    location = resolve(LakeSettings(lake=str(lake_dir)))
    opts = {"start_ns": W0, "window_ns": 60 * S, "grace_ns": 10 * S, "late_check_s": 0.0,
            **options}
    return Follower(location, ComputeSettings(), FollowOptions(**opts))  # type: ignore[arg-type]


def explained(location: LakeLocation, txn: str) -> bool:
    try:
        return bool(explain(location, txn, ComputeSettings()))
    except (GraphNotFound, NotFound):
        return False


def test_watermark_is_the_oldest_live_agent(lake_dir: Path) -> None:
    now = T0 + 600 * S
    marker(lake_dir, "a", now - 3 * S)
    marker(lake_dir, "b", now - 8 * S)  # the laggard holds the watermark
    marker(lake_dir, "c", now - 500 * S)  # silent for 500 s: timed out, holds nothing
    marker(lake_dir, "d", now - 9 * S)
    marker(lake_dir, "d", now - 8 * S - S // 2, kind="stop")  # finished: all its rows are in
    mark = follower(lake_dir).watermark(now)
    assert mark.ts_ns == now - 8 * S
    assert mark.live == ("a", "b")
    assert mark.flushes["c"] == now - 500 * S  # known (the first look spans the horizon)
    # control: with no live agent the watermark is the clock
    assert follower(lake_dir, node_timeout_ns=1 * S).watermark(now).ts_ns == now


def test_a_window_is_analysed_once_closed_and_explains_its_failure(lake_dir: Path) -> None:
    payment_scenario().write(lake_dir)
    f = follower(lake_dir)
    location = f.location
    now = T0 + 60 * S
    # the agent has flushed up to 5 s after the window's end: within the grace, not closed
    marker(lake_dir, "n1", T0 + 5 * S)
    assert f.step(now) == []
    assert not explained(location, "98721")
    # flushed past end + grace: the window closes, the failure is explained
    marker(lake_dir, "n1", T0 + 11 * S)
    [output] = f.step(now)
    assert output.window.start_ns == W0 and output.summary["failures"] >= 1
    [result] = explain(location, "98721", ComputeSettings())
    root = result["root_cause"] if isinstance(result, dict) else result.root_cause
    kind = root["kind"] if isinstance(root, dict) else root.kind  # type: ignore[union-attr]
    assert kind == "memory_pressure"
    # nothing new: the next poll analyses nothing
    assert f.step(now) == []
    assert f.stats.windows == 1 and f.stats.reanalysed == 0


def test_late_spans_make_the_window_analysed_again(lake_dir: Path) -> None:
    payment_scenario().write(lake_dir)
    marker(lake_dir, "n1", T0 + 11 * S)
    f = follower(lake_dir)
    now = T0 + 60 * S
    assert len(f.step(now)) == 1
    assert not explained(f.location, "55555")
    # a second failed payment in the same window, exported after the window was analysed
    late = Scenario()
    late.span("t2", "x", None, "payment-handler", "POST /payments", -20_000, -19_000,
              pid=100, tid=101, status="ERROR", message="declined", kind="SERVER",
              attrs={"payment.id": 55555})
    late.write(lake_dir)
    [again] = f.step(now)
    assert again.window.start_ns == W0
    assert f.stats.reanalysed == 1
    assert explained(f.location, "55555") and explained(f.location, "98721")
    assert f.step(now) == []  # once
    # late rows are looked for every late_check_s, not every poll
    slow = follower(lake_dir, late_check_s=3600.0)
    assert len(slow.step(now)) == 1
    late.rows["spans"][0]["span_id"] = "y".ljust(16, "0")
    late.write(lake_dir)
    assert slow.step(now) == []
    slow._late_checked = float("-inf")  # the interval has passed
    assert len(slow.step(now)) == 1


def test_a_node_back_from_a_timeout_gets_its_windows_analysed_again(lake_dir: Path) -> None:
    payment_scenario().write(lake_dir)
    marker(lake_dir, "n1", T0 + 11 * S)
    marker(lake_dir, "n2", T0 - 70 * S)  # n2 went silent before the window
    f = follower(lake_dir, node_timeout_ns=60 * S)
    now = T0 + 20 * S  # n2 silent for 90 s: timed out, n1 holds the watermark alone
    assert len(f.step(now)) == 1
    assert f.step(now) == []
    # n2 returns and drains its spool: its flush markers pass the window's end
    marker(lake_dir, "n2", T0 + 15 * S)
    [again] = f.step(now + 5 * S)
    assert again.window.start_ns == W0 and f.stats.reanalysed == 1


def test_a_failing_window_is_retried_then_given_up(lake_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from kprobe.compute import follow as follow_module
    from kprobe.compute.errors import AnalysisError

    payment_scenario().write(lake_dir)
    marker(lake_dir, "n1", T0 + 11 * S)
    calls = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise AnalysisError("boom")

    monkeypatch.setattr(follow_module, "analyze_windows", failing)
    f = follower(lake_dir, max_attempts=2)
    now = T0 + 60 * S
    assert f.step(now) == [] and f.step(now) == [] and f.step(now) == []
    assert len(calls) == 2 and f.stats.failed == 2


def test_follow_options_are_checked_in_one_line(lake_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from kprobe.cli import main

    lake = ["--lake", str(lake_dir)]
    for argv, words in (
            (["analyze", *lake], "--from and --to are required (or --follow)"),
            (["analyze", "--follow", "--to", "now", *lake], "--to cannot be used with"),
            (["analyze", "--follow", "--grace", "soon", *lake], "--grace: not a duration"),
            (["analyze", "--follow", "--poll", "0s", *lake], "--poll: duration"),
            (["analyze", "--follow", "--metrics-port", "70000", *lake], "not a port"),
            (["analyze", "--follow", "--export-otlp", "udp://x:1", *lake],
             "not an OTLP/HTTP endpoint")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (argv, err)
