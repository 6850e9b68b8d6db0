"""Mem and process records (synthetic) -> lake rows, and /proc enrichment rules. No kernel."""

from __future__ import annotations

import numpy as np
import pytest

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.families import mem, process
from kprobe.capture_agent.layouts import EventKind
from kprobe.capture_agent.procinfo import ProcessInfo
from kprobe.lake.schema import spec

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=100, taken_at_ns=0)
EPOCH = CLOCK.mono_to_epoch_ns

# ---- mem ---------------------------------------------------------------------------------


def _mem_batch() -> np.ndarray:
    b = np.zeros(3, mem.MEM_EVENT)
    b["hdr"]["version"] = mem.MEM_LAYOUT_VERSION
    b["hdr"]["kind"] = [EventKind.MEM_MEMCG_RECLAIM, EventKind.MEM_OOM_KILL,
                        EventKind.MEM_KSWAPD_WAKE]
    b["hdr"]["ktime_ns"] = [5_000, 9_000, 12_000]
    b["start_ns"] = [3_000, 9_000, 12_000]
    b["nr_reclaimed"] = [512, 0, 0]
    b["memcg"] = [4242, 4242, 0]
    b["pid"], b["tid"] = [10, 20, 30], [11, 20, 31]
    b["comm"] = [b"allocator", b"victim", b"kworker"]
    b["trigger_pid"], b["trigger_tid"] = [0, 10, 0], [0, 11, 0]
    b["order"], b["nid"] = [0, -1, 3], [-1, -1, 0]
    return b


def test_reclaim_oom_and_kswapd_records_become_mem_rows() -> None:
    table = mem.mem_table(_mem_batch(), CLOCK)
    assert table.schema == spec("mem").payload_schema
    reclaim, oom, kswapd = table.to_pylist()
    # a merged reclaim: starts at its begin, lasts until its end, with its pages
    assert reclaim["kind"] == "memcg_reclaim"
    assert (reclaim["ts_ns"], reclaim["dur_ns"]) == (EPOCH + 3_000, 2_000)
    assert (reclaim["nr_reclaimed"], reclaim["memcg"], reclaim["tid"]) == (512, 4242, 11)
    # an OOM kill names its victim; instant events have no duration or pages
    assert (oom["kind"], oom["pid"], oom["comm"], oom["dur_ns"]) == ("oom_kill", 20, "victim",
                                                                     None)
    assert oom["nr_reclaimed"] is None and oom["count"] is None
    assert (kswapd["kind"], kswapd["tid"], kswapd["memcg"]) == ("kswapd_wake", 31, None)


def test_mem_records_of_another_layout_version_or_kind_are_refused() -> None:
    b = _mem_batch()
    b["hdr"]["version"][1] = 99
    with pytest.raises(RingBufferError, match="layout version 99"):
        mem.mem_table(b, CLOCK)
    b = _mem_batch()
    b["hdr"]["kind"][0] = EventKind.MEM_FAULT  # counted in a map, never in the ring
    with pytest.raises(RingBufferError, match="kinds"):
        mem.mem_table(b, CLOCK)


def test_fault_and_page_alloc_counts_become_one_row_per_thread_and_process() -> None:
    # GIVEN the faults and allocs maps as read at a flush
    faults = np.zeros(2, mem.FAULT_STAT)
    faults["count"] = [1000, 3]
    faults["first_ns"], faults["last_ns"] = [100, 700], [600, 900]
    faults["last_address"] = [0x7F00_0000_1000, 0x5600_0000_0000]
    faults["memcg"], faults["pid"] = [77, 78], [40, 50]
    faults["comm"] = [b"toucher", b"other"]
    allocs = np.zeros(1, mem.ALLOC_STAT)
    allocs["pages"], allocs["memcg"], allocs["comm"] = 65536, 77, b"allocator"
    # WHEN converted
    fault_rows = mem.fault_table(np.array([41, 51], np.uint32), faults, CLOCK).to_pylist()
    alloc_rows = mem.alloc_table(np.array([60], np.uint32), allocs, EPOCH + 5).to_pylist()
    # THEN faults: per thread, first..last, the latest address
    first = fault_rows[0]
    assert (first["kind"], first["pid"], first["tid"], first["count"]) == ("fault", 40, 41, 1000)
    assert (first["ts_ns"], first["dur_ns"]) == (EPOCH + 100, 500)
    assert (first["address"], first["memcg"]) == (0x7F00_0000_1000, 77)
    # and page allocations: per process, stamped with the flush time, no thread
    (alloc,) = alloc_rows
    assert (alloc["kind"], alloc["pid"], alloc["tid"], alloc["count"]) == (
        "page_alloc", 60, None, 65536)
    assert (alloc["ts_ns"], alloc["memcg"], alloc["comm"]) == (EPOCH + 5, 77, "allocator")


def test_switched_off_mem_probes_are_not_loaded() -> None:
    spec_ = mem.sensor_spec(mem.MemConfig(record_page_alloc=False, record_reclaim=False))
    assert "on_mm_page_alloc" in spec_.disabled
    assert {"on_memcg_reclaim_begin", "on_memcg_reclaim_end"} <= spec_.disabled
    assert "on_page_fault_user" not in spec_.disabled
    assert "follow_fork" in spec_.disabled  # the mem family does not follow targets


# ---- process -----------------------------------------------------------------------------


def _proc_records(rows: list[dict[str, object]]) -> np.ndarray:
    b = np.zeros(len(rows), process.PROCESS_EVENT)
    b["hdr"]["version"] = process.PROC_LAYOUT_VERSION
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key in ("kind", "ktime_ns", "flags"):
                b["hdr"][key][i] = value
            elif key == "args":
                raw = bytes(value)  # type: ignore[call-overload]
                b["args"][i, : len(raw)] = np.frombuffer(raw, np.uint8)
                b["args_len"][i] = len(raw)
            else:
                b[key][i] = value
    return b


class FakeProc:
    """/proc as a dict: pid -> ProcessInfo; records which pids were read."""

    def __init__(self, infos: dict[int, ProcessInfo]) -> None:
        self.infos = infos
        self.reads: list[int] = []

    def __call__(self, pid: int, with_env: bool = True) -> ProcessInfo:
        self.reads.append(pid)
        return self.infos.get(pid, ProcessInfo(pid))


def _info(pid: int, comm: str, exe: str, argv: list[str]) -> ProcessInfo:
    return ProcessInfo(pid, ppid=1, comm=comm, exe=exe, argv=argv, env=["A=1"], cwd="/srv",
                       cgroup="/system.slice/docker-" + "b" * 64 + ".scope", cgroup_id=9,
                       container_id="b" * 64)


def test_exec_fork_exit_rows_take_the_proc_image_that_describes_them() -> None:
    shell = _info(100, "sh", "/usr/bin/dash", ["sh", "-c", "app --port 1"])
    app = _info(101, "app", "/opt/app/bin/app", ["app", "--port", "1"])
    fake = FakeProc({100: shell, 101: app})
    batch = _proc_records([
        # sh forks 101, which execs app; a second child (102) exits at once
        {"kind": EventKind.PROC_FORK, "ktime_ns": 10, "pid": 101, "tid": 101, "ppid": 100,
         "comm": b"sh", "cgroup_id": 9},
        {"kind": EventKind.PROC_EXEC, "ktime_ns": 20, "pid": 101, "tid": 101, "ppid": 100,
         "comm": b"app", "filename": b"/opt/app/bin/app", "args": b"app\0--port\0001\0",
         "cgroup_id": 9},
        {"kind": EventKind.PROC_FORK, "ktime_ns": 30, "pid": 102, "tid": 102, "ppid": 100,
         "comm": b"sh", "cgroup_id": 9},
        {"kind": EventKind.PROC_EXIT, "ktime_ns": 40, "pid": 102, "tid": 102, "ppid": 100,
         "comm": b"sh", "exit_code": 3 << 8, "cgroup_id": 9},
    ])
    table = process.processes_table(batch, CLOCK, reader=fake)
    assert table.schema == spec("processes").payload_schema
    fork_101, exec_101, fork_102, exit_102 = table.to_pylist()
    # one /proc read per process, none for exits
    assert sorted(fake.reads) == [100, 101]
    # the fork of a child that exec'd since is described by its parent (a copy of it)
    assert (fork_101["kind"], fork_101["exe"], fork_101["argv"]) == (
        "fork", "/usr/bin/dash", ["sh", "-c", "app --port 1"])
    # the exec takes the child's own image
    assert (exec_101["exe"], exec_101["argv"], exec_101["cwd"]) == (
        "/opt/app/bin/app", ["app", "--port", "1"], "/srv")
    assert exec_101["container_id"] == "b" * 64 and exec_101["env"] == ["A=1"]
    assert exec_101["ts_ns"] == EPOCH + 20 and exec_101["exit_code"] is None
    # a gone child: its fork row takes the parent's image, its exit the exact code
    assert fork_102["exe"] == "/usr/bin/dash"
    assert (exit_102["kind"], exit_102["exit_code"], exit_102["exe"]) == ("exit", 3, None)
    assert exit_102["cgroup_id"] == 9


def test_an_exec_whose_process_is_gone_or_renamed_keeps_what_the_kernel_saw() -> None:
    # GIVEN /proc shows pid 200 under another name (it exec'd again since), 201 gone
    fake = FakeProc({200: _info(200, "later", "/bin/later", ["later"])})
    batch = _proc_records([
        {"kind": EventKind.PROC_EXEC, "ktime_ns": 5, "pid": 200, "tid": 200, "ppid": 1,
         "comm": b"job", "filename": b"./job", "args": b"./job\0-x\0"},
        {"kind": EventKind.PROC_EXEC, "ktime_ns": 6, "pid": 201, "tid": 201, "ppid": 1,
         "comm": b"tool", "filename": b"/usr/bin/tool", "args": b"tool\0a b\0\0c\0"},
    ])
    renamed, gone = process.processes_table(batch, CLOCK, reader=fake).to_pylist()
    # THEN the kernel's filename and argv stand in; nothing is taken from the wrong image
    assert (renamed["exe"], renamed["argv"], renamed["cwd"]) == ("./job", ["./job", "-x"], None)
    assert (gone["exe"], gone["argv"]) == ("/usr/bin/tool", ["tool", "a b", "", "c"])
    assert gone["env"] is None and gone["container_id"] is None


def test_a_later_exec_in_the_batch_hides_the_image_from_an_earlier_one() -> None:
    fake = FakeProc({300: _info(300, "second", "/bin/second", ["second"])})
    batch = _proc_records([
        {"kind": EventKind.PROC_EXEC, "ktime_ns": 1, "pid": 300, "tid": 300, "ppid": 1,
         "comm": b"second", "filename": b"/bin/first", "args": b"first\0"},
        {"kind": EventKind.PROC_EXEC, "ktime_ns": 2, "pid": 300, "tid": 300, "ppid": 1,
         "comm": b"second", "filename": b"/bin/second", "args": b"second\0"},
    ])
    first, second = process.processes_table(batch, CLOCK, reader=fake).to_pylist()
    assert (first["exe"], first["argv"]) == ("/bin/first", ["first"])
    assert (second["exe"], second["argv"]) == ("/bin/second", ["second"])


def test_exit_codes_decode_like_popen_returncode() -> None:
    status = np.array([0, 3 << 8, 255 << 8, 9, 6 | 0x80], np.int32)
    assert process.decode_exit_code(status).tolist() == [0, 3, 255, -9, -6]


def test_an_empty_batch_reads_nothing() -> None:
    fake = FakeProc({})
    table = process.processes_table(np.zeros(0, process.PROCESS_EVENT), CLOCK, reader=fake)
    assert table.num_rows == 0 and fake.reads == []


def test_process_records_of_another_version_are_refused() -> None:
    batch = _proc_records([{"kind": EventKind.PROC_EXIT, "pid": 1}])
    batch["hdr"]["version"] = 2
    with pytest.raises(RingBufferError, match="layout version 2"):
        process.processes_table(batch, CLOCK, reader=FakeProc({}))


def test_target_names_are_kernel_comm_keys() -> None:
    assert process.comm_key("fork_exit") == b"fork_exit" + b"\0" * 7
    with pytest.raises(ValueError):
        process.comm_key("a_name_of_sixteen")  # comm holds 15 bytes
    with pytest.raises(ValueError):
        process.comm_key("")


def test_cgroup_mounts_are_found_in_the_mount_table(tmp_path: pytest.TempPathFactory) -> None:
    mounts = tmp_path / "mounts"  # type: ignore[operator]
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    )
    found = process.cgroup_mounts(mounts)
    assert {k: str(v) for k, v in found.items()} == {
        "memory": "/sys/fs/cgroup/memory", "unified": "/sys/fs/cgroup/unified"}
