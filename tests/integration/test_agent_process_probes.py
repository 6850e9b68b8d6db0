"""The libc clock uprobes go into target processes only, and follow the targets.

Root only. A uprobe attached for every process would make every clock read on the node
trap (17 ns -> 16 us here, tests/bench/bench_capture.py part 1); these tests prove the
structure that avoids it: the uprobes are attached per target process, a forked child of a
target gets its own once the poll sees it (and its clock reads are then recorded with
their values), a process that is no target never gets any, and an exited one loses them.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.process_probes import ProcessProbes
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.support import require, require_root

# parent: prints its pid, forks on "fork\n"; the child prints its pid, reads the realtime
# clock through libc (the vDSO: no syscall) on "go\n", prints it, exits on "exit\n"
FORKER = """
import os, sys, time
print(os.getpid(), flush=True)
sys.stdin.readline()
child = os.fork()
if child == 0:
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    print(time.clock_gettime_ns(time.CLOCK_REALTIME), flush=True)
    sys.stdin.readline()
    os._exit(0)
os.waitpid(child, 0)
sys.stdin.readline()
"""


def drain_syscalls(sensor: Sensor) -> tuple[pa.Table, dict[tuple[int, int, int], bytes]]:
    """The syscall rows a payload sensor's rings hold, and their payload regions by
    (pid, seq, argument) (the rings are drained)."""
    clock = sample_offset()
    rows = syscalls.syscalls_table(sensor.ring("syscall_events").drain(), clock)
    regions = {}
    for ring in ("syscall_data", "syscall_data_small"):
        data = syscalls.syscall_data_table(sensor.ring(ring).drain(), clock)
        regions.update(syscalls.region_bytes(data))
    return rows, regions


def clock_read_recorded(rows: pa.Table, regions: dict[tuple[int, int, int], bytes],
                        pid: int, value_ns: int) -> bool:
    """Is a clock read of ``pid`` through the vDSO recorded with the value it printed?"""
    reads = rows.filter(pc.and_(pc.equal(rows["pid"], pid),
                                pc.equal(rows["name"], "vdso:clock_gettime")))
    timespec = struct.pack("<qq", value_ns // 1_000_000_000, value_ns % 1_000_000_000)
    return timespec in [regions.get((pid, seq, 1)) for seq in reads["seq"].to_pylist()]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_clock_uprobes_are_attached_to_targets_only_and_follow_forks_and_exits() -> None:
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
    forker = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert forker.stdin and forker.stdout

    def say(line: str) -> None:
        assert forker.stdin
        forker.stdin.write(line + "\n")
        forker.stdin.flush()

    try:
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            # GIVEN a payload sensor: its clock uprobes are not attached node-wide
            assert not [n for n in sensor.attached if n.startswith("on_clock")]
            parent = int(forker.stdout.readline())
            sensor.add_targets([parent])
            probes = ProcessProbes(sensor, syscalls.uprobe_places_for, interval_s=0.05)
            probes.start()
            try:
                # THEN the target has them at once, the bystander never
                assert sensor.uprobe_pids == [parent]
                # WHEN the target forks: the child becomes a target and gets its own
                say("fork")
                child = int(forker.stdout.readline())
                assert wait_for(lambda: child in sensor.uprobe_pids), sensor.uprobe_pids
                # and the child's vDSO clock read is recorded, with the value it got
                say("go")
                value = int(forker.stdout.readline())
                say("exit")
                # WHEN the child exits, it loses them (the parent keeps its own)
                assert wait_for(lambda: child not in sensor.uprobe_pids)
                assert parent in sensor.uprobe_pids
                assert bystander.pid not in sensor.uprobe_pids
                assert probes.failed == 0
            finally:
                probes.stop()
            rows, regions = drain_syscalls(sensor)
    finally:
        say("done")
        forker.wait(10)
        bystander.kill()
        bystander.wait()
    assert clock_read_recorded(rows, regions, child, value)
    assert rows.filter(pc.equal(rows["pid"], bystander.pid)).num_rows == 0
