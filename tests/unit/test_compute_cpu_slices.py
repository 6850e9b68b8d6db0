"""The engine on a node recorded with evidence capture: who held a CPU comes from the
slices (table cpu_slices), not from switch rows that exist only around long waits."""

from __future__ import annotations

from pathlib import Path

from kprobe.compute import timeline
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window, load
from kprobe.lake import LakeSettings, resolve
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


def _preempted_api(slices: bool) -> Scenario:
    """Thread 11 (api) runs 0-10 ms on CPU 0, is preempted, waits for CPU 0 until 30 ms,
    runs to 40 ms. Evidence capture kept the switch rows of that 20 ms wait; who ran on
    CPU 0 meanwhile is only in the slices: thread 21 (batch) 10 ms of [10, 20) and 6 ms
    of [20, 30), thread 31 (cron) 4 ms of [20, 30)."""
    sc = Scenario().process(10, "api").process(20, "batch").process(30, "cron")
    sc.run(0, 10, 11, 0, 10, leave="R")
    sc.run(0, 10, 11, 30, 40, leave="S")
    sc.span("t1", "a", None, "api", "GET /quote", 0, 40, pid=10, tid=11)
    if slices:
        for start, tid, pid, comm, oncpu in ((0, 11, 10, "api", 10), (10, 21, 20, "batch", 10),
                                            (20, 21, 20, "batch", 6), (20, 31, 30, "cron", 4),
                                            (30, 11, 10, "api", 10)):
            sc.rows["cpu_slices"].append({
                "ts_ns": T0 + start * MS, "dur_ns": 10 * MS, "cpu": 0, "pid": pid, "tid": tid,
                "comm": comm, "oncpu_ns": oncpu * MS, "runq_ns": 0, "switches": 1,
                "waits": 0})
    return sc


def test_cpu_holders_during_a_run_queue_wait_come_from_the_slices(lake_dir: Path) -> None:
    # GIVEN the api thread's 20 ms run-queue wait, its holders only in the slices
    analysis = analyze(_preempted_api(slices=True), lake_dir)
    # THEN each holder is blamed for the time the slices say it ran meanwhile
    edges = {r["dst"]: r["delay_ns"] for r in rels(analysis, src=key("a"),
                                                    kind="cpu_contention")}
    node = next(iter(edges)).rsplit(":", 1)[0] if edges else ""
    assert edges == {f"{node}:21": 16 * MS, f"{node}:31": 4 * MS}
    # AND a holder seen only in the slices is named by them
    threads = {r["id"]: (r["pid"], r["comm"]) for r in analysis.tables["Thread"].to_pylist()}
    assert threads[f"{node}:31"] == (30, "cron")


def test_without_slices_the_wait_has_no_holder_to_blame(lake_dir: Path) -> None:
    # GIVEN the same switch rows and no slices (the control: the rows alone show CPU 0 idle)
    analysis = analyze(_preempted_api(slices=False), lake_dir)
    # THEN nobody is blamed for CPU contention
    assert rels(analysis, src=key("a"), kind="cpu_contention") == []


def _waits_in_its_own_slice(*others: tuple[int, int, str, float]) -> Scenario:
    """Thread 11 (api) runs 0-4 ms on CPU 0, is preempted, waits for CPU 0 until 10 ms,
    runs 10-14 ms. The slice [0, 10) holds its own 4 ms and ``others`` (tid, pid, comm,
    on-CPU ms)."""
    sc = Scenario().process(10, "api")
    for _tid, pid, comm, _ms in others:
        sc.process(pid, comm)
    sc.run(0, 10, 11, 0, 4, leave="R")
    sc.run(0, 10, 11, 10, 14, leave="S")
    sc.span("t1", "a", None, "api", "GET /quote", 0, 14, pid=10, tid=11)
    _slices_of(sc, (0, 11, 10, "api", 4), *((0, tid, pid, comm, ms)
                                           for tid, pid, comm, ms in others),
               (10, 11, 10, "api", 4))
    return sc


def test_a_wait_in_a_slice_the_waiter_also_ran_in_is_the_other_threads_time(
        lake_dir: Path) -> None:
    # GIVEN the api's 6 ms wait in a slice where it ran 4 ms and a batch thread 6 ms
    analysis = analyze(_waits_in_its_own_slice((21, 20, "batch", 6)), lake_dir)
    # THEN the batch thread held the CPU all 6 ms of the wait (not 6 x 0.6: the api's own
    # share of the slice is time it ran, not time it waited)
    edges = {r["dst"].rsplit(":", 1)[1]: r["delay_ns"]
             for r in rels(analysis, src=key("a"), kind="cpu_contention")}
    assert edges == {"21": 6 * MS}


def test_a_wait_is_shared_among_the_other_holders_by_what_each_ran(lake_dir: Path) -> None:
    # GIVEN the same wait, and the slice's other 6 ms split 4:2 between batch and cron
    analysis = analyze(_waits_in_its_own_slice((21, 20, "batch", 4), (31, 30, "cron", 2)),
                       lake_dir)
    # THEN each is blamed in that proportion, for the whole wait
    edges = {r["dst"].rsplit(":", 1)[1]: r["delay_ns"]
             for r in rels(analysis, src=key("a"), kind="cpu_contention")}
    assert edges == {"21": 4 * MS, "31": 2 * MS}


def test_a_holder_is_never_blamed_for_more_than_it_ran(lake_dir: Path) -> None:
    # GIVEN the same wait, and a slice whose only other thread ran 1 ms (the CPU idle else)
    analysis = analyze(_waits_in_its_own_slice((21, 20, "batch", 1)), lake_dir)
    # THEN it is blamed for its 1 ms, not for the whole 6 ms wait
    edges = {r["dst"].rsplit(":", 1)[1]: r["delay_ns"]
             for r in rels(analysis, src=key("a"), kind="cpu_contention")}
    assert edges == {"21": 1 * MS}


def _slices_of(sc: Scenario, *rows: tuple[float, int, int, str, float]) -> Scenario:
    for start, tid, pid, comm, oncpu in rows:
        sc.rows["cpu_slices"].append({
            "ts_ns": T0 + int(start * MS), "dur_ns": 10 * MS, "cpu": 0, "pid": pid,
            "tid": tid, "comm": comm, "oncpu_ns": int(oncpu * MS), "runq_ns": 0,
            "switches": 1, "waits": 0})
    return sc


def test_a_running_segment_holds_no_more_cpu_time_than_its_slices(lake_dir: Path) -> None:
    # GIVEN evidence rows that put thread 21 on CPU 0 from 0 to 40 ms (its short sleeps in
    # between left no rows), slices that say it ran 1 ms of that, and thread 11 whose
    # 5 ms segment is all in its slice (it ran 5 ms)
    sc = Scenario().process(10, "api").process(20, "ledger")
    sc.run(0, 20, 21, 0, 40, leave="S")
    sc.run(1, 10, 11, 0, 5, leave="S")
    _slices_of(sc, (0, 21, 20, "ledger", 0.6), (10, 21, 20, "ledger", 0.2),
               (20, 21, 20, "ledger", 0.2), (30, 21, 20, "ledger", 0))
    sc.rows["cpu_slices"][-1]["runq_ns"] = 3 * MS  # and waited 3 ms for the CPU
    sc.rows["cpu_slices"].append({
        "ts_ns": T0, "dur_ns": 10 * MS, "cpu": 1, "pid": 10, "tid": 11, "comm": "api",
        "oncpu_ns": 5 * MS, "runq_ns": 0, "switches": 1, "waits": 0})
    sc.write(lake_dir)
    settings = ComputeSettings(timeline_all_threads=True)
    loaded = load(resolve(LakeSettings(lake=str(lake_dir))), Window(WINDOW_START, WINDOW_END),
                  settings)
    timeline.build(loaded.con, T0 + 60 * MS, settings)

    def states(tid: int) -> list[tuple[float, float, str]]:
        return [(s / MS, e / MS, state) for s, e, state in loaded.con.execute(f"""
            SELECT s - {T0}, e - {T0}, state FROM thread_intervals WHERE tid = {tid}
            AND s < {T0 + 40 * MS} AND state <> 'blocked' ORDER BY s""").fetchall()]

    # THEN thread 21 ran 1 ms of it, waited 3 ms for a CPU, and the rest is unknown
    # (short blocked waits: neither on-CPU nor run-queue)
    assert states(21) == [(0, 1, "running"), (1, 4, "runnable"), (4, 40, "unknown")]
    # AND a segment its slices account for stays running whole
    assert states(11) == [(0, 5, "running")]
    loaded.con.close()


def _thread_21_states(lake_dir: Path, sc: Scenario) -> list[tuple[float, float, str]]:
    sc.write(lake_dir)
    settings = ComputeSettings(timeline_all_threads=True)
    loaded = load(resolve(LakeSettings(lake=str(lake_dir))), Window(WINDOW_START, WINDOW_END),
                  settings)
    timeline.build(loaded.con, T0 + 60 * MS, settings)
    got = [(s / MS, e / MS, state) for s, e, state in loaded.con.execute(f"""
        SELECT s - {T0}, e - {T0}, state FROM thread_intervals WHERE tid = 21
        AND s < {T0 + 40 * MS} ORDER BY s""").fetchall()]
    loaded.con.close()
    return got


def _switched_in_again(slices: bool) -> Scenario:
    """Thread 21 runs on CPU 0 from 0 ms, is preempted at 30 ms without a row (evidence
    capture keeps none for a short wait), and is switched in again at 31 ms (a row: it
    bounds another thread's long wait), then runs to 40 ms."""
    sc = Scenario().process(20, "ledger")
    sc.run(0, 20, 21, 0, 30, leave="R").untraced_switch(0, 30)
    sc.run(0, 20, 21, 31, 40, leave="S")
    if slices:
        _slices_of(sc, (0, 21, 20, "ledger", 10), (10, 21, 20, "ledger", 10),
                   (20, 21, 20, "ledger", 10), (30, 21, 20, "ledger", 9))
        sc.rows["cpu_slices"][-1]["runq_ns"] = 1 * MS
    return sc


def _preempted_then_out(slices: bool, dated: bool = True) -> Scenario:
    """Thread 21 runs from 0 ms, is preempted at 10 ms (a row), is back on CPU 0 at
    10.5 ms without a row (a short run-queue wait keeps none), runs to 30 ms, sleeps (a
    row)."""
    sc = Scenario().process(20, "ledger")
    sc.run(0, 20, 21, 0, 10, leave="R")
    sc.run(0, 20, 21, 10.5, 30, leave="S", dated=dated).untraced_switch(0, 10.5)
    if slices:
        _slices_of(sc, (0, 21, 20, "ledger", 10), (10, 21, 20, "ledger", 9.5),
                   (20, 21, 20, "ledger", 10))
        sc.rows["cpu_slices"][1]["runq_ns"] = MS // 2
    return sc


def test_a_thread_switched_in_again_ran_as_its_slices_say(lake_dir: Path) -> None:
    # GIVEN a node recorded with evidence capture, and a thread's switch in followed by
    # another switch in (its short preemption in between left no row)
    # THEN it was running from the first (ciK: the postgres scenario's lock holder, on CPU
    # for 220 ms of a payment's 151 ms wait, was 'unknown' and the payment had no cause)
    assert _thread_21_states(lake_dir, _switched_in_again(slices=True)) == [
        (0, 31, "running"), (31, 40, "running")]


def test_a_preempted_thread_switched_out_again_ran_as_its_slices_say(lake_dir: Path) -> None:
    # GIVEN a preemption's switch out followed by another switch out (the short run-queue
    # wait and the switch back in left no rows)
    # THEN after the first it ran and waited for a CPU as its slices show
    assert _thread_21_states(lake_dir, _preempted_then_out(slices=True)) == [
        (0, 10, "running"), (10, 29.5, "running"), (29.5, 30, "runnable"),
        (30, 60, "blocked")]


def test_with_full_capture_a_switch_without_its_pair_is_a_lost_row(lake_dir: Path) -> None:
    # GIVEN the same rows on a node without slices (full capture: every switch has a row)
    # THEN the segments before the second switch in or out are unknown, unless the second
    # switch out says how long the thread ran: then it waited for the CPU until it came in
    assert _thread_21_states(lake_dir, _switched_in_again(slices=False)) == [
        (0, 31, "unknown"), (31, 40, "running")]
    assert _thread_21_states(lake_dir / "out", _preempted_then_out(False, dated=False)) == [
        (0, 10, "running"), (10, 30, "unknown"), (30, 60, "blocked")]
    assert _thread_21_states(lake_dir / "dated", _preempted_then_out(False)) == [
        (0, 10, "running"), (10, 10.5, "runnable"), (10.5, 30, "running"), (30, 60, "blocked")]


def test_a_sleep_followed_by_another_switch_out_stays_blocked(lake_dir: Path) -> None:
    # GIVEN evidence rows of a sleep's switch out and the next switch out, no waking row
    # between them (the kernel traced no switch in, and evidence capture writes the waking
    # with it), and the slices
    sc = Scenario().process(20, "ledger")
    sc.run(0, 20, 21, 0, 10, leave="S")
    sc.run(0, 20, 21, 10.5, 30, leave="S").untraced_switch(0, 10.5)
    _slices_of(sc, (0, 21, 20, "ledger", 10), (10, 21, 20, "ledger", 9.5),
               (20, 21, 20, "ledger", 10))
    # THEN it stays blocked (a target's offcpu row may name its waker), not running
    assert _thread_21_states(lake_dir, sc) == [
        (0, 10, "running"), (10, 30, "blocked"), (30, 60, "blocked")]


def _untagged_span(slices: bool) -> Scenario:
    """A span of process 10 that names no thread and no socket (single-thread mapping).
    Thread 11 ran it, 0-40 ms, with only short waits: evidence capture kept no switch row
    of it, only its slices. Thread 12 of the same process slept -100 to -50 ms and then
    exited: its long wait is a row."""
    sc = Scenario().process(10, "ledger")
    sc.offcpu(10, 12, -100, -50, "other")
    sc.span("t1", "a", None, "ledger", "POST /post", 0, 40, pid=10)
    if slices:
        for start in (0, 10, 20, 30):
            sc.rows["cpu_slices"].append({
                "ts_ns": T0 + start * MS, "dur_ns": 10 * MS, "cpu": 0, "pid": 10, "tid": 11,
                "comm": "ledger", "oncpu_ns": 9 * MS, "runq_ns": 0, "switches": 3,
                "waits": 0})
    return sc


def test_a_thread_seen_only_in_its_slices_is_alive_for_single_thread_mapping(
        lake_dir: Path) -> None:
    # GIVEN the span's thread known only by its slices
    analysis = analyze(_untagged_span(slices=True), lake_dir)
    # THEN the span maps to it: the one thread of the process alive while the span ran
    row = span_row(analysis, "a")
    assert (row["tid"], row["mapped_by"]) == (11, "single_thread")


def test_without_the_slices_the_span_maps_to_no_thread(lake_dir: Path) -> None:
    # GIVEN the same rows without slices (the control: thread 12 ended before the span)
    row = span_row(analyze(_untagged_span(slices=False), lake_dir), "a")
    # THEN no thread is named rather than a wrong one
    assert row["tid"] is None and row["mapped_by"] is None


def _preempted_then_back_in(ran_between: bool) -> Scenario:
    """Thread 21 runs 0-5 ms on CPU 0 and is preempted (a row: it bounds another thread's
    long wait), and has its next row at 36.5 ms, a switch in (it bounds another wait too).
    ``ran_between``: back on the CPU at 5.5 ms without a row, it ran to 36 ms and slept
    0.5 ms (short waits keep no rows); else it waited for the CPU all along, thread 31 on
    it."""
    sc = Scenario().process(20, "ledger").process(30, "batch")
    sc.run(0, 20, 21, 0, 5, leave="R")
    if ran_between:
        sc.run(0, 20, 21, 5.5, 36, leave="S").untraced_switch(0, 5.5).untraced_switch(0, 36)
        _slices_of(sc, (0, 21, 20, "ledger", 9.5), (10, 21, 20, "ledger", 10),
                   (20, 21, 20, "ledger", 10), (30, 21, 20, "ledger", 9.5))
        sc.rows["cpu_slices"][0]["runq_ns"] = MS // 2
    else:
        sc.run(0, 30, 31, 5, 36.5, leave="S")
        _slices_of(sc, (0, 21, 20, "ledger", 5), (0, 31, 30, "batch", 5),
                   (10, 31, 30, "batch", 10), (20, 31, 30, "batch", 10),
                   (30, 31, 30, "batch", 6.5), (30, 21, 20, "ledger", 3.5))
        sc.rows["cpu_slices"][-1]["runq_ns"] = int(31.5 * MS)
    sc.run(0, 20, 21, 36.5, 40, leave="S")
    return sc


def test_a_run_queue_wait_the_slices_say_the_thread_ran_through_is_no_wait(
        lake_dir: Path) -> None:
    # GIVEN a preemption row and a switch-in row 31.5 ms apart, and slices in which the
    # thread ran 30.5 ms of that (the postgres scenario under evidence capture, 2026-12-08:
    # a batch client's 200 ms of computing read as a run-queue wait, a payment waiting on
    # it left with no cause)
    # THEN it waited for the CPU as long as the slices say, ran, and the rest is unknown
    assert _thread_21_states(lake_dir, _preempted_then_back_in(ran_between=True)) == [
        (0, 5, "running"), (5, 5.5, "runnable"), (5.5, 36, "running"), (36, 36.5, "unknown"),
        (36.5, 40, "running")]


def test_a_run_queue_wait_the_slices_agree_with_stays_a_wait(lake_dir: Path) -> None:
    # GIVEN the same rows, and slices in which the thread ran only before and after them
    # (thread 31 held the CPU): the control
    # THEN the whole 31.5 ms is a run-queue wait
    assert _thread_21_states(lake_dir, _preempted_then_back_in(ran_between=False)) == [
        (0, 5, "running"), (5, 36.5, "runnable"), (36.5, 40, "running")]
