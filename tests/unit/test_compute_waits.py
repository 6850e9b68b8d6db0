"""Waker chains on synthetic rows: every wait is attributed to the thread that ended it and
followed across threads and processes, and a failure chain has one verdict."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_compute_scenario import MS, Scenario, analyze, key, rels, span_row

PAY = {"payment.id": "P-1", "kprobe.deadline_ms": 100}


def _semaphore_scenario(culprit_in_reclaim: bool) -> Scenario:
    """A payment thread (pid 100, tid 101) sleeps 300 ms on a wait no stack rule names
    (reason 'other': a SysV semaphore) until the ledger process's thread (pid 300, tid 301)
    releases it. The ledger thread is in memcg reclaim meanwhile (memcg 9, a report job pid
    900 allocating), or simply computing; a bigger allocator (pid 950) runs in another
    memcg: a decoy."""
    sc = Scenario().process(100, "payments", cgroup_id=5).process(300, "ledger", cgroup_id=9)
    sc.process(900, "nightly-report", cgroup_id=9).process(950, "etl-batch", cgroup_id=11)
    sc.run(0, 100, 101, 0, 10, leave="S")
    sc.offcpu(100, 101, 10, 310, "other", waker=(300, 301))
    sc.wake(310, (100, 101), (300, 301))
    sc.run(0, 100, 101, 310, 320, leave="S")
    sc.run(1, 300, 301, 0, 312, leave="S")
    if culprit_in_reclaim:
        sc.reclaim(300, 301, 20, 300, memcg=9)
    sc.page_alloc(900, 300, 80_000, 9)
    sc.reclaim(950, 951, 0, 400, memcg=11)  # the decoy reclaims more, elsewhere
    sc.page_alloc(950, 400, 900_000, 11)
    sc.span("t1", "a", None, "payments", "POST /payments", 0, 320, pid=100, tid=101,
            kind="SERVER", attrs=PAY)
    return sc


def test_an_unnamed_wait_is_a_wait_for_its_waker_and_followed(lake_dir: Path) -> None:
    # GIVEN a wait the stack rules do not name, woken by a thread in reclaim
    analysis = analyze(_semaphore_scenario(culprit_in_reclaim=True), lake_dir)
    # THEN it is a wait for the waker thread ("other" named as what the stack said) ...
    waits = rels(analysis, src=key("a"), kind="thread_wait")
    assert [(w["dst"], w["delay_ns"], w["evidence"]["how"]) for w in waits] == [
        ("n1:301", 300 * MS, "waker")]
    # ... followed into the waker's time, whose memory pressure is the root cause, driven
    # by the report job in the waker's memcg (not the bigger allocator elsewhere)
    a = span_row(analysis, "a")
    assert a["root_cause_kind"] == "memory_pressure" and a["root_cause_sufficient"]
    episode = a["root_cause_target"]
    assert episode.startswith("mem:n1:9:")
    drivers = rels(analysis, "CAUSED_BY", src=episode, kind="memory_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:900"


def test_an_unnamed_wait_for_a_busy_thread_names_that_thread(lake_dir: Path) -> None:
    # GIVEN the same wait, the waker simply computing
    analysis = analyze(_semaphore_scenario(culprit_in_reclaim=False), lake_dir)
    a = span_row(analysis, "a")
    # THEN the root cause is the wait for that thread (what it was doing: on CPU)
    assert (a["root_cause_kind"], a["root_cause_target"]) == ("thread_wait", "n1:301")
    assert a["root_cause_delay_ns"] >= 290 * MS


def test_chains_cross_processes_and_stop_at_cycles(lake_dir: Path) -> None:
    """A (tid 101) waits on a pipe for B (tid 201, another process); B waits on a futex for
    C (tid 301, a third process), which is in reclaim; C itself was woken at the start by
    A (a cycle the walk must not follow)."""
    sc = Scenario().process(100, "api").process(200, "broker").process(300, "store",
                                                                        cgroup_id=4)
    sc.process(400, "loader", cgroup_id=4)
    sc.run(0, 100, 101, 0, 5, leave="S")
    sc.offcpu(100, 101, 5, 405, "pipe", waker=(200, 201))
    sc.wake(405, (100, 101), (200, 201))
    sc.run(0, 100, 101, 405, 410, leave="S")
    sc.run(1, 200, 201, 0, 10, leave="S")
    sc.offcpu(200, 201, 10, 400, "futex", waker=(300, 301))
    sc.wake(400, (200, 201), (300, 301))
    sc.run(1, 200, 201, 400, 404, leave="S")
    sc.run(1, 300, 301, 11, 20, leave="S")  # C is woken by A at 11 ms: a cycle back to A
    sc.offcpu(300, 301, 2, 11, "other", waker=(100, 101))
    sc.wake(11, (300, 301), (100, 101), target_cpu=1)
    sc.run(1, 300, 301, 20, 399, leave="S")
    sc.reclaim(300, 301, 30, 390, memcg=4)
    sc.page_alloc(400, 390, 100_000, 4)
    sc.span("t2", "a", None, "api", "POST /payments", 0, 410, pid=100, tid=101,
            kind="SERVER", attrs=PAY)
    analysis = analyze(sc, lake_dir)
    # THEN A waited for B, B for C: two hops, across three processes
    assert [w["dst"] for w in rels(analysis, src=key("a", "t2"), kind="thread_wait")] == [
        "n1:201"]
    holders = rels(analysis, src=key("a", "t2"), kind="holder")
    assert [h["dst"].split(":")[2] for h in holders] == ["201"]
    inner = rels(analysis, src=holders[0]["dst"], kind="lock_wait")
    assert [w["dst"] for w in inner] == ["n1:301"]
    # AND the root cause is C's memory pressure, driven by the loader
    a = span_row(analysis, "a", "t2")
    assert a["root_cause_kind"] == "memory_pressure", a
    # AND the walk never came back to A's thread
    spans = analysis.tables["Span"].to_pylist()
    assert not [s for s in spans if s["origin"] == "holder" and s["tid"] == 101]


def test_no_waker_recorded_is_no_cause(lake_dir: Path) -> None:
    sc = Scenario().process(100, "api")
    sc.run(0, 100, 101, 0, 5, leave="S").run(0, 100, 101, 305, 310, leave="S")
    sc.span("t3", "a", None, "api", "POST /payments", 0, 310, pid=100, tid=101,
            kind="SERVER", attrs=PAY)
    analysis = analyze(sc, lake_dir)
    a = span_row(analysis, "a", "t3")
    assert a["failed"] and a["root_cause_kind"] == "app_cpu"
    assert not [r for r in rels(analysis, src=key("a", "t3"))
                if r["kind"] in ("thread_wait", "lock_wait", "remote_call")]


def _gateway_scenario(remote_ms: float, settle_reclaim_ms: float) -> Scenario:
    """The demo's shape: the gateway thread (tid 11) serves POST /payments (no deadline; it
    fails with a timeout message) and calls settlement (POST /postings, deadline 750 ms)
    on the same thread; the wait for the answer ends at the gateway's own timeout (a timer
    wakeup, tid 0). Settlement (tid 21, another process) runs the write in memcg reclaim."""
    sc = Scenario().process(10, "gateway").process(20, "settlement", cgroup_id=7)
    sc.process(30, "batch-job", cgroup_id=7)
    sc.run(0, 10, 11, 0, 10, leave="S")
    sc.wake(10 + remote_ms, (10, 11), (0, 0))
    sc.run(0, 10, 11, 10 + remote_ms, 20 + remote_ms, leave="S")
    sc.run(1, 20, 21, 11, 11 + settle_reclaim_ms + 5, leave="S")
    sc.reclaim(20, 21, 12, 12 + settle_reclaim_ms, memcg=7)
    sc.page_alloc(30, 12 + settle_reclaim_ms, 300_000, 7)
    fail = {"status": "ERROR"}
    sc.span("t4", "g", None, "gateway", "POST /payments", 0, 20 + remote_ms, pid=10, tid=11,
            kind="SERVER", message="settlement timed out after 750 ms",
            attrs={"payment.id": "P-9"}, **fail)
    sc.span("t4", "p", "g", "gateway", "POST /postings", 9, 10 + remote_ms, pid=10, tid=11,
            kind="CLIENT", attrs={"kprobe.deadline_ms": 750}, **fail)
    sc.span("t4", "w", "p", "settlement", "settlement.write", 11, 11 + settle_reclaim_ms + 5,
            pid=20, tid=21, attrs={"payment.id": "P-9"})
    return sc


def test_outer_and_inner_failures_report_the_same_kernel_cause(lake_dir: Path) -> None:
    # GIVEN the call's wait (754 ms) a little longer than the reclaim it waited for
    # (750 ms): the old engine named "a slow remote call" at the top and memory pressure
    # at the inner timeout
    analysis = analyze(_gateway_scenario(remote_ms=754, settle_reclaim_ms=750), lake_dir)
    outer, inner = span_row(analysis, "g", "t4"), span_row(analysis, "p", "t4")
    assert inner["failed"] and outer["failed"]
    # THEN both name the settlement's memory pressure, driven by the batch job
    assert inner["root_cause_kind"] == outer["root_cause_kind"] == "memory_pressure"
    assert inner["root_cause_target"] == outer["root_cause_target"]
    drivers = rels(analysis, "CAUSED_BY", src=outer["root_cause_target"], kind="memory_driver")
    assert drivers[0]["dst"] == "n1:30"
    # AND the wait that ended at the gateway's own timer was a wait for settlement's thread
    waits = rels(analysis, src=key("p", "t4"), kind="remote_call")
    assert [(w["dst"], w["evidence"]["how"]) for w in waits if w["dst_label"] == "Thread"] \
        == [("n1:21", "call")]


def test_remote_call_only_when_the_far_side_has_no_kernel_cause(lake_dir: Path) -> None:
    # GIVEN the same call, the settlement thread computing instead of reclaiming
    sc = _gateway_scenario(remote_ms=800, settle_reclaim_ms=0.5)
    sc.runs = [r for r in sc.runs if r.tid != 21]
    sc.run(1, 20, 21, 11, 805, leave="S")
    analysis = analyze(sc, lake_dir)
    # THEN the root cause is the remote call itself, naming the settlement thread
    inner = span_row(analysis, "p", "t4")
    assert (inner["root_cause_kind"], inner["root_cause_target"]) == ("remote_call", "n1:21")


def test_an_interrupt_wakeup_at_the_threads_own_block_completion_is_disk(
        lake_dir: Path) -> None:
    # GIVEN a server thread nobody targeted (no offcpu row: no stack, no reason) blocked
    # 200 ms and woken from interrupt context (tid 0) just as its own write completed,
    # while a backup job kept the device busy
    sc = Scenario().process(700, "postgres").process(800, "backup-agent")
    sc.run(0, 700, 701, 0, 5, leave="D")
    sc.wake(204.8, (700, 701), (0, 0))
    sc.run(0, 700, 701, 205, 210, leave="S")
    sc.block_io(700, 701, 5, 204.5, 8192)
    for i in range(5):
        sc.block_io(800, 801, i * 45, i * 45 + 50, 64 << 20)
    sc.span("t5", "a", None, "postgres", "COMMIT", 0, 210, pid=700, tid=701,
            kind="SERVER", attrs=PAY)
    analysis = analyze(sc, lake_dir)
    # THEN the device woke it: a disk wait driven by the backup job, not a timer
    a = span_row(analysis, "a", "t5")
    assert a["root_cause_kind"] == "disk", a
    drivers = rels(analysis, "CAUSED_BY", src=a["root_cause_target"], kind="disk_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:800"


def _two_faults(worker_cpu_taken_by: int) -> Scenario:
    """Two faults on one payment (pid 100, tid 101; deadline 150 ms, it took 160): it waits
    (an unnamed wait) 105 ms for a worker (pid 300, tid 301, CPU 1) that reclaims 40 ms in
    memcg 9, where a batch job (pid 900) allocates, and then waits 35 ms for CPU 1 while
    ``worker_cpu_taken_by`` runs there; then the payment waits 45 ms for CPU 0, held by a
    hog (pid 500)."""
    sc = Scenario().process(100, "payments").process(300, "worker", cgroup_id=9)
    sc.process(900, "batch-job", cgroup_id=9).process(500, "hog").process(600, "indexer")
    sc.run(0, 100, 101, 0, 5, leave="S")
    sc.offcpu(100, 101, 5, 110, "other", waker=(300, 301))
    sc.wake(110, (100, 101), (300, 301), target_cpu=0)
    sc.run(0, 500, 501, 5, 155, leave="R")
    sc.run(0, 100, 101, 155, 160, leave="S")
    sc.run(1, 300, 301, 0, 65, leave="R")
    sc.reclaim(300, 301, 20, 60, memcg=9)
    sc.page_alloc(900, 60, 80_000, 9)
    sc.run(1, worker_cpu_taken_by, worker_cpu_taken_by + 1, 65, 100, leave="R")
    sc.run(1, 300, 301, 100, 110, leave="S")
    sc.span("t6", "a", None, "payments", "POST /payments", 0, 160, pid=100, tid=101,
            kind="SERVER", attrs={"payment.id": "P-6", "kprobe.deadline_ms": 150})
    return sc


def test_a_fault_is_its_process_across_kinds_and_faults_are_ranked(lake_dir: Path) -> None:
    # GIVEN the batch job made the worker reclaim 40 ms AND took its CPU 35 ms, while the
    # hog took the payment's CPU 45 ms (more than either of the batch job's parts alone)
    analysis = analyze(_two_faults(worker_cpu_taken_by=900), lake_dir)
    a = span_row(analysis, "a", "t6")
    # THEN the batch job is the larger fault (75 ms): its largest kind is the root cause
    assert a["root_cause_kind"] == "memory_pressure", a
    drivers = rels(analysis, "CAUSED_BY", src=a["root_cause_target"], kind="memory_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:900"
    # AND the hog is reported too, ranked after it
    ranked = sorted(rels(analysis, "CAUSED_BY", src=key("a", "t6")), key=lambda r: r["rank"])
    hog = [r for r in ranked if r["kind"] == "cpu_contention"
           and r["evidence"].get("fault_ns") == 45 * MS]
    assert hog and hog[0]["rank"] > 1, ranked


def test_a_fault_of_another_process_is_not_added_to_the_batch_job(lake_dir: Path) -> None:
    # GIVEN the same, but an unrelated indexer (pid 600) took the worker's CPU: the batch
    # job's fault is its 40 ms of reclaim alone
    analysis = analyze(_two_faults(worker_cpu_taken_by=600), lake_dir)
    a = span_row(analysis, "a", "t6")
    # THEN the hog's 45 ms is the larger fault
    assert a["root_cause_kind"] == "cpu_contention", a
    assert a["root_cause_target"] == "n1:501"


def _timeout_during_a_call(reason: str) -> Scenario:
    """A gateway thread (pid 100, tid 101) waits 300 ms (``reason``) while its child call
    runs on the settlement thread (pid 300, tid 301), which spends it in memcg reclaim; the
    wait ends at the gateway's timeout, and the timer's interrupt landed on a busy batch
    process (pid 700, tid 701): the recorded waker is that process."""
    sc = Scenario().process(100, "gateway").process(300, "settlement", cgroup_id=9)
    sc.process(700, "batch-job", cgroup_id=9)
    sc.run(0, 100, 101, 0, 10, leave="S")
    sc.offcpu(100, 101, 10, 310, reason, waker=(700, 701))
    sc.wake(310, (100, 101), (700, 701))
    sc.run(0, 100, 101, 310, 320, leave="S")
    sc.run(1, 300, 301, 5, 330, leave="S")
    sc.reclaim(300, 301, 20, 300, memcg=9)
    sc.run(0, 700, 701, 320, 400, leave="R")
    sc.page_alloc(700, 300, 80_000, 9)
    sc.span("t1", "a", None, "gateway", "POST /postings", 0, 320, pid=100, tid=101,
            kind="CLIENT", attrs=PAY)
    sc.span("t1", "b", "a", "settlement", "settlement.write", 5, 330, pid=300, tid=301)
    return sc


def test_a_socket_wait_that_timed_out_during_a_call_waited_for_the_call(
        lake_dir: Path) -> None:
    # GIVEN a poll() that timed out while the call it waited for ran in reclaim, its
    # recorded waker a batch job the timer's interrupt happened to land on
    analysis = analyze(_timeout_during_a_call("poll"), lake_dir)
    # THEN the wait is for the call's thread (not for the batch job), and the verdict is
    # that thread's memory pressure
    waits = rels(analysis, src=key("a"), kind="remote_call")
    assert [(w["dst"], w["evidence"]["how"]) for w in waits
            if w["dst_label"] == "Thread"] == [("n1:301", "call")]
    assert span_row(analysis, "a")["root_cause_kind"] == "memory_pressure"


def test_a_lock_wait_during_a_call_still_waited_for_its_waker(tmp_path: Path) -> None:
    # control: a futex wait is a wait for the thread that released it, call or not
    analysis = analyze(_timeout_during_a_call("futex"), tmp_path)
    waits = rels(analysis, src=key("a"), kind="lock_wait")
    assert [(w["dst"], w["evidence"]["how"]) for w in waits] == [("n1:701", "waker")]
