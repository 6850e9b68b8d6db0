"""Confining the current process (the Cypher worker) before it runs anything a user wrote.

``confine(readable)`` makes the process unable to read any file outside ``readable``,
write or create any file, open a TCP connection or bind a port, or gain a privilege, for
the rest of its life and its children's:

- **Landlock** (Linux 5.13+, ABI 4+ for TCP): a ruleset that handles every file-system
  access and TCP bind/connect, with read-only rules for ``readable`` only; from ABI 6 also
  no signals to, and no abstract UNIX sockets of, processes outside it. Already-open file
  descriptors (the worker's pipes) keep working.
- ``PR_SET_NO_NEW_PRIVS``, every capability dropped (bounding, ambient, effective,
  permitted, inheritable): root without capabilities cannot leave the Landlock domain,
  remount or ptrace.
- rlimits: no core files, no file growth, a CPU-time ceiling.

There is no Python binding in the standard library, so the three Landlock system calls and
``capset`` are made through ctypes (x86-64 and arm64 share their numbers).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Iterable
from pathlib import Path

from kprobe.query_api.errors import ServiceUnavailable

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522

_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
# every file-system right each ABI knows (EXECUTE .. MAKE_SYM, then REFER, TRUNCATE,
# IOCTL_DEV): handled means refused unless a rule grants it
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_TCP = (1 << 0) | (1 << 1)  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPES = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)

MIN_ABI = 4  # below: no TCP rules, so the engine could still download extensions


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    result = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                             ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(result), 0)


def unavailable_reason() -> str | None:
    """Why this kernel cannot confine the worker, or None when it can."""
    abi = landlock_abi()
    if abi == 0:
        return ("Landlock is not available in this kernel (CONFIG_SECURITY_LANDLOCK and "
                "'landlock' in the lsm= boot parameter)")
    if abi < MIN_ABI:
        return f"Landlock ABI {abi} has no network rules (need {MIN_ABI}, Linux 6.7+)"
    return None


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ServiceUnavailable(f"cannot confine the Cypher worker: {what}: "
                                 f"{os.strerror(err) or errno.errorcode.get(err, err)}")
    return result


def confine(readable: Iterable[Path], cpu_seconds: int | None = None) -> int:
    """Confine this process for good (see the module doc); returns the Landlock ABI."""
    reason = unavailable_reason()
    if reason is not None:
        raise ServiceUnavailable(f"cannot confine the Cypher worker: {reason}")
    libc = _libc()
    abi = landlock_abi()
    fs_rights = _FS_RIGHTS[max(k for k in _FS_RIGHTS if k <= abi)]
    attr = _RulesetAttr(fs_rights, _NET_TCP, _SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else ctypes.sizeof(ctypes.c_uint64) * 2
    ruleset = _check(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                                  ctypes.c_size_t(size), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    try:
        for path in readable:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rights = _READ_FILE | (_READ_DIR if path.is_dir() else 0)
                rule = _PathBeneath(rights, fd)
                _check(libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset,
                                    ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                    ctypes.c_uint32(0)), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        _drop_capabilities(libc)
        _check(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    return abi


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 or ctypes.get_errno() == errno.EPERM:
        cap += 1  # EPERM: not ours to drop (no CAP_SETPCAP); EINVAL: past the last one
        if cap > 63:
            break
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")


def effective_capabilities() -> int:
    """CapEff of this process (tests read it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return -1
