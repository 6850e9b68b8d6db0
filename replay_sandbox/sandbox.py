"""Starting the tracee: fork, pre-exec set-up in the child, exec inside bubblewrap.

Why ``os.fork()`` and not a C helper: the pre-exec work is a handful of syscalls
(personality, PR_SET_TSC, PTRACE_TRACEME, no_new_privs, seccomp, execve) that ctypes makes
directly, and a C helper would need a compiler or a build step on every host that replays.
Everything the child needs (argument arrays, the BPF program, file descriptors) is built
before the fork, so the child allocates almost nothing and only makes those syscalls; it
never returns into the caller's code (``os._exit`` on any failure).

Why bubblewrap: it sets up the user, mount, pid, net, ipc and uts namespaces, a read-only
host root, a private /tmp, a fresh /proc and a reaper as pid 1, all of it well tested.
bwrap 0.8 cannot choose the program's ``argv[0]``, so the tracer rewrites bwrap's final
``execve`` (the second exec in the tree) to the recorded exe with the recorded argv[0].
The tracer follows bwrap's processes too (their syscalls run untouched); the tracee that
execs the recorded program is the one replayed.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass, field

from replay_sandbox import ptrace_ffi
from replay_sandbox.errors import SandboxError
from replay_sandbox.seccomp import CompiledFilter

TRACE_OPTIONS = (ptrace_ffi.PTRACE_O_TRACESYSGOOD | ptrace_ffi.PTRACE_O_TRACEFORK
                 | ptrace_ffi.PTRACE_O_TRACEVFORK | ptrace_ffi.PTRACE_O_TRACECLONE
                 | ptrace_ffi.PTRACE_O_TRACEEXEC | ptrace_ffi.PTRACE_O_TRACESECCOMP
                 | ptrace_ffi.PTRACE_O_EXITKILL)


@dataclass(frozen=True)
class LaunchSpec:
    exe: str
    argv: list[str]
    env: list[str]
    cwd: str
    sandbox: bool = True
    ro_paths: tuple[str, ...] = ()  # host paths under /tmp to show read-only in the sandbox
    initial_fds: frozenset[int] = frozenset({0, 1, 2})  # open before the program starts
    cpu: int | None = None
    stderr_path: str = "/dev/null"
    hostname: str = "replay"
    notes: list[str] = field(default_factory=list)

    @property
    def exec_count(self) -> int:
        """Which exec in the traced tree is the recorded program (bwrap execs first)."""
        return 2 if self.sandbox else 1


def bwrap_command(spec: LaunchSpec, bwrap: str = "bwrap") -> list[str]:
    """The bwrap command line that runs ``spec.exe`` with the sandbox described above."""
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
           "--hostname", spec.hostname,
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    shown: set[str] = set()
    for path in (spec.exe, *spec.ro_paths):
        if path.startswith("/tmp/") and path not in shown and os.path.exists(path):
            cmd += ["--ro-bind", path, path]
            shown.add(path)
    cwd = spec.cwd if spec.cwd.startswith("/") else "/"
    if cwd.startswith("/tmp/") and cwd not in shown:
        cmd += ["--dir", cwd]
    elif not os.path.isdir(cwd):
        spec.notes.append(f"recorded cwd {cwd} does not exist here; the replay runs in /")
        cwd = "/"
    cmd += ["--chdir", cwd, "--", spec.exe, *spec.argv[1:]]
    return cmd


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bubblewrap (bwrap) is not installed; install it or replay "
                           "without the sandbox")
    return path


def spawn(spec: LaunchSpec, filter_: CompiledFilter) -> int:
    """Fork the tracee, set ptrace options at its first stop, return its pid.

    The child is stopped at its own SIGSTOP when this returns; the caller resumes it.
    """
    if spec.sandbox:
        command = bwrap_command(spec, find_bwrap())
        path = command[0]
    else:
        command = list(spec.argv)
        path = spec.exe
    argv = ptrace_ffi.c_string_array([a.encode() for a in command])
    envp = ptrace_ffi.c_string_array([e.encode() for e in spec.env])
    path_b = path.encode()
    cwd_b = None if spec.sandbox else spec.cwd.encode()
    devnull = os.open("/dev/null", os.O_RDWR)
    stderr_fd = os.open(spec.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    placeholders = sorted(fd for fd in spec.initial_fds if fd > 2)
    pid = os.fork()
    if pid == 0:  # the child: syscalls only, then exec; never return
        try:
            _child(path_b, argv, envp, cwd_b, devnull, stderr_fd, placeholders, spec.cpu,
                   filter_)
        finally:
            os._exit(126)
    os.close(devnull)
    os.close(stderr_fd)
    _, status = os.waitpid(pid, ptrace_ffi.WALL)
    if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != signal.SIGSTOP:
        raise SandboxError(f"tracee {pid} did not stop before exec (status {status:#x}); "
                           f"see {spec.stderr_path}")
    ptrace_ffi.set_options(pid, TRACE_OPTIONS)
    return pid


def _child(path: bytes, argv: ptrace_ffi.CStrings, envp: ptrace_ffi.CStrings,
           cwd: bytes | None, devnull: int,
           stderr_fd: int, placeholders: list[int], cpu: int | None,
           filter_: CompiledFilter) -> None:
    def fail(what: str) -> None:
        os.write(2, f"kprobe replay: {what}: {os.strerror(ptrace_ffi.errno())}\n".encode())
        os._exit(126)

    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(stderr_fd, 2)
    for fd in placeholders:  # descriptors the recorded process inherited
        if fd == devnull:
            os.set_inheritable(fd, True)
        else:
            os.dup2(devnull, fd)
    wanted = {0, 1, 2, *placeholders}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in wanted:
            try:
                os.close(int(name))
            except OSError:
                pass
    if cwd is not None:
        os.chdir(cwd)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if ptrace_ffi.personality(ptrace_ffi.ADDR_NO_RANDOMIZE) == -1:
        fail("personality(ADDR_NO_RANDOMIZE)")
    if ptrace_ffi.traceme() == -1:
        fail("PTRACE_TRACEME")
    os.kill(os.getpid(), signal.SIGSTOP)  # the tracer sets its options now
    if ptrace_ffi.prctl(ptrace_ffi.PR_SET_TSC, ptrace_ffi.PR_TSC_SIGSEGV) != 0:
        fail("prctl(PR_SET_TSC)")
    if filter_.install() != 0:
        fail("seccomp")
    ptrace_ffi.execve_raw(path, argv, envp)
    fail(f"execve {path.decode(errors='replace')}")
