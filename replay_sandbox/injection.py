"""``--inject`` specifications: which syscalls get slower, or which inputs arrive later.

Grammar: ``TARGET [FILTER ...]:DELAY`` where

* TARGET is a syscall name (``fsync``, ``recvfrom``, ...) or a family: ``recv`` (data
  received: recvfrom/recvmsg, and read/readv on sockets), ``send``, ``accept``,
  ``connect``, ``net`` (everything that arrives over a socket), ``disk`` (fsync, fdatasync,
  sync_file_range, and reads/writes on regular files);
* FILTER is ``fd=N`` or ``path=GLOB`` (the path the fd was opened with);
* DELAY is ``+`` or ``-`` followed by a number and a unit (ns, us, ms, s), e.g. ``+50ms``.

Two kinds of delay: *arrival* delays move the moment data becomes available (recv, net,
accept, connect); the replay then decides waits with timeouts against the shifted arrival.
*Duration* delays make the call itself take longer (fsync, disk, any syscall name).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from kprobe.lake.timespec import TimeSpecError, parse_duration
from kprobe.replay_sandbox.errors import SpecError
from kprobe.replay_sandbox.syscall_table import NUMBERS, READ_FAMILY, RECV_FAMILY, WRITE_FAMILY

Kind = Literal["arrival", "duration"]
FdKind = Literal["file", "socket", "pipe", "other", "unknown"]

_FAMILIES: dict[str, tuple[Kind, frozenset[int]]] = {
    "recv": ("arrival", RECV_FAMILY | READ_FAMILY),
    "net": ("arrival", RECV_FAMILY | READ_FAMILY | {43, 288, 42}),
    "accept": ("arrival", frozenset({43, 288})),
    "connect": ("arrival", frozenset({42})),
    "send": ("duration", frozenset({44, 46, 1, 20})),
    "disk": ("duration", frozenset({74, 75, 277}) | READ_FAMILY | WRITE_FAMILY),
}
_SOCKET_ONLY = frozenset({"recv", "net", "send"})
_FILE_ONLY = frozenset({"disk"})
_ALWAYS_SOCKET = RECV_FAMILY | {43, 288, 42, 44, 46}
_ALWAYS_DISK = frozenset({74, 75, 277})


@dataclass(frozen=True)
class Injection:
    text: str
    target: str
    kind: Kind
    syscalls: frozenset[int]
    delay_ns: int
    fd: int | None = None
    path: str | None = None

    def matches(self, nr: int, fd: int, fd_kind: FdKind, path: str | None) -> bool:
        if nr not in self.syscalls:
            return False
        if self.fd is not None and fd != self.fd:
            return False
        if self.path is not None and not (path and fnmatch.fnmatch(path, self.path)):
            return False
        if self.target in _SOCKET_ONLY and nr not in _ALWAYS_SOCKET:
            return fd_kind == "socket"
        if self.target in _FILE_ONLY and nr not in _ALWAYS_DISK:
            return fd_kind == "file"
        return True


def parse(text: str) -> Injection:
    """One ``--inject`` value; a SpecError says what is wrong with it."""
    head, sep, delay_text = text.strip().rpartition(":")
    if not sep or not head.strip():
        raise SpecError(f"--inject {text!r}: expected TARGET[ fd=N][ path=GLOB]:+DELAY")
    delay_text = delay_text.strip()
    try:  # a sign, then a duration of the one grammar (lake/timespec.py)
        if delay_text[:1] not in ("+", "-"):
            raise TimeSpecError("the delay needs its sign")
        delay = parse_duration(delay_text[1:], allow_zero=True) * (
            -1 if delay_text[0] == "-" else 1)
    except TimeSpecError as err:
        raise SpecError(f"--inject {text!r}: delay must look like +50ms or -1.5s ({err})"
                        ) from None
    words = head.split()
    target = words[0]
    fd: int | None = None
    path: str | None = None
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            raise SpecError(f"--inject {text!r}: filter {word!r} is not KEY=VALUE")
        if key == "fd":
            try:
                fd = int(value)
            except ValueError:
                raise SpecError(f"--inject {text!r}: fd must be an integer") from None
        elif key == "path":
            path = value
        else:
            raise SpecError(f"--inject {text!r}: unknown filter {key!r} (fd, path)")
    if target in _FAMILIES:
        kind, syscalls = _FAMILIES[target]
    elif target in NUMBERS:
        kind, syscalls = "duration", frozenset({NUMBERS[target]})
    else:
        raise SpecError(f"--inject {text!r}: unknown target {target!r} (a syscall name or "
                        f"one of {', '.join(sorted(_FAMILIES))})")
    return Injection(text, target, kind, syscalls, delay, fd, path)


def parse_all(texts: list[str] | tuple[str, ...]) -> list[Injection]:
    return [parse(t) for t in texts]


@dataclass
class Delays:
    """The delays that apply to one call, and which injections produced them."""

    duration_ns: int = 0
    arrival_ns: int = 0
    applied: tuple[Injection, ...] = ()


def delays_for(injections: list[Injection], nr: int, fds: list[tuple[int, FdKind, str | None]],
               as_input_nr: int | None = None) -> Delays:
    """Delays for syscall ``nr`` touching ``fds``; a wait result is matched as if each ready
    fd were read with ``as_input_nr`` (so ``recv fd=7`` also delays poll saying fd 7 is
    readable)."""
    out = Delays()
    applied: list[Injection] = []
    arrivals: list[int] = []
    for inj in injections:
        hit = False
        for fd, kind, path in fds or [(-1, "unknown", None)]:
            if inj.matches(nr, fd, kind, path) or (
                    as_input_nr is not None and inj.kind == "arrival"
                    and inj.matches(as_input_nr, fd, kind, path)):
                hit = True
                break
        if not hit:
            continue
        applied.append(inj)
        if inj.kind == "arrival":
            arrivals.append(inj.delay_ns)
        else:
            out.duration_ns += inj.delay_ns
    # several arrival shifts of one input: the latest wins (each says "arrives then");
    # a negative one alone makes it arrive earlier than recorded
    out.arrival_ns = max(arrivals) if arrivals else 0
    out.applied = tuple(applied)
    return out
