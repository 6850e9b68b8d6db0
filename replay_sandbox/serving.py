"""Serving I/O at the stops: results from the log, outputs kept, descriptors kept in sync,
and (what-if) answers for calls the recording does not have.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
import sys
from collections.abc import Callable

from kprobe.replay_sandbox import clock as vclock
from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox._state import (
    FCNTL,
    LIVE_OPENS,
    MASK,
    StopReplay,
    Task,
)
from kprobe.replay_sandbox.errors import TracerError
from kprobe.replay_sandbox.injection import FdKind, delays_for
from kprobe.replay_sandbox.peers import PeerCursor
from kprobe.replay_sandbox.recording import Row
from kprobe.replay_sandbox.syscall_table import (
    CLONES,
    EVENTFD2,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    O_CLOEXEC,
    O_NONBLOCK,
    Policy,
    SyscallSpec,
    fd_of,
    is_error,
    write_outputs,
)
from kprobe.replay_sandbox.timing import TimeServing

PAYLOAD_CAP_MAX = 16 << 20  # the recorder's largest --payload-cap


def _size(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 and not n % (1 << 20) else f"{n >> 10}K"


DUP3 = 292
CLOSE = 3
CLONE_THREAD = 0x10000
WNOHANG = 1  # wait4 and waitid options
AT_FDCWD = (1 << 64) - 100  # -100, as a register holds it
RESTARTS = frozenset({-512, -513, -514, -516})  # ERESTART*: the kernel restarts the call
_TRACE = bool(os.environ.get("KPROBE_REPLAY_TRACE"))
CONNECT = 42
RECEIVES = frozenset({0, 17, 45})  # read, pread64, recvfrom: flat buffers a peer fills
_LOWEST_FREE = frozenset({32, FCNTL})  # dup, fcntl(F_DUPFD): the kernel picks the number


class IoServing(TimeServing):
    def _serve_row(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                   args: tuple[int, ...]) -> None:
        proc = task.proc
        assert proc is not None
        if row.outs:
            write_outputs(spec.nr, args, row.outs, proc.mem, proc.mem.write)
        if row.truncated:
            self._served_cut(task, row)
        if spec.nr == FCNTL and (args[1] & 0xFFFF_FFFF) in (F_DUPFD, F_DUPFD_CLOEXEC):
            self._run_real(task, regs, spec, row, args)  # F_DUPFD changes the fd table
            return
        fd = fd_of(spec.nr, args) if spec.fd_arg is not None else -1
        if spec.nr == CONNECT and (row.tid, row.seq) in self.rec.peers:
            proc.fd_peer[fd] = PeerCursor(self.rec.peers[(row.tid, row.seq)])
        elif spec.nr in RECEIVES and fd in proc.fd_peer and row.ret > 0:
            proc.fd_peer[fd].consume(row.ret)  # read as recorded: the peer's next bytes
        delays = None
        if self.opts.injections:
            delays = delays_for(self.opts.injections, spec.nr, [self._fd_info(task, fd)])
        kind = proc.fd_kind.get(fd, "unknown")
        self._advance(task, row, delays, arrival=kind in ("socket", "pipe") or spec.nr == 42)
        self._track_fds(task, row, args)
        self._finish(task, regs, row.ret)

    def _served_cut(self, task: Task, row: Row) -> None:
        """A call served with less than it had: say exactly which, and how to record it
        whole (the first few; the rest are counted)."""
        self.stats["truncated"] += 1
        if self.first_cut is None:
            self.first_cut = (task.rec_tid, row.seq)
        if self.stats["truncated"] > 3:
            return
        where = f"thread {task.rec_tid} seq {row.seq} {row.name}"
        fd = row.fd if row.fd >= 0 else None
        if fd is not None:
            path = row.path or task.process.fd_path.get(fd)
            where += f"(fd {fd}{', ' + path if path else ''})"
        if row.cut is None:
            self.notes.append(f"{where}: served with a payload the recorder cut")
            return
        arg, held, total, why = row.cut
        if "payload-cap" in why:
            need = 1 << max(16, (total - 1).bit_length())
            how = (f"record with --payload-cap {_size(need)} or more" if need <= PAYLOAD_CAP_MAX
                   else f"it is over the largest --payload-cap ({_size(PAYLOAD_CAP_MAX)})")
        elif "changed" in why:
            how = ("record with --file-reads bytes --payload-cap "
                   f"{_size(1 << max(16, (total - 1).bit_length()))} to keep its bytes")
        else:
            how = "replay it while the lake still holds that hour"
        self.notes.append(f"{where}: served {held} of the {total} bytes it read ({why}); "
                          f"{how}")

    def _serve_output(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                      args: tuple[int, ...]) -> None:
        fd = fd_of(spec.nr, args)
        if not self.exact:
            ret = self._take_output(task, spec, args)
        elif row.ret > 0 and self._output_room(task, fd) < row.ret:
            # past the output caps: only counted, neither kept whole nor compared
            self._keep_output(task, fd, self._read_in(task, spec, 1, args,
                                                      self._output_room(task, fd)), row.ret)
            ret = row.ret
        elif row.ret > 0:
            ret = row.ret
            recorded = row.ins.get(1)
            data = self._read_in(task, spec, 1, args, ret)
            if recorded is not None and data != recorded \
                    and not (row.truncated and data.startswith(recorded)):
                # other bytes (the report compares the streams): the whole of what the
                # program offered is taken, as a file or an idle socket would
                ret = self._take_output(task, spec, args)
                self.stats["outputs_differ"] += 1
            else:
                self._keep_output(task, fd, data, ret)
        else:
            ret = row.ret
        delays = None
        if self.opts.injections:
            delays = delays_for(self.opts.injections, spec.nr, [self._fd_info(task, fd)])
        self._advance(task, row, delays)
        self._finish(task, regs, ret)

    def _serve_new_fd(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                      args: tuple[int, ...]) -> None:
        delays = None
        if self.opts.injections and spec.nr in (43, 288):
            delays = delays_for(self.opts.injections, spec.nr,
                                [self._fd_info(task, fd_of(spec.nr, args))])
        self._advance(task, row, delays, arrival=spec.nr in (43, 288))
        if is_error(row.ret):
            self._finish(task, regs, row.ret)
            return
        saved = args
        if not row.open_for_real:
            flags = args[spec.new_fd_flags_arg] if spec.new_fd_flags_arg is not None else 0
            regs.orig_rax = EVENTFD2
            regs.rdi = 0
            regs.rsi = flags & (O_CLOEXEC | O_NONBLOCK)
            P.set_regs(task.tid, regs)
        elif row.path is not None and spec.nr in (2, 257, 437):
            # the file the kernel opened when recorded, by its absolute path: the program's
            # own path may be relative to a directory it changed to (chdir is served, not
            # performed) or to a descriptor that is a placeholder here
            self._open_path(task, regs, spec.nr, args, row.path)

        cloexec = bool(args[spec.new_fd_flags_arg] & O_CLOEXEC) \
            if spec.new_fd_flags_arg is not None else False

        def finish(task: Task, regs: P.UserRegs) -> None:
            regs.set_syscall_args(saved)
            regs.rax = row.ret & MASK
            if row.outs:
                write_outputs(spec.nr, saved, row.outs, task.process.mem,
                              task.process.mem.write)
            P.set_regs(task.tid, regs)
            self._track_fds(task, row, saved)

        def done(task: Task, regs: P.UserRegs) -> None:
            got = P.to_signed(regs.rax)
            if got < 0:
                path = row.ins.get(1) or row.ins.get(0)
                what = (f"opening {path.decode(errors='replace')} for real failed ({got})"
                        if row.open_for_real and path else f"the sandbox failed ({got})")
                self._inconsistent(task, row, f"{spec.name}: expected fd {row.ret}, {what}")
                finish(task, regs)
            elif got != row.ret:
                self._renumber(task, got, row, cloexec, finish)
            else:
                finish(task, regs)

        task.at_exit = done
        self._resume(task)

    def _open_path(self, task: Task, regs: P.UserRegs, nr: int, args: tuple[int, ...],
                   path: str) -> None:
        """Point the open at ``path`` (written below the stack's red zone, where nothing
        the program keeps lives during the call); its registers are restored at its exit."""
        raw = path.encode(errors="surrogateescape") + b"\0"
        where = (regs.rsp - 16384 - len(raw)) & ~15
        task.process.mem.write(where, raw)
        new = list(args)
        if nr == 2:  # open(path, flags, mode)
            new[0] = where
        else:  # openat / openat2 (dirfd, path, ...)
            new[0], new[1] = AT_FDCWD, where
        regs.set_syscall_args(new)
        P.set_regs(task.tid, regs)

    # -- descriptor numbers ----------
    def _renumber(self, task: Task, got: int, row: Row, cloexec: bool,
                  finish: Callable[[Task, P.UserRegs], None]) -> None:
        """The kernel gave ``got`` where the recording has ``row.ret``: move it there.

        Timestamps cannot order an open and another thread's close whose calls overlap
        (the kernel picks the number mid-call), so the replay may meet the number still
        taken, or already free. The recorded number is the truth: the tracee is made to
        run dup3(got, N) and close(got); if N is still held (by a close not replayed yet),
        the thread waits at its stop, with the order released, until it is free."""
        wanted = row.ret

        def move(task: Task) -> None:
            self.stats["renumbered"] += 1
            self._inject(task, [(DUP3, (got, wanted, O_CLOEXEC if cloexec else 0, 0, 0, 0)),
                                (CLOSE, (got, 0, 0, 0, 0, 0))], finish)

        def give_up(task: Task) -> None:
            self._inconsistent(task, row, f"{row.name}: expected fd {wanted}, the sandbox "
                                          f"gave {got} and {wanted} stayed taken")
            finish(task, task.regs)

        if self._fd_is_open(task, wanted) and task.process.threads <= 1:
            give_up(task)  # no other thread can free it
        elif self._fd_is_open(task, wanted):
            task.fd_wait = (wanted, move, give_up)
            self._release_token(task)  # the thread that frees it must run
        else:
            move(task)

    def _fd_is_open(self, task: Task, fd: int) -> bool:
        return os.path.lexists(f"/proc/{task.tid}/fd/{fd}")

    def _inject(self, task: Task, calls: list[tuple[int, tuple[int, ...]]],
                finish: Callable[[Task, P.UserRegs], None]) -> None:
        """At a syscall-exit stop: make the tracee run ``calls`` one by one (rewinding to
        its ``syscall`` instruction), then restore its registers and call ``finish``."""
        saved = P.UserRegs.from_buffer_copy(task.regs)
        pending = list(calls)

        def step(task: Task, regs: P.UserRegs) -> None:
            if pending:
                nr, args = pending.pop(0)
                call = P.UserRegs.from_buffer_copy(saved)
                call.rip = saved.rip - 2  # the 2-byte syscall instruction just executed
                call.rax = call.orig_rax = nr
                call.set_syscall_args(args)
                P.set_regs(task.tid, call)
                task.injecting = True
                task.at_exit = step
                return
            task.injecting = False
            P.set_regs(task.tid, saved)
            finish(task, saved)

        step(task, saved)

    def _run_real(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                  args: tuple[int, ...]) -> None:
        self._advance(task, row)
        if spec.nr in CLONES:
            task.pending_child_rec = row.ret
            # the program lives among recorded pids (getpid is served): its child is the
            # recorded one (waits, kills translate; the sandbox's pid never shows)
            renumber = row.ret > 0 and self._makes_process(task, spec.nr, args)

            def returned(task: Task, regs: P.UserRegs) -> None:
                # always stopped at: a fork a signal interrupts is restarted (_undo)
                if renumber and P.to_signed(regs.rax) > 0:
                    regs.rax = row.ret
                    P.set_regs(task.tid, regs)

            task.at_exit = returned
            self._resume(task)
            return
        if spec.nr == 3:  # close: nothing to check that matters, save the exit stop
            task.process.fd_kind.pop(args[0] & 0xFFFF_FFFF, None)
            task.process.fd_peer.pop(args[0] & 0xFFFF_FFFF, None)
            self._resume(task)
            return

        def finish(task: Task, regs: P.UserRegs) -> None:
            regs.rax = row.ret & MASK
            P.set_regs(task.tid, regs)
            self._track_fds(task, row, args)

        def done(task: Task, regs: P.UserRegs) -> None:
            got = P.to_signed(regs.rax)
            if spec.nr in _LOWEST_FREE and got >= 0 and row.ret >= 0 and got != row.ret:
                cloexec = spec.nr == FCNTL and (args[1] & 0xFFFF_FFFF) == F_DUPFD_CLOEXEC
                self._renumber(task, got, row, cloexec, finish)
                return
            if got != row.ret and not (is_error(got) and is_error(row.ret)):
                self._inconsistent(task, row, f"{spec.name} returned {got} for real, "
                                              f"recorded {row.ret}")
            self._track_fds(task, row, args)

        task.at_exit = done
        self._resume(task)

    def _makes_process(self, task: Task, nr: int, args: tuple[int, ...]) -> bool:
        """fork, vfork, or a clone without CLONE_THREAD."""
        if nr in (57, 58):
            return True
        if nr == 56:
            return not args[0] & CLONE_THREAD
        try:  # clone3: flags are the first u64 of struct clone_args
            flags = struct.unpack("<Q", task.process.mem.read(args[0], 8))[0]
        except (TracerError, struct.error):
            return False
        return not flags & CLONE_THREAD

    def _on_wait_child(self, task: Task, regs: P.UserRegs) -> None:
        """wait4 / waitid, for real: the program waits for the child the recording
        reaped (its recorded pid, or -1 made that pid: the same order of reaping), blocks
        for real without the run token, and sees recorded pids and the recorded rusage."""
        nr = regs.orig_rax
        args = regs.syscall_args()
        row, task.restart_row = task.restart_row, None  # restarted after a signal
        head = self._skip_sync_rows(task) if row is None else None
        if head is not None and head.nr == nr:
            row = head
            self._consume(task, task.pos)
        if row is not None and row.ret < 0 or (row is not None and nr == 61 and row.ret == 0):
            # nothing was reaped then (WNOHANG, ECHILD): nothing is reaped now
            self._advance(task, row)
            if row.outs:
                write_outputs(nr, args, row.outs, task.process.mem, task.process.mem.write)
            self._finish(task, regs, row.ret)
            return
        reaped = self._recorded_reaped(nr, row)
        new = list(args)
        if nr == 61:
            low = args[0] & 0xFFFF_FFFF  # pid_t: the low 32 bits, signed
            pid = low - (1 << 32) if low >= 1 << 31 else low
            if pid > 0:
                new[0] = self.rec_to_ns.get(pid, pid)
            elif pid == -1 and reaped in self.rec_to_ns:
                new[0] = self.rec_to_ns[reaped]
        elif args[0] == 1:  # waitid(P_PID, id)
            new[1] = self.rec_to_ns.get(args[1] & 0xFFFF_FFFF, args[1])
        elif args[0] == 0 and reaped in self.rec_to_ns:  # waitid(P_ALL)
            new[0], new[1] = 1, self.rec_to_ns[reaped]
        options = 2 if nr == 61 else 3
        if reaped is not None and new[options] & WNOHANG:
            # the recording's poll found the child gone; the replay reaches the poll
            # sooner (its sleeps are virtual) while the child still runs for real: wait
            # for it, so the poll finds it gone here too
            new[options] &= ~WNOHANG
        if new != list(args):
            regs.set_syscall_args(new)
            P.set_regs(task.tid, regs)
        if _TRACE:
            print(f"wait tid={task.rec_tid} nr={nr} args={[hex(a) for a in args[:3]]} -> "
                  f"{[hex(a) for a in new[:3]]} row={row and (row.seq, row.ret)} "
                  f"reaped={reaped} map={self.rec_to_ns}", file=sys.stderr)
        self.stats["child_waits"] += 1
        task.in_wait = True
        self._release_token(task)

        def returned(task: Task, regs: P.UserRegs) -> None:
            task.in_wait = False
            got = P.to_signed(regs.rax)
            if _TRACE:
                print(f"wait returned {got}", file=sys.stderr)
            if got in RESTARTS:  # a signal came first: the same wait, again, after it
                task.restart_row = row
                regs.set_syscall_args(args)
                P.set_regs(task.tid, regs)
                return
            to_rec = {ns: rec for rec, ns in self.rec_to_ns.items()}
            if nr == 61 and got > 0:
                regs.rax = to_rec.get(got, got)
                if row is not None and reaped is not None and regs.rax != reaped:
                    self._inconsistent(task, row, f"wait4 reaped {regs.rax}, recorded {reaped}")
            regs.set_syscall_args(args)
            P.set_regs(task.tid, regs)
            if row is not None and got >= 0:
                # the recorded rusage (and status, as the child's exit is checked apart)
                write_outputs(nr, args, [o for o in row.outs if o[0] in (3, 4)],
                              task.process.mem, task.process.mem.write)
                if nr == 247:
                    write_outputs(nr, args, [o for o in row.outs if o[0] == 2],
                                  task.process.mem, task.process.mem.write)
            if row is not None:
                self._advance(task, row)

        task.at_exit = returned
        self._resume(task)

    def _recorded_reaped(self, nr: int, row: Row | None) -> int | None:
        """The recorded pid a recorded wait4 / waitid reaped."""
        if row is None:
            return None
        if nr == 61:
            return row.ret if row.ret > 0 else None
        for arg, offset, data in row.outs:  # waitid: siginfo's si_pid (offset 16)
            if arg == 2 and offset == 0 and len(data) >= 20:
                pid = int(struct.unpack_from("<i", data, 16)[0])
                return pid or None
        return None

    def _serve_signal(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                      args: tuple[int, ...]) -> None:
        """kill/tkill/tgkill at recorded pids: send it for real to the sandbox's ids."""
        self._advance(task, row)
        pid_args = {62: (0,), 200: (0,), 234: (0, 1)}[spec.nr]
        new = list(args)
        ours = set(self.rec_to_ns.values())
        for i in pid_args:
            rec_id = P.to_signed(args[i])
            if rec_id in ours and rec_id not in self.rec_to_ns:
                continue  # a sandbox id the program got from the kernel (a pthread's tid)
            if rec_id not in self.rec_to_ns:
                self._finish(task, regs, row.ret)  # not ours: do not signal the host
                return
            new[i] = self.rec_to_ns[rec_id]
        regs.set_syscall_args(new)
        P.set_regs(task.tid, regs)

        def done(task: Task, regs: P.UserRegs) -> None:
            regs.set_syscall_args(args)
            P.set_regs(task.tid, regs)

        task.at_exit = done
        self._resume(task)

    def _serve_map(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                   args: tuple[int, ...]) -> None:
        """mmap, for real, at the address the recording's got: the program finds the
        address space it had (a runtime that reads /proc/self/maps, served from the
        recording, or that chooses its next hint from the last result, takes the recorded
        path). MAP_FIXED_NOREPLACE never takes over what the replay has there; if that
        place is taken, the call runs as the program made it, and the report says so."""
        if is_error(row.ret):
            self._finish(task, regs, row.ret)  # recorded failure: nothing is mapped
            return
        flags = args[3] & 0xFFFF_FFFF
        placed = not flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) and args[0] != row.ret
        if placed:
            new = list(args)
            new[0] = row.ret
            new[3] = flags | MAP_FIXED_NOREPLACE
            regs.set_syscall_args(new)
            P.set_regs(task.tid, regs)

        def done(task: Task, regs: P.UserRegs) -> None:
            got = P.to_signed(regs.rax)
            if got == row.ret:
                if placed:
                    regs.set_syscall_args(args)
                    P.set_regs(task.tid, regs)
                return
            self.stats["maps_elsewhere"] += 1
            if placed and got == -errno_mod.EEXIST:  # taken: again, as the program asked,
                # and the program gets that call's result (and its own arguments back)
                call = P.UserRegs.from_buffer_copy(regs)
                call.rip = regs.rip - 2  # the 2-byte syscall instruction just executed
                call.rax = call.orig_rax = spec.nr
                call.set_syscall_args(args)
                P.set_regs(task.tid, call)
                task.injecting = True

                def again(task: Task, regs: P.UserRegs) -> None:
                    task.injecting = False
                    self._mapped_elsewhere(task, row, P.to_signed(regs.rax))

                task.at_exit = again
                return
            self._mapped_elsewhere(task, row, got)

        task.at_exit = done
        self._resume(task)

    def _mapped_elsewhere(self, task: Task, row: Row, got: int) -> None:
        if self.stats["maps_elsewhere"] > 3:
            return
        if got == -errno_mod.ENOMEM:
            why = (f"the sandbox's address-space limit (RLIMIT_AS "
                   f"{self.opts.limits.address_space >> 30} GiB) refused it")
        elif is_error(got):
            why = f"it failed: {errno_mod.errorcode.get(-got, got)}"
        else:
            why = f"placed at {got:#x}: that place is taken in the replay"
        self.notes.append(f"thread {task.rec_tid} seq {row.seq}: mmap of {row.args[1]} bytes, "
                          f"recorded at {row.ret:#x}: {why}")

    # -- what-if: the peer's recorded bytes ----------
    def _serve_from_peer(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                         args: tuple[int, ...]) -> None:
        """A read the recording does not have, on a connection whose peer was recorded:
        the peer's next bytes, once the (virtual) clock reaches the time it sent them;
        nothing more to come is end of input, as when the peer closed."""
        proc = task.process
        cursor = proc.fd_peer[fd_of(spec.nr, args)]
        self.stats["synthesized"] += 1
        self.stats["peer_reads"] += 1
        sent = cursor.next_ts()
        moved = self._peer_arrival_shift(task, fd_of(spec.nr, args))
        if sent is not None and sent + task.shift_ns + moved > task.now_ns:
            task.now_ns = sent + task.shift_ns + moved  # blocks until the bytes arrive
        data = cursor.take(args[2] & 0xFFFF_FFFF, task.now_ns - task.shift_ns - moved)
        if data:
            proc.mem.write(args[1], data)
            self.peer_bytes += len(data)
        self._finish(task, regs, len(data))

    # -- synthesized results (what-if) ----------
    def _on_live_fd(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                    args: tuple[int, ...]) -> None:
        """A call on a descriptor the recording does not know: it is real in the sandbox
        (an input the what-if asked for), except that outputs are kept, not performed."""
        proc = task.proc
        assert proc is not None
        self.stats["live"] += 1
        if spec.policy is Policy.OUTPUT:
            self._finish(task, regs, self._take_output(task, spec, args))
            return
        if spec.nr == 3:
            proc.live_fds.discard(args[0] & 0xFFFF_FFFF)
        self._resume(task)

    def _run_live(self, task: Task, spec: SyscallSpec, kind: FdKind) -> None:
        """Run a descriptor-creating call for real; its fd becomes live."""

        def done(task: Task, regs: P.UserRegs) -> None:
            fd = P.to_signed(regs.rax)
            if fd >= 0 and task.proc is not None:
                task.proc.live_fds.add(fd)
                task.proc.fd_kind[fd] = kind

        task.at_exit = done
        self._resume(task)

    def _synthesize(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                    args: tuple[int, ...]) -> None:
        """What-if: a call the recording does not have. It runs for real in the sandbox
        (read-only host, private /tmp, no network), except outputs, which are kept and not
        performed, waits and sleeps, which pass in virtual time, and calls on descriptors
        that exist only as placeholders, which get an end-of-input or error answer."""
        proc = task.proc
        assert proc is not None
        self.stats["synthesized"] += 1
        task.synth_clock += 1
        policy = spec.policy
        if policy is Policy.OUTPUT:
            self._finish(task, regs, self._take_output(task, spec, args))
            return
        if policy is Policy.WAIT:
            self._synthesize_wait(task, regs, spec, args)
            return
        if policy is Policy.NEW_FD and spec.nr in LIVE_OPENS:
            self._run_live(task, spec, "socket" if spec.nr == 41 else "file")
            return
        fd = fd_of(spec.nr, args) if spec.fd_arg is not None else -1
        placeholder = fd > 2 and fd in proc.fd_kind and fd not in proc.live_fds
        if not placeholder:
            self.stats["real"] += 1
            self._resume(task)  # the sandbox answers
        elif policy in (Policy.REAL, Policy.SIGNAL):
            self._resume(task)
        elif spec.nr in (0, 17, 19, 45, 47, 295, 327):
            self._finish(task, regs, 0)  # no recorded data on this descriptor: end of input
        else:
            self._finish(task, regs, -errno_mod.ENOSYS)

    def _synthesize_wait(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                         args: tuple[int, ...]) -> None:
        mem = task.process.mem
        timeout: int | None
        if spec.nr == 35:
            timeout = vclock.timeout_ns("timespec", args[0], mem.read) or 0
        elif spec.nr == 230:
            request = vclock.timeout_ns("timespec", args[2], mem.read) or 0
            timeout = (max(0, self.domains.to_epoch(P.to_signed(args[0]), request)
                           - task.now_ns) if args[1] & 1 else request)
        else:
            timeout = vclock.timeout_ns(spec.timeout_kind, args[spec.timeout_arg or 0],
                                        mem.read)
        if spec.nr in (7, 271) and task.process.fd_peer and self._answer_from_peers(
                task, regs, args, task.now_ns + timeout if timeout is not None else 1 << 62):
            return
        if timeout is None or task.head() is None:
            # nothing recorded is left for this thread: whatever it waits for now (a next
            # request, or only a timer in a serve loop) lies past the recording
            self.status = "end_of_recording"
            self.notes.append(f"thread {task.rec_tid} waits ({spec.name}) "
                              f"{'with no timeout ' if timeout is None else ''}for input "
                              f"past the end of its recording")
            raise StopReplay
        task.now_ns += timeout
        task.shift_ns += timeout
        self._clear_wait_result(task, spec, args)
        self._finish(task, regs, 0)

