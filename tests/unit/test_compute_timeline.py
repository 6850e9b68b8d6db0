"""Thread-state timelines from sched switch rows, and span decomposition that sums up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kprobe.compute import timeline
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window, load, split
from kprobe.lake import LakeSettings, resolve
from kprobe.lake.timespec import TimeSpecError, parse_instant
from tests.unit.test_compute_scenario import (
    MS,
    T0,
    WINDOW_END,
    WINDOW_START,
    Scenario,
    analyze,
    key,
    rels,
    span_row,
)


def _worker_scenario() -> Scenario:
    """Thread 11 (pid 10) on CPU 0: runs 0-10 ms, sleeps on a futex until thread 21 wakes
    it at 30 ms, waits for CPU 0 (held by 21) until 35 ms, runs to 50 ms, is preempted by
    21 until 55 ms, runs to 60 ms."""
    sc = Scenario().process(10, "api").process(20, "holder")
    sc.run(0, 10, 11, 0, 10, leave="S")
    sc.offcpu(10, 11, 10, 30, "futex", waker=(20, 21))
    sc.run(0, 20, 21, 25, 35, leave="S")
    sc.wake(30, (10, 11), (20, 21))
    sc.run(0, 10, 11, 35, 50, leave="R")
    sc.run(0, 20, 21, 50, 55, leave="S")
    sc.run(0, 10, 11, 55, 60, leave="S")
    return sc


def test_timeline_from_switch_rows(lake_dir: Path) -> None:
    # GIVEN a handful of switch and waking rows for one thread
    _worker_scenario().write(lake_dir)
    location = resolve(LakeSettings(lake=str(lake_dir)))
    settings = ComputeSettings(timeline_all_threads=True)  # no spans to pick threads by
    # WHEN the timeline is built
    loaded = load(location, Window(WINDOW_START, WINDOW_END), settings)
    timeline.build(loaded.con, T0 + 60 * MS, settings)
    rows = loaded.con.execute(f"""
        SELECT (s - {T0}) // {MS}, (e - {T0}) // {MS}, state, reason, waker_tid, cpu
        FROM thread_intervals WHERE tid = 11 ORDER BY s""").fetchall()
    # THEN running / blocked (with the offcpu reason and the waking row's waker) / runnable
    assert rows == [
        (0, 10, "running", None, None, 0),
        (10, 30, "blocked", "futex", 21, 0),
        (30, 35, "runnable", None, 21, 0),
        (35, 50, "running", None, None, 0),
        (50, 55, "runnable", None, None, 0),  # preempted (prev_state R): run-queue wait
        (55, 60, "running", None, None, 0),
    ]
    holders = loaded.con.execute(f"""
        SELECT (s - {T0}) // {MS}, (e - {T0}) // {MS}, tid FROM cpu_intervals
        WHERE cpu = 0 ORDER BY s""").fetchall()
    assert holders == [(0, 10, 11), (25, 35, 21), (35, 50, 11), (50, 55, 21), (55, 60, 11)]
    loaded.con.close()


def _thread_11_and_cpu_0(lake_dir: Path, sc: Scenario
                         ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``sc``'s timeline: thread 11's intervals (ms, state, reason, waker) and CPU 0's
    holders (ms, tid)."""
    sc.write(lake_dir)
    settings = ComputeSettings(timeline_all_threads=True)
    loaded = load(resolve(LakeSettings(lake=str(lake_dir))), Window(WINDOW_START, WINDOW_END),
                  settings)
    timeline.build(loaded.con, T0 + 60 * MS, settings)
    rows = loaded.con.execute(f"""
        SELECT (s - {T0}) // {MS}, (e - {T0}) // {MS}, state, reason, waker_tid
        FROM thread_intervals WHERE tid = 11 ORDER BY s""").fetchall()
    holders = loaded.con.execute(f"""
        SELECT (s - {T0}) // {MS}, (e - {T0}) // {MS}, tid FROM cpu_intervals
        WHERE cpu = 0 ORDER BY s""").fetchall()
    loaded.con.close()
    return rows, holders


def _untraced_scenario(dated: bool = False, pid1_from: float = 25, back_at: float = 35,
                       ran_ms: float | None = None) -> Scenario:
    """Thread 11 (pid 10) on CPU 0 runs 0-10 ms and sleeps on a futex until thread 21 wakes
    it at 30 ms. Thread 21 holds CPU 0 from 12 ms until a thread of PID 1 (tid 1001) takes
    it at ``pid1_from``; 1001 leaves at ``back_at`` and the kernel fires no sched_switch for
    that (this VM's 6.18 kernel, for PID 1's threads), so thread 11's switch in then is
    never seen. Thread 11 runs to 50 ms; the capture emits its off-CPU interval ending at
    its waking (ends_at_waking). ``dated``: its switch out at 50 ms says how long it ran
    (else, as for a task outside the fair class, it says nothing)."""
    sc = Scenario().process(10, "api").process(20, "holder").process(1, "process_api")
    sc.run(0, 10, 11, 0, 10, leave="S")
    sc.run(0, 20, 21, 12, pid1_from, leave="S")
    sc.run(0, 1, 1001, pid1_from, back_at, leave="S")
    sc.run(0, 10, 11, back_at, 50, leave="S", dated=dated, ran_ms=ran_ms)
    sc.untraced_switch(0, back_at)
    sc.offcpu(10, 11, 10, 30, "futex", waker=(20, 21), ends_at_waking=True)
    sc.wake(30, (10, 11), (20, 21))
    return sc


def test_a_lost_switch_in_is_dated_by_the_run_its_switch_out_reports(lake_dir: Path) -> None:
    # GIVEN a thread whose switch back onto the CPU was not traced, and whose switch out
    # says how long it had run
    # WHEN the timeline is built
    rows, holders = _thread_11_and_cpu_0(lake_dir, _untraced_scenario(dated=True))
    # THEN it waited for the CPU from its waking until it came in, 15 ms before it left
    assert rows == [
        (0, 10, "running", None, None),
        (10, 30, "blocked", "futex", 21),
        (30, 35, "runnable", None, 21),
        (35, 50, "running", None, None),
        (50, 60, "blocked", "other", None),
    ]
    # AND the PID-1 thread that left untraced held CPU 0 until then, and thread 11 after
    assert holders == [(0, 10, 11), (12, 25, 21), (25, 35, 1001), (35, 50, 11)]


def test_untraced_switch_in_is_unknown_not_run_queue(lake_dir: Path) -> None:
    # GIVEN a thread whose switch back onto the CPU was not traced, and whose switch out
    # does not say how long it ran
    # WHEN the timeline is built
    rows, holders = _thread_11_and_cpu_0(lake_dir, _untraced_scenario())
    # THEN the wait ends at the waking, and the time from the waking to the next switch
    # out is unknown: neither run-queue wait nor on-CPU (it ran from an unknown instant)
    assert rows == [
        (0, 10, "running", None, None),
        (10, 30, "blocked", "futex", 21),
        (30, 50, "unknown", None, 21),
        (50, 60, "blocked", "other", None),  # asleep to the end, nothing recorded woke it
    ]
    # AND the PID-1 thread that left untraced is not blamed for holding CPU 0 past 35 ms
    assert holders == [(0, 10, 11), (12, 25, 21)]


def test_untraced_switch_in_decomposes_as_unknown(lake_dir: Path) -> None:
    # GIVEN a span over thread 11's whole life in the scenario above
    sc = _untraced_scenario()
    sc.span("t1", "a", None, "api", "GET /x", 0, 50, pid=10, tid=11)
    analysis = analyze(sc, lake_dir)
    a = span_row(analysis, "a")
    # THEN 20 ms are unknown, none of it run-queue wait, and the parts still sum up
    assert (a["on_cpu_ns"], a["runqueue_ns"], a["blocked_ns"], a["unknown_ns"]) == (
        10 * MS, 0, 20 * MS, 20 * MS)
    # AND no CPU contention is invented from the unknown part
    assert not [r for r in rels(analysis, src=key("a")) if r["kind"] == "cpu_contention"]


def _untraced_after_a_wait_scenario() -> Scenario:
    """As above, but thread 21 holds CPU 0 until 40 ms, after thread 11's waking; 1001
    leaves at 45 ms, and thread 11's switch out does not say how long it ran."""
    return _untraced_scenario(pid1_from=40, back_at=45)


def test_a_lost_switch_in_is_a_run_queue_wait_until_the_cpus_last_traced_switch(
        lake_dir: Path) -> None:
    # GIVEN a thread woken while another held its CPU, whose switch back in was not traced
    # WHEN the timeline is built
    rows, holders = _thread_11_and_cpu_0(lake_dir, _untraced_after_a_wait_scenario())
    # THEN it waited for CPU 0 until 40 ms (every traced switch of CPU 0 before its switch
    # out came before it was back on it), and only the time after that is unknown (the
    # control, the scenario above: a CPU that last switched before the waking leaves the
    # whole time from the waking on unknown)
    assert rows == [
        (0, 10, "running", None, None),
        (10, 30, "blocked", "futex", 21),
        (30, 40, "runnable", None, 21),
        (40, 50, "unknown", None, 21),
        (50, 60, "blocked", "other", None),
    ]


def test_a_lost_switch_in_after_a_wait_blames_the_cpus_traced_holder(lake_dir: Path) -> None:
    # GIVEN a span over thread 11's 50 ms in the scenario above
    sc = _untraced_after_a_wait_scenario()
    sc.span("t1", "a", None, "api", "GET /x", 0, 50, pid=10, tid=11)
    analysis = analyze(sc, lake_dir)
    a = span_row(analysis, "a")
    # THEN 10 ms of run-queue wait, 10 unknown, and the parts still sum up
    assert (a["on_cpu_ns"], a["runqueue_ns"], a["blocked_ns"], a["unknown_ns"]) == (
        10 * MS, 10 * MS, 20 * MS, 10 * MS)
    # AND the CPU contention names thread 21, which held CPU 0 for those 10 ms, and not
    # the PID-1 thread whose end on the CPU is unknown
    assert [(r["dst"], r["delay_ns"]) for r in rels(analysis, src=key("a"))
            if r["kind"] == "cpu_contention"] == [("n1:21", 10 * MS)]


def test_decomposition_sums_to_the_span(lake_dir: Path) -> None:
    # GIVEN a span over the whole life of thread 11 and one that starts before its first
    # switch (time the timeline cannot know)
    sc = _worker_scenario()
    sc.span("t1", "a", None, "api", "GET /x", 0, 60, pid=10, tid=11)
    sc.span("t1", "b", None, "api", "early", -5, 12, pid=10, tid=11)
    # WHEN analysed
    analysis = analyze(sc, lake_dir)
    a, b = span_row(analysis, "a"), span_row(analysis, "b")
    # THEN on-CPU, run-queue and blocked-by-reason add up to the duration exactly
    assert (a["on_cpu_ns"], a["runqueue_ns"], a["blocked_ns"], a["unknown_ns"]) == (
        30 * MS, 10 * MS, 20 * MS, 0)
    assert a["on_cpu_ns"] + a["runqueue_ns"] + a["blocked_ns"] + a["unknown_ns"] == a["dur_ns"]
    assert '"futex":20000000' in a["blocked_by_reason"]
    assert (b["on_cpu_ns"], b["blocked_ns"], b["unknown_ns"]) == (10 * MS, 2 * MS, 5 * MS)
    assert b["on_cpu_ns"] + b["runqueue_ns"] + b["blocked_ns"] + b["unknown_ns"] == b["dur_ns"]


def test_span_without_thread_is_all_unknown(lake_dir: Path) -> None:
    sc = _worker_scenario()
    sc.span("t1", "a", None, "api", "GET /x", 0, 60, pid=99)  # no tid, no connection
    analysis = analyze(sc, lake_dir)
    a = span_row(analysis, "a")
    assert a["tid"] is None and a["unknown_ns"] == a["dur_ns"] == 60 * MS


def test_windows_align_and_parse() -> None:
    windows = split(parse_instant("2026-01-01T14:00:30Z"), parse_instant("2026-01-01T14:02:00Z"),
                    60 * 10**9, ("n1",))
    assert [w.id for w in windows] == ["20260101T140000Z_60s@n1", "20260101T140100Z_60s@n1"]
    assert Window.parse(windows[0].id) == windows[0]
    odd = Window(T0 + 123, T0 + 5 * MS)
    assert Window.parse(odd.id) == odd
    assert parse_instant("-1m", now_ns=T0) == T0 - 60 * 10**9


def test_bad_window_inputs() -> None:
    from kprobe.compute.errors import WindowError

    with pytest.raises(WindowError, match="not after its start"):
        Window(T0, T0)
    with pytest.raises(TimeSpecError, match="not a time"):
        parse_instant("yesterday-ish")
    with pytest.raises(WindowError, match="windows of"):
        split(T0, T0 + 10**15, 10**9, max_windows=100)


def test_a_wakeup_before_a_threads_first_row_is_dated_the_same_way(lake_dir: Path) -> None:
    # GIVEN thread 11, woken by 21 at 5 ms, whose switch in at 10 ms (after a PID-1 thread)
    # was not traced: its first row is its switch out at 20 ms, which says it ran 10 ms
    sc = Scenario().process(10, "api").process(20, "holder").process(1, "process_api")
    sc.run(0, 1, 1001, 2, 10, leave="S")
    sc.run(0, 10, 11, 10, 20, leave="S")
    sc.untraced_switch(0, 10)
    sc.wake(5, (10, 11), (20, 21))
    rows, holders = _thread_11_and_cpu_0(lake_dir, sc)
    # THEN it waited for the CPU (held by the PID-1 thread) from its waking until it came
    # in, and ran after; the waker is the wait's, not the run's
    assert rows[:2] == [(5, 10, "runnable", None, 21), (10, 20, "running", None, None)]
    assert holders[:2] == [(2, 10, 1001), (10, 20, 11)]


def test_a_run_that_reaches_back_past_the_cpus_last_switch_starts_there(
        lake_dir: Path) -> None:
    # GIVEN the dated scenario, but thread 11's switch out says it ran 30 ms: back past
    # 25 ms, when the PID-1 thread's switch in (traced) put another thread on CPU 0
    rows, holders = _thread_11_and_cpu_0(lake_dir, _untraced_scenario(dated=True, ran_ms=30))
    # THEN it came in no earlier than that switch, nor than its waking (30 ms): running
    # from there; CPU 0's holders know only the CPU's rows, so thread 11 holds it from
    # 25 ms (a scheduler count this far off is rare: up to 1.4 ms here against traced runs)
    assert rows[2:4] == [(30, 50, "running", None, None), (50, 60, "blocked", "other", None)]
    assert holders == [(0, 10, 11), (12, 25, 21), (25, 50, 11)]
