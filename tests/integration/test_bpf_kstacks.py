"""Off-CPU kernel stacks symbolised from /proc/kallsyms and classified into wait reasons.

Root only (kallsyms addresses, BPF). tests/programs/pipe_handoff.c: a reader thread blocks
in read() on a pipe until the writer thread writes ~50 ms later;
tests/programs/inode_lock_wait.c: a thread blocks on a file's inode lock (a kernel
rw-semaphore: its stack keeps `down_write` only because the BPF program recovers the
scheduler function the thread called, which the kernel leaves out of a sleeping task's
stack). A preempted thread (state R) waits for a CPU: its stack is never walked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import sched
from kprobe.capture_agent.kallsyms import Kallsyms, KernelStacks, function_name
from kprobe.capture_agent.sensor import Sensor, object_path
from kprobe.lake.schema import spec
from tests.support import require, require_root, run_ready_go

HANDOFF_MS = 50


def _symbols() -> Kallsyms:
    require_root()
    require(object_path(sched.FAMILY.object_file).exists(), "sched.bpf.o (run `make bpf`)")
    return Kallsyms.load()


def _offcpu_sensor() -> Sensor:
    """The sched sensor writing targets' off-CPU intervals of 10 ms or more, nothing else."""
    return Sensor(sched.sensor_spec(sched.SchedConfig(
        min_offcpu_ns=10_000_000, record_switch=False, record_waking=False,
        record_wakeup=False)))


def test_a_thread_blocked_in_a_pipe_read_waits_for_reason_pipe(programs: Path) -> None:
    symbols = _symbols()
    # GIVEN the sched sensor targeting pipe_handoff, whose reader blocks on a pipe
    with _offcpu_sensor() as sensor:
        (_, _pid, reader_tid, _writer), done = run_ready_go(
            [str(programs / "pipe_handoff"), str(HANDOFF_MS)],
            lambda ready: sensor.add_targets([int(ready[1])]))
        assert done[0] == "done"
        offcpu = sched.offcpu_table(sensor.ring("offcpu_events").drain(), sample_offset())
        stacks = KernelStacks(symbols, sensor.map_fd("offcpu_stacks"))
        # WHEN the intervals' stacks are symbolised and classified
        ts_ns = time.time_ns()
        kstacks = stacks.resolve(offcpu["kstack_id"], ts_ns)
        filled = stacks.fill_wait_reason(offcpu)
        # and the kernel map is cleared of them
        reader_rows = filled.filter(pc.and_(pc.equal(filled["tid"], int(reader_tid)),
                                            pc.greater_equal(filled["dur_ns"], 40_000_000)))
        assert reader_rows.num_rows == 1
        stack_id = reader_rows["kstack_id"][0].as_py()
        assert stacks.clear() >= 1
        stack_map = sensor.map_fd("offcpu_stacks")
        cleared = libbpf.map_lookup(stack_map, stack_id.to_bytes(4, "little"),
                                    libbpf.map_info(stack_map).value_size)
        again = stacks.resolve(offcpu["kstack_id"], ts_ns + 1)

    # THEN the reader's blocked interval waited on the pipe
    assert reader_rows["wait_reason"].to_pylist() == ["pipe"]
    # and its kstacks row holds the symbolised frames, the pipe read among them
    assert kstacks.schema == spec("kstacks").payload_schema
    row = kstacks.filter(pc.equal(kstacks["stack_id"], stack_id)).to_pylist()
    assert len(row) == 1 and row[0]["ts_ns"] == ts_ns
    names = [function_name(f) for f in row[0]["frames"]]
    assert "schedule" in names
    assert any(n in ("anon_pipe_read", "pipe_read", "fifo_pipe_read") for n in names), names
    # and every interval with a stack has a reason; ids read were removed from the map,
    # but what was learnt stays (no new rows, the reason still known)
    with_stack = filled.filter(pc.is_valid(filled["kstack_id"]))
    assert with_stack["wait_reason"].null_count == 0
    assert cleared is None
    assert again.num_rows == 0 and stacks.reasons()[stack_id] == "pipe"


HOLD_MS = 100


def test_a_thread_blocked_on_an_inode_lock_waits_for_reason_lock(programs: Path) -> None:
    symbols = _symbols()
    # GIVEN the sched sensor targeting inode_lock_wait: A sleeps in a userfault inside its
    # write() holding the file's inode lock, B's write() sleeps on that lock for HOLD_MS
    with _offcpu_sensor() as sensor:
        _, done = run_ready_go([str(programs / "inode_lock_wait"), str(HOLD_MS)],
                               lambda ready: sensor.add_targets([int(ready[1])]))
        assert done[0] == "done", done
        a_tid, b_tid = int(done[1]), int(done[2])
        offcpu = sched.offcpu_table(sensor.ring("offcpu_events").drain(), sample_offset())
        stacks = KernelStacks(symbols, sensor.map_fd("offcpu_stacks"))
        # WHEN the intervals' stacks are symbolised and classified
        stacks.resolve(offcpu["kstack_id"], time.time_ns())
        filled = stacks.fill_wait_reason(offcpu)

    def longest_blocked(tid: int) -> dict:
        """tid's longest blocked interval (not preempted: on a busy host a thread may
        wait longer for a CPU than on the lock) and its frames' function names"""
        rows = filled.filter(pc.and_(pc.equal(filled["tid"], tid),
                                     pc.not_equal(filled["state"], "R")))
        rows = rows.sort_by([("dur_ns", "descending")])
        assert rows.num_rows >= 1, (tid, filled.to_pydict())
        row = rows.slice(0, 1).to_pylist()[0]
        frames = stacks.frames(row["kstack_id"]) if row["kstack_id"] is not None else None
        return row | {"names": [function_name(f) for f in frames or []]}

    # THEN B's wait on the inode lock (about HOLD_MS) has reason "lock", down_write in it
    b = longest_blocked(b_tid)
    assert b["dur_ns"] >= (HOLD_MS - 10) * 1_000_000, (b["dur_ns"], b["names"])
    assert b["wait_reason"] == "lock", b["names"]
    assert any(n in ("down_write", "rwsem_down_write_slowpath") for n in b["names"]), \
        b["names"]
    # and A, holding that lock while asleep in the userfault, is not waiting for a lock
    a = longest_blocked(a_tid)
    assert a["dur_ns"] >= (HOLD_MS - 10) * 1_000_000, (a["dur_ns"], a["names"])
    assert "handle_userfault" in a["names"], a["names"]
    assert a["wait_reason"] is not None and a["wait_reason"] != "lock", \
        (a["wait_reason"], a["names"])


_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def test_a_preempted_thread_has_no_stack_walked_and_no_wait_reason() -> None:
    require_root()
    require(object_path(sched.FAMILY.object_file).exists(), "sched.bpf.o (run `make bpf`)")
    # GIVEN two targeted CPU-bound processes sharing one CPU: the scheduler preempts each
    # in turn (a waiting-for-CPU interval, state R, every time slice)
    config = sched.SchedConfig(min_offcpu_ns=500_000, record_switch=False,
                               record_waking=False, record_wakeup=False)
    cpu = min(os.sched_getaffinity(0))
    with Sensor(sched.sensor_spec(config)) as sensor:
        spinners = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)\n"
                                      + _SPIN.format(s=0.6)], stdin=subprocess.PIPE,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
                    for _ in range(2)]
        try:
            sensor.add_targets([p.pid for p in spinners])
            for p in spinners:
                assert p.stdin is not None
                p.stdin.write(b"g")
                p.stdin.close()
            for p in spinners:
                assert p.wait(timeout=30) == 0
        finally:
            for p in spinners:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        offcpu = sched.offcpu_table(sensor.ring("offcpu_events").drain(), sample_offset())
        filled = KernelStacks(Kallsyms.load(), sensor.map_fd("offcpu_stacks")) \
            .fill_wait_reason(offcpu)

    # WHEN their waits are read, THEN there are preempted ones, none with a stack or reason
    pids = pa.array([p.pid for p in spinners], pa.int64())
    mine = filled.filter(pc.is_in(filled["pid"], value_set=pids))
    preempted = mine.filter(pc.equal(mine["state"], "R"))
    assert preempted.num_rows >= 10, mine.to_pydict()["state"]
    assert preempted["kstack_id"].null_count == preempted.num_rows
    assert preempted["wait_reason"].null_count == preempted.num_rows
