"""What /proc says about a process: exe, argv, env, cwd, cgroup, container id.

Used to enrich exec/fork rows from the kernel (which carry only pid, ppid and comm) and to
snapshot processes already running when the agent starts. One /proc walk per *process*,
never per event. A process can exit between the kernel event and the read: its fields are
then null, which is recorded as such rather than guessed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# Container ids as the common runtimes spell them in cgroup v2 paths.
_CONTAINER_ID = re.compile(
    r"(?:docker-|cri-containerd-|crio-|libpod-|containerd-)?([0-9a-f]{64})(?:\.scope)?"
)
MAX_ENV_BYTES = 64 * 1024  # replay needs the environment; cap what one process can cost us


@dataclass
class ProcessInfo:
    pid: int
    ppid: int | None = None
    comm: str | None = None
    exe: str | None = None
    argv: list[str] | None = None
    env: list[str] | None = None
    cwd: str | None = None
    cgroup: str | None = None
    cgroup_id: int | None = None
    container_id: str | None = None
    threads: list[int] = field(default_factory=list)


def _read(path: Path, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def _nul_list(raw: bytes | None) -> list[str] | None:
    if raw is None:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cgroup_path(pid: int) -> str | None:
    raw = _read(PROC / str(pid) / "cgroup")
    if raw is None:
        return None
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("0::"):  # cgroup v2 unified hierarchy
            return line[3:]
    return None


def cgroup_id(path: str | None) -> int | None:
    """The id BPF's ``bpf_get_current_cgroup_id`` reports: the cgroup directory's inode."""
    if path is None:
        return None
    try:
        return os.stat(CGROUP_ROOT / path.lstrip("/")).st_ino
    except OSError:
        return None


def container_id(path: str | None) -> str | None:
    if not path:
        return None
    for part in reversed(path.split("/")):
        match = _CONTAINER_ID.fullmatch(part)
        if match:
            return match.group(1)
    return None


def read_process(pid: int, with_env: bool = True) -> ProcessInfo:
    base = PROC / str(pid)
    info = ProcessInfo(pid)
    stat = _read(base / "stat")
    if stat is not None:
        # comm may contain spaces and parentheses: split at the last ')'
        text = stat.decode(errors="replace")
        info.comm = text[text.find("(") + 1 : text.rfind(")")]
        info.ppid = int(text[text.rfind(")") + 2 :].split()[1])
    try:
        info.exe = os.readlink(base / "exe")
    except OSError:
        pass
    try:
        info.cwd = os.readlink(base / "cwd")
    except OSError:
        pass
    info.argv = _nul_list(_read(base / "cmdline"))
    if with_env:
        info.env = _nul_list(_read(base / "environ", MAX_ENV_BYTES))
    info.cgroup = cgroup_path(pid)
    info.cgroup_id = cgroup_id(info.cgroup)
    info.container_id = container_id(info.cgroup)
    try:
        info.threads = sorted(int(t) for t in os.listdir(base / "task"))
    except OSError:
        pass
    return info


def all_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


def processes_table(infos: list[ProcessInfo], ts_ns: int, kind: str = "seen") -> pa.Table:
    """Rows for the ``processes`` table (one per process, so a list here is fine)."""
    return pa.table(
        {
            "ts_ns": pa.array([ts_ns] * len(infos), pa.int64()),
            "kind": [kind] * len(infos),
            "pid": pa.array([i.pid for i in infos], pa.int32()),
            "tid": pa.array([i.pid for i in infos], pa.int32()),
            "ppid": pa.array([i.ppid for i in infos], pa.int32()),
            "comm": [i.comm for i in infos],
            "exe": [i.exe for i in infos],
            "argv": pa.array([i.argv for i in infos], pa.list_(pa.string())),
            "env": pa.array([i.env for i in infos], pa.list_(pa.string())),
            "cwd": [i.cwd for i in infos],
            "cgroup": [i.cgroup for i in infos],
            "cgroup_id": pa.array([i.cgroup_id for i in infos], pa.int64()),
            "container_id": pa.array([i.container_id for i in infos], pa.string()),
        }
    )
