"""What a recorded process started with besides its argv and environment: the replay's half
of the exec payloads the kernel resolved (capture_agent/bpf/syscalls.h).

An exec's ``syscall_data`` rows (``nr`` 59) hold, besides the file (argument 0), argv (1) and
environment (2): the working directory (``CWD``, a kernel path), a ``struct proc_context``
(``CONTEXT``: umask, ids as the process's user namespace sees them, rlimits, hostname), its
descriptors (``FDS``: an array of ``struct file_id``) and the path of each descriptor that
has one (``FD_PATH + fd``). An open's rows hold the new descriptor's ``file_id`` and path
(``OPENED``); a chdir's, the new working directory (``CWD``). A read recorded by identity
holds a ``file_id`` in ``data`` and names its content in ``blob``.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field

CWD = 10
CONTEXT = 11
FDS = 12
OPENED = 13
FD_PATH = 16
FD_TABLE_MAX = 64
KERNEL_ARGS = frozenset({CWD, CONTEXT, FDS, OPENED, *range(FD_PATH, FD_PATH + FD_TABLE_MAX)})

FILE_ID = struct.Struct("<QQqqqqiIII")  # dev, ino, size, mtime, ctime, pos, fd, mode, flags, magic
_CONTEXT = struct.Struct("<10I32Q65s7x")
RLIMIT_NAMES = ("cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock",
                "as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime")
RLIM_INFINITY = (1 << 64) - 1

_PIPEFS, _SOCKFS, _ANON = 0x50495045, 0x534F434B, 0x09041934


@dataclass(frozen=True)
class FileId:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    pos: int
    fd: int
    mode: int
    flags: int
    magic: int

    @classmethod
    def parse(cls, raw: bytes) -> FileId:
        return cls(*FILE_ID.unpack_from(raw))

    @property
    def kind(self) -> str:
        """file, dir, tty, chr, blk, fifo, pipe, socket, anon (eventfd, epoll, ...)."""
        if self.magic == _PIPEFS:
            return "pipe"
        if self.magic == _SOCKFS or stat.S_ISSOCK(self.mode):
            return "socket"
        if self.magic == _ANON:
            return "anon"
        fmt = stat.S_IFMT(self.mode)
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFCHR: "chr",
                stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}.get(fmt, "other")


@dataclass(frozen=True)
class Descriptor:
    """A descriptor the process started with."""

    fd: int
    kind: str
    flags: int  # f_flags: O_ACCMODE, O_APPEND, O_NONBLOCK, ...
    target: str  # its path, or pipe:[ino], socket:[ino], anon_inode
    pos: int = 0

    def describe(self) -> str:
        return f"{self.fd} {self.kind} {self.target}"


@dataclass(frozen=True)
class ProcessContext:
    """How the recorded process was set up by the kernel, as it saw it."""

    umask: int
    ids_mapped: bool  # ids as its user namespace sees them (else kernel ids)
    uid: int
    euid: int
    gid: int
    egid: int
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (cur, max)
    hostname: str = ""

    @classmethod
    def parse(cls, raw: bytes) -> ProcessContext | None:
        if len(raw) < _CONTEXT.size:
            return None
        values = _CONTEXT.unpack_from(raw)
        umask, mapped, uid, euid, _suid, _fsuid, gid, egid, _sgid, _fsgid = values[:10]
        limits = values[10:42]
        rlimits = {name: (limits[2 * i], limits[2 * i + 1])
                   for i, name in enumerate(RLIMIT_NAMES)}
        hostname = values[42].split(b"\0", 1)[0].decode(errors="replace")
        return cls(umask, bool(mapped), uid, euid, gid, egid, rlimits, hostname)


def descriptors(fds: bytes, paths: dict[int, bytes]) -> tuple[Descriptor, ...]:
    """The exec's descriptor table from its FDS array and FD_PATH rows."""
    out = []
    for at in range(0, len(fds) - FILE_ID.size + 1, FILE_ID.size):
        fid = FileId.parse(fds[at:at + FILE_ID.size])
        kind = fid.kind
        if fid.fd in paths:
            target = paths[fid.fd].decode(errors="surrogateescape")
            if kind == "chr" and target.startswith(("/dev/pts/", "/dev/tty")):
                kind = "tty"
        elif kind in ("pipe", "socket"):
            target = f"{kind}:[{fid.ino}]"
        else:
            target = "anon_inode" if kind == "anon" else ""
        out.append(Descriptor(fid.fd, kind, fid.flags, target, fid.pos))
    return tuple(sorted(out, key=lambda d: d.fd))


__all__ = ["CONTEXT", "CWD", "FDS", "FD_PATH", "FILE_ID", "KERNEL_ARGS", "OPENED",
           "Descriptor", "FileId", "ProcessContext", "descriptors"]
