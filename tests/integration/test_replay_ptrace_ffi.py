"""The stop loop's ptrace calls (``replay_sandbox.ptrace_ffi``: GETREGS, SETREGS, CONT) go
through ctypes without argtypes, each argument passed as what glibc's variadic ptrace reads.
These tests check what they do to a real traced child: a syscall served by registers alone
(skipped, its result set), and a signal delivered, or suppressed, by the resume."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox.errors import TracerError
from kprobe.replay_sandbox.seccomp import compile_filter

GETPPID = 110
SERVED_PPID = 4242  # no process here is its parent's pid 4242: only the tracer can say it


def _traced_child(body: Callable[[], int]) -> int:
    """A forked child that asks to be traced, then runs ``body`` and exits with its code."""
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            if P.traceme() == 0:
                code = body()
        finally:
            os._exit(code)
    return pid


def _asks_getppid() -> int:
    filt = compile_filter({GETPPID})
    os.kill(os.getpid(), signal.SIGSTOP)  # the tracer sets its options now
    if filt.install() != 0:
        return 101
    return 0 if os.getppid() == SERVED_PPID else 1


def _serve_getppid(skip: bool) -> int:
    """Trace a child through its getppid's seccomp stop; its exit code (0: it was told
    SERVED_PPID)."""
    pid = _traced_child(_asks_getppid)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP, status
        P.set_options(pid, P.PTRACE_O_TRACESECCOMP | P.PTRACE_O_EXITKILL)
        P.resume(pid)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status) and status >> 16 == P.EVENT_SECCOMP, status
        regs = P.get_regs(pid, P.UserRegs())
        assert regs.orig_rax == GETPPID
        if skip:
            regs.orig_rax = (1 << 64) - 1  # the kernel skips the call and returns rax
            regs.rax = SERVED_PPID
            P.set_regs(pid, regs)
        P.resume(pid)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        return os.WEXITSTATUS(status)
    finally:
        _stop(pid)


def _stop(pid: int) -> None:
    """Kill the traced child if it is still there, and reap it."""
    P.kill_quietly(pid)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def test_registers_set_at_a_seccomp_stop_serve_the_call() -> None:
    assert _serve_getppid(skip=True) == 0
    # control: without SETREGS the call runs for real and returns the real parent
    assert _serve_getppid(skip=False) == 1


def _raises_usr1() -> int:
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # its default action: termination
    os.kill(os.getpid(), signal.SIGUSR1)
    return 7  # reached only if the signal was suppressed


def test_resume_delivers_the_signal_it_is_given_and_none_with_zero() -> None:
    for sig in (signal.SIGUSR1, 0):
        pid = _traced_child(_raises_usr1)
        try:
            _, status = os.waitpid(pid, 0)  # the signal-delivery stop
            assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGUSR1, status
            P.resume(pid, int(sig))
            _, status = os.waitpid(pid, 0)
            if sig:
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1, status
            else:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, status
        finally:
            _stop(pid)


def test_a_failed_call_raises_with_its_errno() -> None:
    pid = _traced_child(lambda: 0)  # it exits at once: then no stop of it remains to use
    os.waitpid(pid, 0)
    regs = P.UserRegs()
    for call in (lambda: P.get_regs(pid, regs), lambda: P.set_regs(pid, regs),
                 lambda: P.resume(pid), lambda: P.resume(pid, signal.SIGUSR1)):
        try:
            call()
        except TracerError as err:
            assert err.errno == 3, err  # ESRCH
        else:
            raise AssertionError("a ptrace call on a reaped pid did not fail")
