"""Virtual time at the stops: clock reads, waits with timeouts, sleeps and rdtsc.

See ``clock`` for the model: each thread has a virtual ``now`` and a ``shift`` from the
recording; injected delays raise the shift, waiting for outside data lowers it again.
"""

from __future__ import annotations

import errno as errno_mod
import struct
import time

from kprobe.replay_sandbox import clock as vclock
from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox._state import (
    GETRANDOM,
    MASK,
    TSC_PER_NS,
    WAIT_AS_INPUT,
    EngineState,
    Task,
)
from kprobe.replay_sandbox.errors import TracerError
from kprobe.replay_sandbox.injection import delays_for
from kprobe.replay_sandbox.recording import Row
from kprobe.replay_sandbox.syscall_table import (
    SyscallSpec,
    is_error,
    write_outputs,
)

RECVFROM = 45
_MS_TIMEOUT_ARG = {7: 2, 232: 3, 281: 3}  # poll, epoll_wait, epoll_pwait: int ms argument


def _recorded_timeout_ns(nr: int, row: Row) -> int | None:
    """The timeout a recorded wait asked for, when it is a plain argument (ms)."""
    index = _MS_TIMEOUT_ARG.get(nr)
    if index is None or row.args[index] < 0:
        return None
    return int(row.args[index]) * 1_000_000


class TimeServing(EngineState):
    # -- clocks ----------
    def _serve_clock(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                     via_vdso: bool) -> None:
        proc = task.proc
        assert proc is not None
        args = regs.syscall_args()
        nr = spec.nr
        self.stats["clock_reads"] += 1
        if nr == GETRANDOM and args[4] == MASK:  # vgetrandom's parameter query
            self._finish(task, regs, -errno_mod.ENOSYS)
            return
        row = self._skip_sync_rows(task, clock_read=True)
        if row is not None and row.nr == nr and (nr != 228 or self.canonical_clock(
                row.args[0] & MASK) == self.canonical_clock(args[0])):
            if not self._my_turn(task, row):
                self._hold(task)
                return
            task.held = False
            self._consume(task, task.pos)
            self._advance(task, row)
            if nr == GETRANDOM:
                write_outputs(nr, args, row.outs, proc.mem, proc.mem.write)
                self._finish(task, regs, row.ret)
                return
            self._write_clock(task, nr, args, row, None)
            ret = row.ret
            if nr == 201 and not is_error(ret):
                ret += task.shift_ns // vclock.NS
            self._finish(task, regs, ret)
            return
        # not in the recording (a vDSO read an eBPF recording cannot see): synthesize
        self.stats["synthesized"] += 1
        task.synth_clock += 1
        now = task.now_ns + task.synth_clock * vclock.SYNTH_STEP_NS
        if nr == GETRANDOM:
            length = args[1] & 0xFFFF_FFFF
            proc.mem.write(args[0], self.rng.randbytes(length))
            self._finish(task, regs, length)
            return
        ret = self._write_clock(task, nr, args, None, now)
        self._finish(task, regs, ret)

    def _write_clock(self, task: Task, nr: int, args: tuple[int, ...], row: Row | None,
                     now: int | None) -> int:
        """Write a clock value: the recorded one plus the thread's shift, or ``now``."""
        mem = task.process.mem
        shift = task.shift_ns
        if nr == 228:  # clock_gettime(clk, ts)
            clk = P.to_signed(args[0])
            if row is not None:
                timespec = None
                for arg, _offset, data in row.outs:  # the last one, as a dict of them would
                    if arg == 1:
                        timespec = data
                if timespec is None:
                    return row.ret
                value = vclock.unpack_timespec(timespec)
                if not self.domains.learned:
                    self.domains.learn(clk, value, row.ts_ns)
                if shift and vclock.is_shifted(clk):
                    value += shift
            else:
                value = self.domains.value(clk, now or 0, task.synth_clock * 1000)
            if args[1]:
                mem.write(args[1], vclock.pack_timespec(value))
            return row.ret if row else 0
        recorded = {a: d for a, _o, d in row.outs} if row else {}
        if nr == 96:  # gettimeofday(tv, tz)
            if row is not None:
                if 0 in recorded and args[0]:
                    mem.write(args[0], vclock.pack_timeval(
                        vclock.unpack_timeval(recorded[0]) + shift))
                if 1 in recorded and args[1]:
                    mem.write(args[1], recorded[1])
                return row.ret
            if args[0]:
                mem.write(args[0], vclock.pack_timeval(now or 0))
            if args[1]:
                mem.write(args[1], bytes(8))
            return 0
        if nr == 201:  # time(t)
            seconds = (now or 0) // vclock.NS if row is None else row.ret + shift // vclock.NS
            if args[0]:
                mem.write(args[0], struct.pack("<q", seconds))
            return seconds
        if nr == 309:  # getcpu(cpu, node)
            if row is not None:
                write_outputs(nr, args, row.outs, mem, mem.write)
                return row.ret
            for ptr in args[:2]:
                if ptr:
                    mem.write(ptr, bytes(4))
            return 0
        return -errno_mod.ENOSYS

    # -- waits ----------
    def _serve_wait(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                    args: tuple[int, ...]) -> None:
        proc = task.proc
        assert proc is not None
        start = max(task.now_ns, row.ts_ns + task.shift_ns)
        if spec.nr in (35, 230):  # sleeps: no data, only time
            self._advance_sleep(task, spec, row, args, start)
            self._finish(task, regs, row.ret)
            return
        ready = self._ready_fds(task, spec, row, args)
        delays = None
        if self.opts.injections:
            delays = delays_for(self.opts.injections, spec.nr,
                                [self._fd_info(task, fd) for fd in ready],
                                as_input_nr=WAIT_AS_INPUT)
        # a fuzz delay of this row (``ReplayOptions.arrival_delays``) may time it out
        arrival = row.end_ns + (delays.arrival_ns if delays else 0) + self._fuzz_delay(row)
        timeout = vclock.timeout_ns(spec.timeout_kind, args[spec.timeout_arg or 0],
                                    proc.mem.read)
        waited = max(0, arrival - start)
        if row.ret > 0 and timeout is not None and waited > max(timeout, row.dur_ns):
            # the data now arrives after the program stops waiting: it times out, and the
            # recorded result stays due for its next wait
            self._unconsume(task, row)
            task.now_ns = start + timeout
            task.shift_ns = task.now_ns - row.ts_ns
            self.stats["timeouts"] += 1
            if delays is not None:
                for inj in delays.applied:
                    self.injected[inj.text] += 1
            self._clear_wait_result(task, spec, args)
            self._finish(task, regs, 0)
            return
        if row.ret == 0 and not self.exact and spec.nr in (7, 271) and proc.fd_peer:
            # a recorded timeout: with another timeout, a recorded peer may answer in time
            deadline = start + timeout if timeout is not None else 1 << 62
            if self._answer_from_peers(task, regs, args, deadline):
                task.shift_ns = task.now_ns - row.end_ns
                return
        if row.ret == 0 and timeout is not None:  # a recorded timeout, maybe a different one
            # it lasts what it lasted, changed by as much as the timeout asked for changed
            # (the kernel's slack and the wake-up stay as recorded)
            recorded = _recorded_timeout_ns(spec.nr, row)
            task.now_ns = start + (row.dur_ns + timeout - recorded if recorded is not None
                                   else timeout)
            task.shift_ns = task.now_ns - row.end_ns
        else:
            self._advance(task, row, delays, arrival=True)
        if row.outs:
            write_outputs(spec.nr, args, row.outs, proc.mem, proc.mem.write)
        self._finish(task, regs, row.ret)

    def _advance_sleep(self, task: Task, spec: SyscallSpec, row: Row, args: tuple[int, ...],
                       start: int) -> None:
        mem = task.process.mem
        if spec.nr == 35:
            request = vclock.timeout_ns("timespec", args[0], mem.read) or 0
            end = max(start + request, row.end_ns + task.shift_ns)
        else:
            clk, flags = P.to_signed(args[0]), args[1]
            request = vclock.timeout_ns("timespec", args[2], mem.read) or 0
            if flags & 1:  # TIMER_ABSTIME: a deadline; a late thread catches up here
                end = max(start, self.domains.to_epoch(clk, request), row.end_ns)
            else:
                end = max(start + request, row.end_ns + task.shift_ns)
        task.now_ns = end
        task.shift_ns = end - row.end_ns

    def _unconsume(self, task: Task, row: Row) -> None:
        task.pos -= 1
        self.consumed[row.order] = 0
        self.frontier = min(self.frontier, row.order)

    def _ready_fds(self, task: Task, spec: SyscallSpec, row: Row,
                   args: tuple[int, ...]) -> list[int]:
        """Descriptors the recorded wait reported ready."""
        if row.ret <= 0 or not row.outs:
            return []
        outs = {a: d for a, _o, d in row.outs}
        nr = spec.nr
        if nr in (7, 271) and 0 in outs:
            data = outs[0]
            return [fd for fd, _ev, rev in (struct.unpack_from("<ihh", data, i)
                                            for i in range(0, len(data) - 7, 8)) if rev]
        if nr in (23, 270):
            fds: list[int] = []
            for arg in (1, 2, 3):
                bits = int.from_bytes(outs.get(arg, b""), "little")
                fds.extend(i for i in range(bits.bit_length()) if bits >> i & 1)
            return fds
        if nr in (232, 281, 441) and 1 in outs:
            data = outs[1]
            epfd = args[0] & 0xFFFF_FFFF
            mapping = task.process.epoll_fd
            return [mapping.get((epfd, struct.unpack_from("<Q", data, i + 4)[0]), -1)
                    for i in range(0, len(data) - 11, 12)]
        return []

    def _peer_ready(self, task: Task, fds: list[int], deadline_ns: int) -> tuple[list[int], int]:
        """Of ``fds``, those whose peer sends its next bytes by ``deadline_ns`` (virtual),
        and when the first of them does."""
        proc = task.process
        ready: list[tuple[int, int]] = []
        for fd in fds:
            cursor = proc.fd_peer.get(fd)
            sent = cursor.next_ts() if cursor is not None else None
            if sent is None:
                continue
            arrives = sent + task.shift_ns + self._peer_arrival_shift(task, fd)
            if arrives <= deadline_ns:
                ready.append((max(task.now_ns, arrives), fd))
        if not ready:
            return [], 0
        first = min(t for t, _fd in ready)
        return [fd for t, fd in ready if t == first], first

    def _answer_from_peers(self, task: Task, regs: P.UserRegs, args: tuple[int, ...],
                           deadline_ns: int) -> bool:
        """poll/ppoll in a what-if: if a recorded peer of a polled connection sends by the
        deadline, the poll returns then, with those descriptors readable."""
        ready, when = self._peer_ready(task, self._polled_for_input(task, args), deadline_ns)
        if not ready:
            return False
        task.now_ns = when
        self.stats["peer_ready"] += 1
        self._finish(task, regs, self._set_poll_ready(task, args, ready))
        return True

    def _peer_arrival_shift(self, task: Task, fd: int) -> int:
        """``--inject 'recv ...:±D'`` moves a peer's bytes as it moves recorded input."""
        if not self.opts.injections:
            return 0
        delays = delays_for(self.opts.injections, RECVFROM, [self._fd_info(task, fd)])
        for inj in delays.applied:
            self.injected[inj.text] += 1
        return delays.arrival_ns

    def _polled_for_input(self, task: Task, args: tuple[int, ...]) -> list[int]:
        """poll/ppoll: the descriptors asked for POLLIN."""
        count = args[1] & 0xFFFF_FFFF
        data = task.process.mem.read(args[0], count * 8) if args[0] and count else b""
        return [fd for fd, events, _r in (struct.unpack_from("<ihh", data, i * 8)
                                          for i in range(count)) if events & 1]

    def _set_poll_ready(self, task: Task, args: tuple[int, ...], ready: list[int]) -> int:
        """Write revents = POLLIN for ``ready`` (0 for the others); the poll's result."""
        count = args[1] & 0xFFFF_FFFF
        mem = task.process.mem
        data = bytearray(mem.read(args[0], count * 8))
        hits = 0
        for i in range(count):
            fd = struct.unpack_from("<i", data, i * 8)[0]
            hit = fd in ready
            hits += hit
            struct.pack_into("<h", data, i * 8 + 6, 1 if hit else 0)
        mem.write(args[0], bytes(data))
        return hits

    def _clear_wait_result(self, task: Task, spec: SyscallSpec, args: tuple[int, ...]) -> None:
        mem = task.process.mem
        nr = spec.nr
        if nr in (7, 271) and args[0]:
            count = args[1] & 0xFFFF_FFFF
            data = bytearray(mem.read(args[0], count * 8))
            for i in range(count):
                data[i * 8 + 6:i * 8 + 8] = b"\0\0"
            mem.write(args[0], bytes(data))
        elif nr in (23, 270):
            size = ((args[0] & 0xFFFF_FFFF) + 63) // 64 * 8
            for ptr in args[1:4]:
                if ptr:
                    mem.write(ptr, bytes(size))
            if args[4]:
                mem.write(args[4], bytes(16))

    # -- rdtsc ----------
    def _emulate_tsc(self, task: Task) -> bool:
        """PR_TSC_SIGSEGV turned rdtsc/rdtscp into SIGSEGV: answer from virtual time."""
        regs = P.get_regs(task.tid, task.regs)
        proc = task.proc
        try:
            mem = proc.mem if proc is not None else P.TraceeMemory(task.tid)
            code = mem.read(regs.rip, 3)
            if proc is None:
                mem.close()
        except TracerError:
            return False
        if code[:2] == b"\x0f\x31":
            length = 2
        elif code == b"\x0f\x01\xf9":
            length = 3
            regs.rcx = 0  # IA32_TSC_AUX: cpu 0
        else:
            return False
        if proc is None:
            tsc = time.monotonic_ns() * TSC_PER_NS
        else:
            task.synth_clock += 1
            tsc = (self.domains.value(vclock.CLOCK_MONOTONIC, task.now_ns)
                   + task.synth_clock * vclock.SYNTH_STEP_NS) * TSC_PER_NS
        regs.rax = tsc & 0xFFFF_FFFF
        regs.rdx = (tsc >> 32) & 0xFFFF_FFFF
        regs.rip += length
        P.set_regs(task.tid, regs)
        self.stats["rdtsc"] += 1
        return True

