"""The sched sensor on the real kernel, with tiny programs whose events are known exactly.

Root only. tests/programs/pipe_handoff.c: a reader thread blocks on a pipe until the
writer thread writes to it ~50 ms later; tests/programs/switch_storm.c: many switches.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import sched
from kprobe.capture_agent.layouts import DropReason, EventKind
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.support import deadline_s, require, require_root

HANDOFF_MS = 50


def require_root_and_objects() -> None:
    require_root()
    path = object_path(sched.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


class Handoff:
    """A running pipe_handoff, stopped before its handoff until ``go()``."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([str(binary), str(HANDOFF_MS)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        word, pid, reader, writer = self.proc.stdout.readline().split()
        assert word == "ready"
        self.pid, self.reader_tid, self.writer_tid = int(pid), int(reader), int(writer)

    def go(self) -> int:
        """Run the handoff; the reader's blocked time as it measured it (ns)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        word, blocked = self.proc.stdout.readline().split()
        assert word == "done"
        assert self.proc.wait(timeout=10) == 0
        return int(blocked)


@pytest.fixture
def handoff(programs: Path) -> Iterator[Handoff]:
    h = Handoff(programs / "pipe_handoff")
    yield h
    if h.proc.poll() is None:
        h.proc.kill()
        h.proc.wait()


def test_offcpu_interval_of_the_blocked_thread_names_its_waker(handoff: Handoff) -> None:
    require_root_and_objects()
    # GIVEN the sched sensor targeting pipe_handoff, loaded before its handoff
    config = sched.SchedConfig(min_offcpu_ns=10_000_000)
    t0 = time.time_ns()
    with Sensor(sched.sensor_spec(config)) as sensor:
        sensor.add_targets([handoff.pid])
        # WHEN the reader blocks ~50 ms until the writer writes
        blocked_ns = handoff.go()
        switches = sensor.ring("sched_events").drain()
        intervals = sensor.ring("offcpu_events").drain()
        drops = sensor.drops()
    t1 = time.time_ns()
    assert blocked_ns >= 40_000_000
    clock = sample_offset()

    # THEN the drains are fixed-size records of the family layout
    assert switches.dtype == sched.SCHED_EVENT and intervals.dtype == sched.OFFCPU_EVENT
    assert set(switches["hdr"]["size"].tolist()) == {sched.SCHED_EVENT.itemsize}
    assert set(intervals["hdr"]["size"].tolist()) == {sched.OFFCPU_EVENT.itemsize}
    assert drops == {}

    # and sched_switch rows show the target's threads leaving and entering the CPU
    rows = sched.sched_table(switches, clock)
    mine = rows.filter(pc.and_(pc.equal(rows["kind"], "switch"),
                               pc.equal(rows["prev_pid"], handoff.pid)))
    assert handoff.reader_tid in mine["prev_tid"].to_pylist()
    reader_out = mine.filter(pc.equal(mine["prev_tid"], handoff.reader_tid))
    assert "S" in reader_out["prev_state"].to_pylist()
    assert all(t0 - 1_000_000 <= ts <= t1 + 1_000_000 for ts in rows["ts_ns"].to_pylist())

    # and the waking that ended the block was done by the writer
    wakings = rows.filter(pc.and_(pc.equal(rows["kind"], "waking"),
                                  pc.equal(rows["wakee_tid"], handoff.reader_tid)))
    assert handoff.writer_tid in wakings["waker_tid"].to_pylist()

    # and one off-CPU interval of the reader >= 40 ms, woken by the writer
    offcpu = sched.offcpu_table(intervals, clock)
    reader = offcpu.filter(pc.equal(offcpu["tid"], handoff.reader_tid)).to_pylist()
    long_ones = [r for r in reader if r["dur_ns"] >= 40_000_000]
    assert len(long_ones) == 1, reader
    row = long_ones[0]
    assert row["pid"] == handoff.pid and row["state"] == "S"
    assert row["waker_tid"] == handoff.writer_tid and row["waker_pid"] == handoff.pid
    assert row["comm"] == "pipe_handoff" and row["waker_comm"] == "pipe_handoff"
    # a failed stack walk leaves the helper's -errno in the record: say which one
    raw_ids = intervals["kstack_id"][intervals["tid"] == handoff.reader_tid].tolist()
    assert row["kstack_id"] is not None and row["kstack_id"] >= 0, (
        f"no kernel stack for the blocked reader: bpf_get_stackid returned {raw_ids}")
    assert row["dur_ns"] <= blocked_ns + 5_000_000
    # untargeted processes have no intervals
    assert set(offcpu["pid"].to_pylist()) == {handoff.pid}


def test_children_of_a_target_are_targets_until_they_exit(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN this test process as the only target
    with Sensor(sched.sensor_spec(sched.SchedConfig(min_offcpu_ns=10_000_000))) as sensor:
        sensor.add_targets([os.getpid()])
        # WHEN it starts a child
        child = Handoff(programs / "pipe_handoff")
        try:
            # THEN the child is a target (followed at fork) ...
            assert child.pid in sensor.targets()
            child.go()
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        # ... whose blocked reader shows up, and it leaves the targets when it exits
        intervals = sched.offcpu_table(sensor.ring("offcpu_events").drain(), sample_offset())
        assert child.reader_tid in intervals["tid"].to_pylist()
        assert child.pid not in sensor.targets()
        assert os.getpid() in sensor.targets()


def test_a_full_ring_counts_its_losses(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN a one-page sched ring that nobody drains
    config = sched.SchedConfig(sched_ring_bytes=4096, offcpu_ring_bytes=4096)
    with Sensor(sched.sensor_spec(config)) as sensor:
        # WHEN tens of thousands of switches happen
        subprocess.run([str(programs / "switch_storm"), "20000"], check=True, timeout=60)
        drops = sensor.drop_reasons()
        kept = sensor.ring("sched_events").drain()
    # THEN the kernel counted what it could not keep, as a full ring, and the ring holds
    # what fits
    capacity = 4096 // (8 + sched.SCHED_EVENT.itemsize)
    assert 0 < len(kept) <= capacity
    assert drops.get((EventKind.SCHED_SWITCH, DropReason.RING_FULL), 0) > 0
    assert drops.get((EventKind.SCHED_WAKING, DropReason.RING_FULL), 0) > 0
    assert {reason for _, reason in drops} == {DropReason.RING_FULL}, drops


def test_drain_across_wrap_around_yields_whole_records(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN a 64 KiB ring: 80-byte slots do not divide it, so records straddle its end
    config = sched.SchedConfig(sched_ring_bytes=64 << 10, record_wakeup_new=False)
    batches = []
    with Sensor(sched.sensor_spec(config)) as sensor:
        ring = sensor.ring("sched_events")
        # WHEN a storm of switches is drained as it happens
        storm = subprocess.Popen([str(programs / "switch_storm"), "30000"])
        while storm.poll() is None:
            batches.append(ring.drain())
            time.sleep(0.002)
        batches.append(ring.drain())
        assert storm.returncode == 0
    records = np.concatenate(batches)
    # THEN many ring-fulls went through, every record is whole and of a known kind
    assert len(records) > 4 * (64 << 10) // 80
    hdr = records["hdr"]
    assert set(hdr["size"].tolist()) == {sched.SCHED_EVENT.itemsize}
    assert set(hdr["version"].tolist()) == {sched.SCHED_LAYOUT_VERSION}
    assert set(hdr["kind"].tolist()) <= {EventKind.SCHED_SWITCH, EventKind.SCHED_WAKING}
    # and the payloads decode: the storm's own switches name it (or python, before exec)
    storm_out = records[(hdr["kind"] == EventKind.SCHED_SWITCH)
                        & (records["prev_pid"] == storm.pid)]
    assert len(storm_out) > 1000
    comms = storm_out["prev_comm"].tolist()
    assert set(comms) <= {b"switch_storm", b"python"}
    assert comms.count(b"switch_storm") > 1000


def test_the_reader_sleeps_while_quiet_and_wakes_when_the_ring_fills(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN sched records only for targets (this process and, by fork, its children)
    config = sched.SchedConfig(sched_ring_bytes=256 << 10, targets_only=True,
                               wakeup_fill_pct=50)
    with Sensor(sched.sensor_spec(config)) as sensor:
        sensor.add_targets([os.getpid()])
        ring = sensor.ring("sched_events")
        ring.wait(0)
        ring.drain()
        # WHEN nothing much happens THEN records go in silently: no wakeup
        assert ring.wait(0.3) is False
        ring.drain()
        # WHEN a child storms THEN the reader is woken once the ring is about half full
        storm = subprocess.Popen([str(programs / "switch_storm"), "1000000"])
        try:
            t0 = time.monotonic()
            assert ring.wait(10) is True
            woke_after = time.monotonic() - t0
            fill = ring.fill()
        finally:
            storm.kill()
            storm.wait()
    assert 0.4 <= fill <= 1.0 and woke_after < 10


def test_sensors_can_share_one_targets_map() -> None:
    require_root_and_objects()
    # GIVEN a sensor, and a second one loaded onto the first one's `targets` map
    with Sensor(sched.sensor_spec()) as first:
        shared = first.target_maps()
        with Sensor(sched.sensor_spec(shared_maps=shared)) as second:
            # WHEN a target is added through one THEN the other sees it
            first.add_targets([os.getpid()])
            assert second.targets() == [os.getpid()]
            second.remove_targets([os.getpid()])
            assert first.targets() == []


def test_each_switch_out_says_how_long_the_thread_ran_since_its_switch_in() -> None:
    """GIVEN two targets spinning on CPU 0 (each preempts the other every few ms) and
    sleeping briefly now and then, recorded with full capture
    WHEN each switch out's prev_run_ns is set beside the thread's own traced switch in
    THEN they agree: the kernel's CPU time of the run is the time between the two rows
    (what dates a switch in the kernel did not trace); a waking row carries none."""
    require_root_and_objects()
    # pinned before exec: changing a running task's affinity (or cgroup, or priority, and
    # its exit) restarts the fair class's count mid-run, so those runs read short
    code = ("import time\nend = time.time() + 0.6\n"
            "while time.time() < end:\n    t = time.time() + 0.01\n"
            "    while time.time() < t: pass\n    time.sleep(0.002)\n")
    with Sensor(sched.sensor_spec(sched.SchedConfig(targets_only=True))) as sensor:
        spinners = [subprocess.Popen([sys.executable, "-c", code],
                                     preexec_fn=lambda: os.sched_setaffinity(0, {0}))
                    for _ in range(2)]
        sensor.add_targets([p.pid for p in spinners])
        batches = []
        for p in spinners:
            while p.poll() is None:
                time.sleep(0.1)
                batches.append(sensor.ring("sched_events").drain())
        batches.append(sensor.ring("sched_events").drain())
        drops = sensor.drops()
    # (an off-CPU interval may be counted lost here: on this host a target that follows
    # one of PID 1's threads onto a CPU comes back untraced)
    assert not {EventKind.SCHED_SWITCH, EventKind.SCHED_WAKING} & set(drops), drops
    rows = sched.sched_table(np.concatenate(batches), sample_offset())
    by_time = rows.sort_by([("ts_ns", "ascending")]).to_pylist()
    pids = {p.pid for p in spinners}
    last_in: dict[int, dict[str, Any]] = {}
    pairs: list[tuple[int, int | None]] = []  # (traced run, prev_run_ns)
    for r in by_time:
        if r["kind"] == "waking":
            assert r["prev_run_ns"] is None
        if r["kind"] != "switch":
            continue
        if r["prev_pid"] in pids and r["prev_tid"] in last_in:
            switched_in = last_in.pop(r["prev_tid"])
            if switched_in["cpu"] == r["cpu"] and r["prev_state"] not in ("X", "Z"):
                pairs.append((r["ts_ns"] - switched_in["ts_ns"], r["prev_run_ns"]))
        if r["next_pid"] in pids:
            last_in[r["next_tid"]] = r
    assert len(pairs) >= 40, pairs  # ~100 runs of each spinner (the control: data to judge)
    assert all(run is not None for _, run in pairs), pairs
    # relative to the traced run: here the median is within 0.5 % (10 us) and 90 % within
    # 3 %; emulated (make vmtest, two guests at once) medians of 0.7-2.4 % and 3rd
    # quartiles of 2.5-5.9 % (interrupts, slow there, are not the task's CPU time when the
    # kernel accounts IRQ time apart). A count of 0 or the total runtime is off by ~100 %.
    rel = sorted(abs(traced - (run or 0)) / traced for traced, run in pairs)
    quartiles = [round(rel[int(f * (len(rel) - 1))], 4) for f in (0.25, 0.5, 0.75)]
    assert quartiles[1] <= 0.05 and quartiles[2] <= 0.12, (quartiles, rel[-5:])


def _plant(fd: int, tid: int, start: int, waking: int) -> bool:
    """An offcpu_start entry for ``tid`` as the kernel leaves one whose switch-in it did not
    trace; only while ``tid`` is on a CPU (no entry of its own): False if it was not."""
    value = struct.pack("<QQiIIHBB16s", start, waking, -2, 4242, 4243, 0,
                        sched.TASK_STATE_LETTERS.index("S"),
                        sched.OFFCPU_FLAG_WAKER if waking else 0, b"planted-waker")
    try:
        libbpf.map_update(fd, struct.pack("<I", tid), value, flags=1)  # BPF_NOEXIST
    except FileExistsError:
        return False
    return True


def test_an_interval_whose_switch_in_was_not_traced_ends_where_its_run_dates_it() -> None:
    """Some kernels fire no sched_switch for some switches (seen here: none when one of
    PID 1's threads leaves a CPU), so a target can come back on a CPU unseen and leave its
    interval's entry behind. GIVEN such entries, planted as the kernel leaves them for
    threads that are running: one switched out 60 ms ago and woken 40 ms ago; one whose
    planted switch-out is after the thread's real switch in (so its run cannot date it:
    50 ms ahead), woken 2 ms later; and one like it that nothing woke
    WHEN each thread next leaves the CPU THEN the first interval ends where the thread's run
    since its switch in dates it (flagged END_DATED: at its real switch in, which was
    traced here), the second ends at its waking (flagged ENDS_AT_WAKING), and the third is
    counted lost."""
    require_root_and_objects()
    # spinners on one CPU, so that each runs a few ms at a time (a run longer than 60 ms
    # could not date the first entry), until told to stop; then they sleep once
    stop = tempfile.mktemp(prefix="kprobe-spin-stop-")
    code = ("import os, sys, time\nwhile not os.path.exists(sys.argv[1]): pass\n"
            "time.sleep(0.2)\n")
    dated, woken, unwoken = (
        subprocess.Popen([sys.executable, "-c", code, stop],
                         preexec_fn=lambda: os.sched_setaffinity(0, {0}))
        for _ in range(3))
    spinners = (dated, woken, unwoken)
    switches: list[np.ndarray] = []
    try:
        with Sensor(sched.sensor_spec(sched.SchedConfig(min_offcpu_ns=1_000_000))) as sensor:
            sensor.add_targets([p.pid for p in spinners])
            targeted_ns = time.monotonic_ns()
            fd = sensor.map_fd("offcpu_start")
            with libbpf.Btf(str(object_path(sched.FAMILY.object_file))) as btf:
                assert btf.struct_size("offcpu_start") == struct.calcsize("<QQiIIHBB16s")
            # a thread that left its CPU before it was a target has no entry although it
            # is off CPU: plant only once each was seen coming in as a target
            came_in: set[int] = set()
            deadline = time.monotonic() + deadline_s(30)
            while len(came_in) < 3 and time.monotonic() < deadline:
                switches.append(sensor.ring("sched_events").drain())
                since = switches[-1][switches[-1]["hdr"]["ktime_ns"] > targeted_ns]
                came_in |= {int(t) for t in since["next_tid"]} & {p.pid for p in spinners}
                time.sleep(0.001)
            assert len(came_in) == 3, "a spinner was never seen coming onto a CPU"
            planted: dict[int, tuple[int, int]] = {}
            while len(planted) < 3 and time.monotonic() < deadline:
                now = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
                # the other two start 50 ms ahead: after the thread's current run began
                # (before the plant) even if it came in again since `now` was read
                later = now + 50_000_000
                for proc, start, waking in ((dated, now - 60_000_000, now - 40_000_000),
                                            (woken, later, later + 2_000_000),
                                            (unwoken, later, 0)):
                    if proc.pid not in planted and _plant(fd, proc.pid, start, waking):
                        planted[proc.pid] = (start, waking)
            assert len(planted) == 3, "a spinner was never seen on a CPU"
            Path(stop).touch()
            assert all(p.wait(timeout=30) == 0 for p in spinners)
            switches.append(sensor.ring("sched_events").drain())
            intervals = sensor.ring("offcpu_events").drain()
            drops = sensor.drop_reasons()
    finally:
        for proc in spinners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        Path(stop).unlink(missing_ok=True)

    def planted_interval(tid: int) -> np.ndarray:
        # the planted start (and state S): the spinners take turns on CPU 0, so a real
        # preemption (state R) of the thread can start at the planted instant
        return intervals[(intervals["tid"] == tid) & (intervals["start_ns"] == planted[tid][0])
                         & (intervals["state"] == sched.TASK_STATE_LETTERS.index("S"))]

    # (this kernel also leaves real switch-ins untraced now and then: only the planted
    # entries' intervals are judged)
    (first,) = planted_interval(dated.pid)
    assert first["hdr"]["flags"] & sched.OFFCPU_FLAG_END_DATED, first
    end = int(first["hdr"]["ktime_ns"])
    assert end > planted[dated.pid][1]  # after the planted waking: the real switch in
    every = np.concatenate(switches)
    ins = every[(every["hdr"]["kind"] == EventKind.SCHED_SWITCH)
                & (every["next_tid"] == dated.pid)]["hdr"]["ktime_ns"].astype(np.int64)
    # the switch in it dates was traced (the entry was planted): within 1 ms of it
    assert np.min(np.abs(ins - end)) <= 1_000_000, (end, sorted(ins.tolist())[-5:])
    assert (first["waker_pid"], bytes(first["waker_comm"]).rstrip(b"\0")) == (
        4242, b"planted-waker")
    (second,) = planted_interval(woken.pid)
    assert second["hdr"]["flags"] & sched.OFFCPU_FLAG_ENDS_AT_WAKING, second
    assert int(second["hdr"]["ktime_ns"]) - int(second["start_ns"]) == 2_000_000
    # the third gave no interval, and was counted
    assert len(planted_interval(unwoken.pid)) == 0
    assert drops.get((EventKind.OFFCPU, DropReason.UNDATED), 0) >= 1
    # every thread's own interval (its sleep at the end) is traced as usual
    rows = sched.offcpu_table(intervals, sample_offset()).to_pylist()
    assert {r["tid"] for r in rows if not r["ends_at_waking"]} >= {p.pid for p in spinners}

