"""The engine on a node recorded with evidence capture: who held a CPU comes from the
slices (table cpu_slices), not from switch rows that exist only around long waits."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_compute_scenario import MS, T0, Scenario, analyze, key, rels


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
