"""Timing perturbations of a recording, and the outcome of one perturbed replay.

Two kinds of perturbation (both small, both bounded by the fuzz's ``max_delay``):

* ``Delay``: one recorded input (a row that waited for data from outside: a poll/select/
  epoll result that reported data, a read or receive on a socket or pipe, an accept, a
  connect) arrives ``delay_ns`` later. The engine applies it where it computes arrivals
  (``ReplayOptions.arrival_delays``): a wait with a timeout may now time out.
* ``Swap``: two rows adjacent in the recorded cross-thread order, of two threads, recorded
  at most ``max_delay`` apart, are served the other way round. This needs no engine
  support: the replay follows ``Row.order``, so a copy of the recording with the two
  orders exchanged is replayed. Only rows served from the log are swapped (never calls
  that run for real, such as futex, close or clone: their order is the kernel's to keep).

``replay_outcome`` is the unit of work (a plain function of its inputs, so it can run in
this process, a worker process or a Ray task): one replay, reduced to an ``Outcome``.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from kprobe.replay_sandbox import clock as vclock
from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.errors import ReplaySandboxError
from kprobe.replay_sandbox.recording import Recording, Row
from kprobe.replay_sandbox.report import expectation_held
from kprobe.replay_sandbox.syscall_table import (
    READ_FAMILY,
    SOCKET_CREATORS,
    SPECS,
    Policy,
    fd_of,
)

MS = 1_000_000
_WAITS_FOR_DATA = frozenset({7, 271, 23, 270, 232, 281, 441})  # poll ... epoll_pwait2
_CONNECT, _ACCEPTS = 42, frozenset({43, 288})
_OPENS = frozenset({2, 257, 85, 437})
_PIPES = frozenset({22, 293})
_DUPS = frozenset({32, 33, 292})
_CLOSE, _FCNTL, _SOCKETPAIR = 3, 72, 53
_F_DUPFD = frozenset({0, 1030})
_SWAPPABLE = frozenset({Policy.SERVE, Policy.OUTPUT, Policy.WAIT, Policy.CLOCK})
# Sampling. An input waited for with a timeout, recorded closer to that timeout than the
# largest delay ("at risk"), can turn the wait into a timeout: it is perturbed ten times
# as often as other inputs and swaps (which act only through clocks and order), and its
# delay mostly goes past its slack (a smaller one cannot time the wait out). Sets stay
# sparse on purpose: arrivals are absolute in the engine, so a delayed input makes the
# thread late and absorbs smaller delays of the inputs after it.
AT_RISK_WEIGHT, OTHER_WEIGHT = 1.0, 0.1
BEYOND_SLACK = 0.75  # share of at-risk delays drawn between the slack and the bound
PREVIEW_BYTES = 4096  # of each output, kept to show how an outcome differs


@dataclass(frozen=True, order=True)
class Delay:
    """The input of recorded row (tid, seq) arrives ``delay_ns`` later."""

    tid: int
    seq: int
    delay_ns: int

    @property
    def row(self) -> tuple[int, int]:
        return (self.tid, self.seq)


@dataclass(frozen=True, order=True)
class Swap:
    """Rows ``first`` and ``second`` ((tid, seq), adjacent in the recorded cross-thread
    order, ``first`` before) are served ``second`` first."""

    first: tuple[int, int]
    second: tuple[int, int]


Perturbation = Delay | Swap


@dataclass(frozen=True)
class Input:
    """A recorded row that waited for data from outside: where a ``Delay`` can go."""

    tid: int
    seq: int
    name: str
    fds: tuple[int, ...]  # the descriptor(s) the data came on, when known
    waited_ns: int  # how long the call took in the recording
    slack_ns: int | None  # its timeout minus that wait; None: no timeout (or unknown)

    @property
    def row(self) -> tuple[int, int]:
        return (self.tid, self.seq)

    def at_risk(self, max_delay_ns: int) -> bool:
        """A delay within the bound can push it past its timeout."""
        return self.slack_ns is not None and self.slack_ns < max_delay_ns

    def describe(self) -> str:
        fds = ",".join(str(fd) for fd in self.fds) or "?"
        text = f"thread {self.tid} seq {self.seq} {self.name}(fd {fds}), waited " \
               f"{self.waited_ns / MS:.1f} ms"
        if self.slack_ns is not None:
            text += f", {self.slack_ns / MS:.1f} ms before its timeout"
        return text


# -- where perturbations can go ----------
def find_inputs(recording: Recording) -> list[Input]:
    """The rows whose arrival the engine computes, in recorded order.

    Reads and receives count only on sockets and pipes (a file's bytes are there when
    asked for), as in the engine; descriptor kinds are followed through the recording."""
    rows = sorted((r for rows in recording.threads.values() for r in rows),
                  key=lambda r: r.order)
    kinds: dict[int, str] = {}
    found: list[Input] = []
    for row in rows:
        if row.ret >= 0 and _waits_for_data(row, kinds):
            found.append(Input(row.tid, row.seq, row.name, _input_fds(row), row.dur_ns,
                               _slack(row)))
        _follow_fds(row, kinds)
    return found


def _waits_for_data(row: Row, kinds: dict[int, str]) -> bool:
    nr = row.nr
    if nr in _WAITS_FOR_DATA:
        return row.ret > 0  # a recorded timeout had no data to move
    if nr == _CONNECT or nr in _ACCEPTS:
        return True
    return nr in READ_FAMILY and kinds.get(fd_of(nr, row.args)) in ("socket", "pipe")


def _follow_fds(row: Row, kinds: dict[int, str]) -> None:
    """Descriptor kinds after ``row`` (the engine's ``_track_fds``, without a tracee)."""
    nr, ret = row.nr, row.ret
    if ret < 0:
        return
    if nr == _CLOSE:
        kinds.pop(row.args[0] & 0xFFFF_FFFF, None)
    elif nr in SOCKET_CREATORS and nr != _SOCKETPAIR:
        kinds[ret] = "socket"
    elif nr in _OPENS:
        kinds[ret] = "file"
    elif nr in _PIPES or nr == _SOCKETPAIR:
        for _arg, _offset, data in row.outs[:1]:
            if len(data) >= 8:
                for fd in struct.unpack_from("<ii", data):
                    kinds[fd] = "pipe" if nr in _PIPES else "socket"
    elif nr in _DUPS or (nr == _FCNTL and (row.args[1] & 0xFFFF_FFFF) in _F_DUPFD):
        kinds[ret] = kinds.get(row.args[0] & 0xFFFF_FFFF, "unknown")


def _input_fds(row: Row) -> tuple[int, ...]:
    if row.nr in (7, 271):  # the pollfds that reported events
        data = next((d for a, _o, d in row.outs if a == 0), b"")
        return tuple(fd for fd, _ev, revents in (struct.unpack_from("<ihh", data, i)
                                                 for i in range(0, len(data) - 7, 8))
                     if revents)
    return (row.fd,) if row.fd >= 0 else ()


def _slack(row: Row) -> int | None:
    """How much later the data could have come before the wait timed out (recorded)."""
    nr = row.nr
    spec = SPECS[nr]
    if nr not in _WAITS_FOR_DATA or spec.timeout_arg is None:
        return None
    if spec.timeout_kind == "ms":
        timeout = vclock.timeout_ns("ms", row.args[spec.timeout_arg], None)
        return None if timeout is None else timeout - row.dur_ns
    # ppoll, select and pselect6 write the time left back into their timeout argument
    left = next((d for a, _o, d in row.outs if a == spec.timeout_arg), None)
    if left is None or len(left) < 16:
        return None
    return (vclock.unpack_timeval(left) if spec.timeout_kind == "timeval"
            else vclock.unpack_timespec(left))


def find_swaps(recording: Recording, max_gap_ns: int) -> list[Swap]:
    """Adjacent rows of two threads, both served from the log, recorded within
    ``max_gap_ns`` of each other: orders a small timing change could have produced."""
    if len(recording.threads) < 2:
        return []
    rows = sorted((r for rows in recording.threads.values() for r in rows),
                  key=lambda r: r.order)
    swaps: list[Swap] = []
    for a, b in zip(rows, rows[1:]):
        if a.tid == b.tid or SPECS[a.nr].policy not in _SWAPPABLE \
                or SPECS[b.nr].policy not in _SWAPPABLE:
            continue
        if abs(b.end_ns - a.end_ns) <= max_gap_ns:
            swaps.append(Swap((a.tid, a.seq), (b.tid, b.seq)))
    return swaps


# -- sampling ----------
def sample(seed: int, run: int, inputs: Sequence[Input], swaps: Sequence[Swap],
           max_delay_ns: int) -> tuple[Perturbation, ...]:
    """The perturbations of perturbed replay number ``run``: the same for the same seed,
    whatever the number of runs or workers.

    Swarm sampling (Groce et al., ISSTA 2012): each run draws its own density, then
    perturbs each site with that probability times its weight (see ``AT_RISK_WEIGHT``), so
    some runs perturb a single input and others several. Delays are uniform in
    (0, max_delay] in steps of max_delay/1000, or for an at-risk input mostly in
    (slack, max_delay]. Every run perturbs at least one site."""
    rng = random.Random(f"kprobe-fuzz/{seed}/{run}")
    density = rng.random()
    chosen: list[Perturbation] = []
    weights: list[float] = []
    sites: list[Perturbation] = []
    for item in inputs:
        at_risk = item.at_risk(max_delay_ns)
        weight = AT_RISK_WEIGHT if at_risk else OTHER_WEIGHT
        take = rng.random() < density * weight
        low = 0
        if at_risk and rng.random() < BEYOND_SLACK:  # a delay within the slack cannot time
            low = max(0, item.slack_ns or 0)         # the wait out: mostly go beyond it
        delay = Delay(item.tid, item.seq,
                      max(1, low + (max_delay_ns - low) * rng.randint(1, 1000) // 1000))
        sites.append(delay)
        weights.append(weight)
        if take:
            chosen.append(delay)
    for swap in swaps:
        sites.append(swap)
        weights.append(OTHER_WEIGHT)
        if rng.random() < density * OTHER_WEIGHT:
            chosen.append(swap)
    if not chosen and sites:
        chosen.append(rng.choices(sites, weights)[0])
    return tuple(chosen)


# -- applying them ----------
@dataclass
class _Reordered(Recording):
    """A recording with some cross-thread orders exchanged; its outputs (what a replay is
    compared with) stay those of the original order."""

    original_outputs: dict[int, bytes] = field(default_factory=dict)
    original_gaps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def output_streams(self, pid: int | None = None) -> tuple[
            dict[int, bytes], dict[int, list[tuple[int, int]]]]:
        if pid is None or pid == self.process.pid:
            return self.original_outputs, self.original_gaps
        return super().output_streams(pid)


def perturbed(recording: Recording, options: ReplayOptions,
              perturbations: Sequence[Perturbation]) -> tuple[Recording, ReplayOptions]:
    """The recording and options that replay ``perturbations``."""
    delays = {p.row: p.delay_ns for p in perturbations if isinstance(p, Delay)}
    swaps = sorted((p for p in perturbations if isinstance(p, Swap)),
                   key=lambda s: _order_of(recording, s.first))
    options = replace(options, arrival_delays={**options.arrival_delays, **delays})
    if not swaps:
        return recording, options
    by_key = {(r.tid, r.seq): r for rows in recording.threads.values() for r in rows}
    order = {key: row.order for key, row in by_key.items()}
    at = {o: key for key, o in order.items()}
    for swap in swaps:
        # applied one after another on the current order: two overlapping swaps move a
        # row two places; a swap that would now exchange rows of one thread is dropped
        k = order[swap.first]
        a, b = at.get(k), at.get(k + 1)
        if a is None or b is None or a[0] == b[0]:
            continue
        order[a], order[b] = k + 1, k
        at[k], at[k + 1] = b, a
    threads = {tid: [r if order[(r.tid, r.seq)] == r.order
                     else replace(r, order=order[(r.tid, r.seq)]) for r in rows]
               for tid, rows in recording.threads.items()}
    outputs, gaps = recording.output_streams()
    copy = _Reordered(recording.process, threads, recording.total_rows,
                      recording.initial_fds, recording.real_paths, recording.mono_to_epoch_ns,
                      recording.peers, original_outputs=outputs, original_gaps=gaps)
    return copy, options


def _order_of(recording: Recording, key: tuple[int, int]) -> int:
    tid, seq = key
    return next(r.order for r in recording.threads.get(tid, []) if r.seq == seq)


# -- the outcome of one replay ----------
@dataclass(frozen=True)
class Expectation:
    """What the user expects of the replay (``--expect-exit`` / ``--expect-output-match``);
    none given: the outcome is what the program did (exit and every output's bytes)."""

    exit_code: int | None = None
    output_match: bool = False

    @property
    def given(self) -> bool:
        return self.exit_code is not None or self.output_match


@dataclass(frozen=True)
class Outcome:
    """What one replay came to, reduced to what decides a flip (``key``)."""

    status: str
    exit_code: int | None
    exit_signal: int | None
    digests: tuple[tuple[int, str], ...]  # (fd, sha256 of all it wrote)
    held: bool  # the expectation (or, none given, the replay's default one)
    expectation_given: bool
    relaxed: int = 0  # times the engine had to relax the cross-thread order
    error: str | None = None  # the replay could not run (not an outcome of the program)
    wall_s: float = 0.0
    previews: tuple[tuple[int, bytes], ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[object, ...]:
        if self.expectation_given:
            return ("held", self.held)
        return (self.status, self.exit_code, self.exit_signal, self.digests)

    def describe(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        how = (f"killed by signal {self.exit_signal}" if self.exit_signal is not None
               else f"exit {self.exit_code}")
        text = f"{self.status}, {how}"
        if self.expectation_given:
            text += ", expectation " + ("held" if self.held else "failed")
        return text


def replay_outcome(recording: Recording, options: ReplayOptions,
                   perturbations: Sequence[Perturbation], expectation: Expectation,
                   slot: int | None = None, timeout_s: float | None = None) -> Outcome:
    """Replay with ``perturbations`` and reduce the report to an ``Outcome``.

    ``slot`` numbers the replays running at the same time on one machine: each pins its
    tracer and tracee to its own CPU (a shared one would serialise them). A replay that
    cannot run (sandbox, tracer) is an outcome with ``error`` set, so that one bad replay
    does not end a campaign."""
    rec, opts = perturbed(recording, options, perturbations)
    if slot is not None:
        cpus = sorted(os.sched_getaffinity(0))
        opts = replace(opts, cpu=cpus[slot % len(cpus)])
    if timeout_s is not None:
        opts = replace(opts, timeout_s=timeout_s)
    started = time.perf_counter()
    try:
        report = replay(rec, opts)
    except ReplaySandboxError as err:
        return Outcome("error", None, None, (), False, expectation.given, error=str(err),
                       wall_s=time.perf_counter() - started)
    outputs = report.replayed_outputs
    return Outcome(
        status=report.status, exit_code=report.exit_code, exit_signal=report.exit_signal,
        digests=tuple((fd, hashlib.sha256(data).hexdigest()[:16])
                      for fd, data in sorted(outputs.items())),
        held=expectation_held(report, expectation.exit_code, expectation.output_match),
        expectation_given=expectation.given, relaxed=int(report.stats.get("relaxed", 0)),
        wall_s=time.perf_counter() - started,
        previews=tuple((fd, data[:PREVIEW_BYTES]) for fd, data in sorted(outputs.items())))
