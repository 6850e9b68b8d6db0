"""Targets' vDSO clock reads made syscalls (``--vdso-patch``, capture_agent/vdso_patch.py).

Root only. The rewrite happens in live processes, so the first test is the attack on it:
processes whose threads do nothing but read clocks through the vDSO are rewritten while
they run, and none may crash or see time go backwards. The second proves what the rewrite
is for, as the uprobe test next door does for uprobes: a target's clock reads reach the
syscall path with the very values the program got, a forked child inherits the rewritten
vDSO, and a process that is no target is left alone.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

from kprobe.capture_agent import vdso_patch
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.process_probes import VdsoPatcher
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.integration.test_agent_process_probes import FORKER, wait_for
from tests.support import require, require_root


def _entry_bytes(pid: int) -> set[bytes]:
    """The first bytes of each clock entry point of ``pid``'s vDSO."""
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return {os.pread(mem, vdso_patch.STUB_LEN, a)
                for a in vdso_patch._entries(pid, mem)}  # noqa: SLF001 (the test reads them)
    finally:
        os.close(mem)


def test_rewriting_the_vdso_of_running_clock_readers_crashes_none(programs: Path) -> None:
    """GIVEN processes whose 4 threads spend their time inside vDSO clock reads
    WHEN each one's vDSO is rewritten while they run (20 processes)
    THEN every process runs on and exits cleanly, no thread saw its monotonic clock go
    back, and each one's entry points are syscall stubs afterwards."""
    require_root()
    stubs = {vdso_patch.stub(nr) for nr in vdso_patch.VDSO_SYSCALLS.values()}
    for _ in range(20):
        proc = subprocess.Popen([str(programs / "clock_hammer"), "4"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin and proc.stdout
        try:
            pid = int(proc.stdout.readline().split()[1])
            assert not _entry_bytes(pid) & stubs  # the control: untouched before
            deadline = time.monotonic() + 10
            while not (result := vdso_patch.patch(pid)).patched:
                assert time.monotonic() < deadline, "a thread stood in an entry point for 10 s"
            assert result.entries >= 3 and result.threads == 5
            assert _entry_bytes(pid) <= stubs
            time.sleep(0.05)  # the threads now make syscalls for a while
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            out = proc.stdout.read()
            assert proc.wait(10) == 0, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "backwards 0" in out, out


def test_a_target_s_clock_reads_become_recorded_syscalls_with_their_values() -> None:
    """GIVEN a payload sensor whose targets get their vDSO rewritten, a target and a
    bystander
    WHEN the target forks and the child reads the realtime clock through libc
    THEN the child inherited the rewrite (nothing left to rewrite), its read is a
    clock_gettime syscall row holding the exact value it printed, and the bystander's vDSO
    is untouched and it has no rows."""
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True, vdso_clocks=False)
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
    forker = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert forker.stdin and forker.stdout
    stubs = {vdso_patch.stub(nr) for nr in vdso_patch.VDSO_SYSCALLS.values()}

    def say(line: str) -> None:
        assert forker.stdin
        forker.stdin.write(line + "\n")
        forker.stdin.flush()

    try:
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            assert not [n for n in sensor.attached if n.startswith("on_clock")]  # no uprobes
            parent = int(forker.stdout.readline())
            sensor.add_targets([parent])
            patcher = VdsoPatcher(sensor, interval_s=0.05).start()
            try:
                assert patcher.patched == {parent}
                say("fork")
                child = int(forker.stdout.readline())
                assert _entry_bytes(child) <= stubs  # inherited at fork
                assert wait_for(lambda: child in patcher.patched), patcher.patched
                say("go")
                value = int(forker.stdout.readline())
                say("exit")
                assert wait_for(lambda: child not in patcher.patched)
                assert not _entry_bytes(bystander.pid) & stubs
                assert patcher.failed == 0
            finally:
                patcher.stop()
            events = sensor.ring("syscall_events").drain()
            small = sensor.ring("syscall_data_small").drain()
            big = sensor.ring("syscall_data").drain()
    finally:
        say("done")
        forker.wait(10)
        bystander.kill()
        bystander.wait()
    clock = sample_offset()
    rows = syscalls.syscalls_table(events, clock)
    reads = rows.filter(pc.and_(pc.equal(rows["pid"], child),
                                pc.equal(rows["name"], "clock_gettime")))
    assert reads.num_rows >= 1
    assert rows.filter(pc.equal(rows["name"], "vdso:clock_gettime")).num_rows == 0
    regions = {**syscalls.region_bytes(syscalls.syscall_data_table(big, clock)),
               **syscalls.region_bytes(syscalls.syscall_data_table(small, clock))}
    recorded = [regions.get((child, seq, 1)) for seq in reads["seq"].to_pylist()]
    timespec = struct.pack("<qq", value // 1_000_000_000, value % 1_000_000_000)
    assert timespec in recorded
    assert rows.filter(pc.equal(rows["pid"], bystander.pid)).num_rows == 0
