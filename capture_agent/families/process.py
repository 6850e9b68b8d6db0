"""Process family: mirror of bpf/proc.h, targeting rules, and records -> lake ``processes``.

Ring (one record size):
  proc_events  struct process_event  exec / fork / exit, system-wide

Rows are enriched from /proc (exe, argv, env, cwd, cgroup path, container id) with one
read per *process* per batch, never per event. /proc is read at flush time, so it shows a
process as it is then; a row takes a process's /proc image only when that image can
describe it:
  - the process has no later exec in the batch, and its /proc comm equals the row's comm
    (another exec after the batch, or a recycled pid, changes the name);
  - a fork whose child has exec'd since takes its parent's image instead (a child is a
    copy of its parent until it execs);
  - an exec row whose image is unusable (the process is gone, or exec'd again) keeps what
    the kernel captured at exec: the filename as passed to execve and the first 256 bytes
    of argv.
Everything else the image would have given is null: recorded as unknown, never guessed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import BpfMapError
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array, lookup_strings
from kprobe.capture_agent.families.base import ProbeFamily
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.procinfo import ProcessInfo, read_process
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

PROC_LAYOUT_VERSION = 1
TASK_COMM_LEN = 16
PROC_FILENAME_SIZE = 128
PROC_ARGS_SIZE = 256
PROC_FLAG_THREAD = 0x1
PROC_FLAG_TARGETED = 0x2
PROC_FLAG_ARGS_TRUNCATED = 0x4

PROCESS_EVENT = record_dtype(
    [
        ("cgroup_id", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("ppid", "<u4"),
        ("exit_code", "<i4"),
        ("args_len", "<u4"),
        ("__pad", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("filename", f"S{PROC_FILENAME_SIZE}"),
        ("args", "u1", (PROC_ARGS_SIZE,)),
    ]
)

PROC_KINDS = (EventKind.PROC_EXEC, EventKind.PROC_FORK, EventKind.PROC_EXIT)
_KIND_NAMES = ["exec", "fork", "exit"]  # indexed by kind - PROC_EXEC

FAMILY = Family(
    name="process",
    object_file="proc.bpf.o",
    structs=MappingProxyType({"process_event": PROCESS_EVENT}),
    enums=MappingProxyType(
        {
            "proc_constants": {
                "PROC_LAYOUT_VERSION": PROC_LAYOUT_VERSION,
                "PROC_FLAG_THREAD": PROC_FLAG_THREAD,
                "PROC_FLAG_TARGETED": PROC_FLAG_TARGETED,
                "PROC_FLAG_ARGS_TRUNCATED": PROC_FLAG_ARGS_TRUNCATED,
                "PROC_FILENAME_SIZE": PROC_FILENAME_SIZE,
                "PROC_ARGS_SIZE": PROC_ARGS_SIZE,
            },
        }
    ),
    rings=MappingProxyType({"proc_events": PROCESS_EVENT}),
    layout_version=PROC_LAYOUT_VERSION,
)

# Which cgroups target_cgroups names: the unified (v2) hierarchy's, or on a cgroup v1
# host (where the unified hierarchy is empty) the memory controller's.
CgroupHierarchy = Literal["unified", "memory"]


# ---- cgroups ---------------------------------------------------------------------------


def cgroup_mounts(mounts: Path = Path("/proc/self/mounts")) -> dict[CgroupHierarchy, Path]:
    """Where the unified hierarchy and the v1 memory controller are mounted, if they are."""
    out: dict[CgroupHierarchy, Path] = {}
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            out.setdefault("unified", Path(fields[1]))
        elif fields[2] == "cgroup" and "memory" in fields[3].split(","):
            out.setdefault("memory", Path(fields[1]))
    return out


def host_cgroup_hierarchy() -> CgroupHierarchy:
    """The hierarchy that places processes here: the v1 memory controller when it is
    mounted (a v1 or hybrid host), else the unified one."""
    return "memory" if "memory" in cgroup_mounts() else "unified"


def cgroup_dir_id(path: str | os.PathLike[str]) -> int:
    """The id the kernel gives a cgroup: its kernfs id, the inode of its directory."""
    return os.stat(path).st_ino


# ---- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessConfig:
    """What the process sensor records and whom it makes a target.

    target_comms:   process names (15 bytes at most, as in comm) whose exec makes the
                    process a target
    target_cgroups: cgroup directories (paths) or ids whose processes, and those of
                    their descendant cgroups, become targets at exec or fork
    """

    record_threads: bool = False  # fork/exit rows for threads too
    target_comms: tuple[str, ...] = ()
    target_cgroups: tuple[str | int, ...] = ()
    cgroup_hierarchy: CgroupHierarchy | None = None  # None: host_cgroup_hierarchy()
    read_env: bool = True  # replay needs the environment
    target_all: bool = False
    wakeup_fill_pct: int = 50
    ring_bytes: int = 1 << 20
    target_rules: int = 1024  # entries of target_comms and of target_cgroups


def sensor_spec(config: ProcessConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    """The sensor; after loading it, ``apply_targeting(sensor, config)`` fills the rules."""
    c = config or ProcessConfig()
    hierarchy = c.cgroup_hierarchy or host_cgroup_hierarchy()
    return SensorSpec(
        family=FAMILY,
        config={
            "record_threads": int(c.record_threads),
            "target_cgroup_memcg": int(hierarchy == "memory"),
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
        },
        ring_bytes={"proc_events": c.ring_bytes},
        map_entries={"target_comms": c.target_rules, "target_cgroups": c.target_rules},
        shared_maps=shared_maps or {},
    )


def comm_key(comm: str) -> bytes:
    """A name as the kernel keeps it: at most 15 bytes, NUL-padded to 16."""
    raw = comm.encode()
    if not raw or len(raw) >= TASK_COMM_LEN:
        raise ValueError(f"process name {comm!r}: 1 to {TASK_COMM_LEN - 1} bytes")
    return raw.ljust(TASK_COMM_LEN, b"\0")


def add_target_comms(sensor: Sensor, comms: Iterable[str]) -> None:
    """From now on, a process that execs under one of these names is a target."""
    fd = sensor.map_fd("target_comms")
    for comm in comms:
        _map_update(fd, comm_key(comm), "target_comms")


def add_target_cgroups(sensor: Sensor, cgroups: Iterable[str | int]) -> None:
    """From now on, a process forked or exec'd in one of these cgroups (or below) is a
    target. Paths are cgroup directories; ints are cgroup ids."""
    fd = sensor.map_fd("target_cgroups")
    for cgroup in cgroups:
        cgroup_id = cgroup if isinstance(cgroup, int) else cgroup_dir_id(cgroup)
        _map_update(fd, struct.pack("<Q", cgroup_id), "target_cgroups")


def apply_targeting(sensor: Sensor, config: ProcessConfig) -> None:
    add_target_comms(sensor, config.target_comms)
    add_target_cgroups(sensor, config.target_cgroups)


def _map_update(fd: int, key: bytes, name: str) -> None:
    try:
        libbpf.map_update(fd, key, b"\x01")
    except OSError as e:
        raise BpfMapError(f"map {name}: {e.strerror}", e.errno or 0) from None


# ---- records -> rows -------------------------------------------------------------------


def decode_exit_code(status: np.ndarray) -> np.ndarray:
    """Kernel wait status -> exit status, or -signal when killed (Popen.returncode's way)."""
    raw = status.astype(np.int64)
    signal = raw & 0x7F
    return np.where(signal == 0, (raw >> 8) & 0xFF, -signal)


def _utf8(raw: pa.Array) -> pa.Array:
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8: decode each (rare) with replacement characters
        return pa.array([None if v is None else v.decode("utf-8", "replace")
                         for v in raw.to_pylist()], pa.string())


def kernel_argv(args: np.ndarray, lengths: np.ndarray, null: np.ndarray) -> pa.Array:
    """The argv bytes captured at exec (NUL-terminated strings) -> list<string>."""
    lengths = np.minimum(lengths.astype(np.int64), args.shape[1])
    data = args[np.arange(args.shape[1]) < lengths[:, None]]  # row-major: rows concatenated
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    raw = pa.BinaryArray.from_buffers(pa.binary(), len(lengths),
                                      [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])
    text = pc.utf8_rtrim(_utf8(raw), characters="\0")
    parts = pc.split_pattern(text, pattern="\0")
    return pc.if_else(pa.array(null | (lengths == 0)), pa.nulls(len(lengths), parts.type), parts)


def _latest_exec(pids: np.ndarray, ktimes: np.ndarray, is_exec: np.ndarray,
                 query: np.ndarray) -> np.ndarray:
    """For each pid in ``query``: its latest exec time in the batch, or 0 if none."""
    exec_pids, exec_times = pids[is_exec], ktimes[is_exec]
    if not len(exec_pids):
        return np.zeros(len(query), np.uint64)
    order = np.lexsort((exec_times, exec_pids))
    exec_pids, exec_times = exec_pids[order], exec_times[order]
    last = np.r_[exec_pids[1:] != exec_pids[:-1], True]  # last (latest) entry of each pid
    upids, latest = exec_pids[last], exec_times[last]
    at = np.minimum(np.searchsorted(upids, query), len(upids) - 1)
    return np.where(upids[at] == query, latest[at], 0).astype(np.uint64)


@dataclass
class _Images:
    """/proc images of distinct pids, as columns indexed by position in ``pids``."""

    pids: np.ndarray
    exists: np.ndarray
    comm: pa.Array
    exe: pa.Array
    argv: pa.Array
    env: pa.Array
    cwd: pa.Array
    cgroup: pa.Array
    container_id: pa.Array

    @classmethod
    def read(cls, pids: np.ndarray, reader: Callable[[int], ProcessInfo]) -> _Images:
        infos = [reader(int(pid)) for pid in pids]  # one /proc read per process
        strings = pa.list_(pa.string())
        return cls(
            pids=pids,
            exists=np.array([i.comm is not None for i in infos], bool),
            comm=pa.array([i.comm for i in infos], pa.string()),
            exe=pa.array([i.exe for i in infos], pa.string()),
            argv=pa.array([i.argv for i in infos], strings),
            env=pa.array([i.env for i in infos], strings),
            cwd=pa.array([i.cwd for i in infos], pa.string()),
            cgroup=pa.array([i.cgroup for i in infos], pa.string()),
            container_id=pa.array([i.container_id for i in infos], pa.string()),
        )

    def match(self, query: np.ndarray, comms: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(position in pids, usable) per queried pid: usable = read, alive, and with the
        same name as the row (``comms``) says."""
        if not len(self.pids):
            return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
        at = np.minimum(np.searchsorted(self.pids, query), len(self.pids) - 1)
        same_name = pc.fill_null(pc.equal(pc.take(self.comm, pa.array(at)), comms), False)
        usable = (self.pids[at] == query) & self.exists[at]
        return at, usable & np.asarray(same_name.to_numpy(zero_copy_only=False), bool)


def processes_table(batch: np.ndarray, clock: ClockSample, *, with_env: bool = True,
                    reader: Callable[..., ProcessInfo] = read_process) -> pa.Table:
    """A batch of ``PROCESS_EVENT`` -> rows of lake table ``processes``, enriched from
    /proc (see the module docstring for which rows take which /proc image)."""
    check_header(batch, FAMILY, _KINDS)
    hdr = batch["hdr"]
    kind, ktime = hdr["kind"], hdr["ktime_ns"]
    pid, ppid = batch["pid"].astype(np.int64), batch["ppid"].astype(np.int64)
    thread = (hdr["flags"] & PROC_FLAG_THREAD) != 0
    is_exec = kind == EventKind.PROC_EXEC
    is_fork = (kind == EventKind.PROC_FORK) & ~thread
    is_exit = kind == EventKind.PROC_EXIT
    n = len(batch)

    # whose image could describe each row (before checking that it is alive and its name);
    # a process that exited in the batch is gone (or its pid recycled): not read
    exited = pid[is_exit & ~thread]
    self_ok = ((is_exec | is_fork) & (_latest_exec(pid, ktime, is_exec, pid) <= ktime)
               & ~np.isin(pid, exited))
    parent_ok = (is_fork & (_latest_exec(pid, ktime, is_exec, ppid) <= ktime)
                 & ~np.isin(ppid, exited))
    wanted = np.unique(np.concatenate([pid[self_ok], ppid[parent_ok]]))
    images = _Images.read(wanted, lambda p: reader(p, with_env=with_env))

    comms = comm_array(batch["comm"])
    self_at, self_match = images.match(pid, comms)
    parent_at, parent_match = images.match(ppid, comms)
    use_self = self_ok & self_match
    use_parent = parent_ok & parent_match & ~use_self
    source = np.where(use_self, self_at, np.where(use_parent, parent_at, 0))
    take = pa.array(source, pa.int64(), mask=~(use_self | use_parent))

    def image(column: pa.Array) -> pa.Array:
        return pc.take(column, take) if len(wanted) else pa.nulls(n, column.type)

    filename = _utf8(pa.array(batch["filename"], pa.binary(), mask=~is_exec))
    exit_code = decode_exit_code(batch["exit_code"])
    cgroup_id = batch["cgroup_id"]
    columns = {
        "ts_ns": pa.array(clock.to_epoch(ktime)),
        "kind": lookup_strings(_KIND_NAMES, kind.astype(np.int32) - int(EventKind.PROC_EXEC)),
        "pid": int_array(batch["pid"]),
        "tid": int_array(batch["tid"]),
        "ppid": int_array(batch["ppid"]),
        "comm": comms,
        "exe": pc.coalesce(image(images.exe), filename),
        "argv": pc.coalesce(image(images.argv),
                            kernel_argv(batch["args"], batch["args_len"], ~is_exec)),
        "env": image(images.env),
        "cwd": image(images.cwd),
        "cgroup": image(images.cgroup),
        "cgroup_id": int_array(cgroup_id, null=cgroup_id == 0, arrow_type=pa.int64()),
        "container_id": image(images.container_id),
        "exit_code": int_array(exit_code, null=~is_exit),
    }
    return pa.table(columns, schema=table_spec("processes").payload_schema)


def _table_with_defaults(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    return processes_table(batch, clock)


_KINDS = tuple(int(k) for k in PROC_KINDS)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "proc_events": ("processes", _table_with_defaults),
}


class ProcessFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        return sensor_spec(self._config, shared_maps=shared_maps)

    def loaded(self, sensor: Sensor) -> None:  # exec-by-comm and cgroup rules, in the kernel
        apply_targeting(sensor, self._config)

    @property
    def _config(self) -> ProcessConfig:
        o = self.options
        return ProcessConfig(target_comms=o.target_comms, target_cgroups=o.target_cgroups,
                             target_all=o.target_all)

__all__ = [
    "ProcessFamily",
    "FAMILY",
    "PROCESS_EVENT",
    "RING_TABLES",
    "ProcessConfig",
    "add_target_cgroups",
    "add_target_comms",
    "apply_targeting",
    "cgroup_dir_id",
    "cgroup_mounts",
    "decode_exit_code",
    "host_cgroup_hierarchy",
    "kernel_argv",
    "processes_table",
    "sensor_spec",
]
