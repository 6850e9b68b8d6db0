"""The process sensor on the real kernel: exec/fork/exit rows of known programs, enriched
from /proc, and in-kernel targeting by name and cgroup.

Root only. tests/programs/fork_exit.c: a parent and a forked child with known exit codes,
both alive until told to finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import process
from kprobe.capture_agent.layouts import EventKind
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.cgroups import TestCgroup
from tests.support import require, require_binary, require_root


def require_root_and_objects() -> None:
    require_root()
    path = object_path(process.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


class ForkExit:
    """A running fork_exit: parent and child alive until ``finish()``."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        word, pid, child = self.proc.stdout.readline().split()
        assert word == "ready"
        self.pid, self.child = int(pid), int(child)

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sensor() -> Iterator[Sensor]:
    require_root_and_objects()
    with Sensor(process.sensor_spec()) as s:
        yield s


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def _rows(table: pa.Table, kind: str, pid: int) -> list[dict[str, object]]:
    return table.filter(pc.and_(pc.equal(table["kind"], kind),
                                pc.equal(table["pid"], pid))).to_pylist()


def test_exec_fork_and_exit_rows_are_enriched_and_exit_codes_exact(
        sensor: Sensor, programs: Path) -> None:
    binary = str(programs / "fork_exit")
    argv = [binary, "3", "5", "marker-arg", "with space"]
    # GIVEN fork_exit started under the sensor: exec'd, forked its child, both alive
    workload = ForkExit(argv)
    try:
        # WHEN the records so far become rows (while the processes are alive)
        alive = process.processes_table(sensor.ring("proc_events").drain(), sample_offset())
        # and both then exit with their codes
        assert workload.finish() == 3
    finally:
        workload.stop()
    ended = process.processes_table(sensor.ring("proc_events").drain(), sample_offset())

    # THEN the exec row names the program, its argv and parent, read from /proc
    (exec_row,) = _rows(alive, "exec", workload.pid)
    assert exec_row["exe"] == os.path.realpath(binary)
    assert exec_row["argv"] == argv
    assert exec_row["comm"] == "fork_exit" and exec_row["ppid"] == os.getpid()
    assert exec_row["tid"] == workload.pid
    assert exec_row["cwd"] == os.getcwd() and exec_row["cgroup"] is not None
    assert exec_row["env"] is not None and exec_row["exit_code"] is None
    # and the fork of this test process that became it
    assert [r["ppid"] for r in _rows(alive, "fork", workload.pid)] == [os.getpid()]
    # and the child's fork row: a copy of its parent
    (fork_row,) = _rows(alive, "fork", workload.child)
    assert (fork_row["ppid"], fork_row["comm"]) == (workload.pid, "fork_exit")
    assert fork_row["exe"] == os.path.realpath(binary) and fork_row["argv"] == argv
    # and each exit carries its exact code
    (child_exit,) = _rows(ended, "exit", workload.child)
    (parent_exit,) = _rows(ended, "exit", workload.pid)
    assert child_exit["exit_code"] == 5 and parent_exit["exit_code"] == 3
    assert parent_exit["ppid"] == os.getpid() and parent_exit["comm"] == "fork_exit"
    assert parent_exit["ts_ns"] >= child_exit["ts_ns"] >= exec_row["ts_ns"]


def test_a_process_gone_before_the_read_keeps_the_kernels_view(
        sensor: Sensor, programs: Path) -> None:
    binary = str(programs / "fork_exit")
    # GIVEN fork_exit killed by a signal before its records are read
    workload = ForkExit([binary, "0", "0", "gone"])
    workload.proc.send_signal(signal.SIGKILL)
    assert workload.proc.wait() == -9
    rows = process.processes_table(sensor.ring("proc_events").drain(), sample_offset())
    # THEN its exec row keeps the filename and argv the kernel saw, /proc-only fields null
    (exec_row,) = _rows(rows, "exec", workload.pid)
    assert exec_row["exe"] == binary and exec_row["argv"] == [binary, "0", "0", "gone"]
    assert exec_row["cwd"] is None and exec_row["env"] is None
    # and its exit says how it died; its child (whose pipe closed) exited normally
    (parent_exit,) = _rows(rows, "exit", workload.pid)
    assert parent_exit["exit_code"] == -9


def test_an_exec_under_a_target_name_makes_the_process_and_its_children_targets(
        programs: Path) -> None:
    require_root_and_objects()
    # GIVEN the process sensor targeting the name "fork_exit"
    config = process.ProcessConfig(target_comms=("fork_exit",))
    with Sensor(process.sensor_spec(config)) as sensor:
        process.apply_targeting(sensor, config)
        # WHEN fork_exit is exec'd and forks
        workload = ForkExit([str(programs / "fork_exit"), "0", "0"])
        try:
            targets = sensor.targets()
            records = sensor.ring("proc_events").drain()
            assert workload.finish() == 0
        finally:
            workload.stop()
        after = sensor.targets()
    # THEN it became a target at exec (the record says so), its child followed it,
    # and this test process (another name) did not
    assert workload.pid in targets and workload.child in targets
    assert os.getpid() not in targets
    exec_flags = records["hdr"]["flags"][(records["hdr"]["kind"] == EventKind.PROC_EXEC)
                                         & (records["pid"] == workload.pid)]
    assert len(exec_flags) == 1 and exec_flags[0] & process.PROC_FLAG_TARGETED
    # and both left the targets when they exited
    assert workload.pid not in after and workload.child not in after


def test_processes_started_in_a_target_cgroup_become_targets(programs: Path) -> None:
    require_root_and_objects()
    require_binary("sh")
    binary = str(programs / "fork_exit")
    with TestCgroup() as cgroup:
        # GIVEN the process sensor targeting a cgroup (of the host's hierarchy)
        config = process.ProcessConfig(target_cgroups=(str(cgroup.path),),
                                       cgroup_hierarchy=cgroup.hierarchy)
        with Sensor(process.sensor_spec(config)) as sensor:
            process.apply_targeting(sensor, config)
            # WHEN a shell is moved into it, then execs fork_exit (the container way) ...
            execs = subprocess.Popen(["sh", "-c", f"read line; exec {binary} 0 0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            # ... and another moved shell forks a child that runs fork_exit
            forks = subprocess.Popen(["sh", "-c", f"read line; {binary} 0 0; exit 0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                for shell in (execs, forks):
                    cgroup.add(shell.pid)
                    assert shell.stdin is not None and shell.stdout is not None
                    shell.stdin.write("x\n")
                    shell.stdin.flush()
                ready = [_readline(shell).split() for shell in (execs, forks)]
                targets = sensor.targets()
                records = sensor.ring("proc_events").drain()
                for shell in (execs, forks):
                    assert shell.stdin is not None
                    shell.stdin.write("go\n")
                    shell.stdin.flush()
                assert execs.wait(timeout=10) == 0 and forks.wait(timeout=10) == 0
            finally:
                for shell in (execs, forks):
                    if shell.poll() is None:
                        shell.kill()
                    shell.wait()
    exec_pid, exec_child = int(ready[0][1]), int(ready[0][2])
    fork_pid, fork_child = int(ready[1][1]), int(ready[1][2])
    # THEN the exec'd process is a target (checked at exec), and so is its child
    assert exec_pid == execs.pid
    assert exec_pid in targets and exec_child in targets
    # and the shell that only forked is not, but the child it forked in the cgroup is
    assert forks.pid not in targets
    assert fork_pid in targets and fork_child in targets
    kinds, pids, flags = records["hdr"]["kind"], records["pid"], records["hdr"]["flags"]
    fork_flag = flags[(kinds == EventKind.PROC_FORK) & (pids == fork_pid)]
    assert len(fork_flag) == 1 and fork_flag[0] & process.PROC_FLAG_TARGETED
    assert np.all(flags[(kinds == EventKind.PROC_FORK) & (pids == exec_child)]
                  & process.PROC_FLAG_TARGETED == 0)  # followed its parent, not the rule
