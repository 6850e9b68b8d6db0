"""Starting the tracee: fork, pre-exec set-up in the child, exec inside bubblewrap.

Why ``os.fork()`` and not a C helper: the pre-exec work is a handful of syscalls
(unshare, personality, PR_SET_TSC, PTRACE_TRACEME, setresuid, setrlimit, no_new_privs,
seccomp, execve) that ctypes and ``os`` make directly, and a C helper would need a compiler
or a build step on every host that replays. Everything the child needs (argument arrays,
the BPF program, file descriptors, rlimits) is built before the fork, so the child
allocates almost nothing; it never returns into the caller's code (``os._exit``).

Privilege: only the tracer keeps any. The replayed program, and every process it starts,
runs as host uid ``HOST_UID`` (65533: no passwd entry, owns no file; ``nobody``, 65534,
inside the sandbox) with no capability in any namespace, no_new_privs, a read-only view
of the host as that uid sees it, a private /tmp, its own pid/net/ipc/uts namespaces, the
deny filter of ``seccomp``, rlimits and a cgroup (``limits``). The steps:

1. The child makes a user namespace of its own (U0) and stops; the tracer maps root, the
   sandbox's uid and the overflow uid 1:1 in it (``U0_MAP``), so the child is root *in U0
   only*, with no capability on the host.
2. The child limits U0 to one nested user namespace (``max_user_namespaces`` = 1, the one
   bubblewrap makes), so nothing inside can make another, by any syscall (clone3 too).
3. It sets real uid ``HOST_UID`` and keeps effective uid 0 (in U0) and execs bubblewrap,
   which then runs in its setuid mode: it builds the sandbox with the few capabilities it
   needs (in U0), maps ``HOST_UID`` as the sandbox's uid, drops every capability, sets
   no_new_privs, installs the deny filter and execs the program.

Running bwrap as plain root instead (``--unshare-user --uid N``) maps the sandbox uid to
host uid 0: no capability, but the owner of every root-owned file (``/etc/shadow`` is
readable), exempt from RLIMIT_NPROC. In setuid mode glibc scrubs the environment bwrap
gets (LD_*, TMPDIR, …: AT_SECURE), so the recorded environment is passed as bwrap options
(``--clearenv``/``--setenv``), with all other options, through a memfd (``--args``): no
recorded value shows in the host's process list.

Files under /tmp (hidden by the private /tmp) that the replay needs, the recorded
executable and the files the program maps, are copied in read-only by bwrap from
descriptors the tracer opened (``--ro-bind-data``): the unprivileged uid could not reach
them through root's 0700 directories. Other host files are seen as ``HOST_UID`` sees them.

bwrap 0.8 cannot choose the program's ``argv[0]``, so the tracer rewrites bwrap's final
``execve`` (the second exec in the tree) to the recorded exe with the recorded argv[0].
The tracer follows bwrap's processes too (their syscalls run untouched); the tracee that
execs the recorded program is the one replayed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import shutil
import signal
import socket
import stat
from dataclasses import dataclass, field

from kprobe.replay_sandbox import ptrace_ffi
from kprobe.replay_sandbox.errors import SandboxError
from kprobe.replay_sandbox.limits import Limits, ReplayCgroup, rlimits
from kprobe.replay_sandbox.seccomp import CompiledFilter, build_deny_program, program_bytes

TRACE_OPTIONS = (ptrace_ffi.PTRACE_O_TRACESYSGOOD | ptrace_ffi.PTRACE_O_TRACEFORK
                 | ptrace_ffi.PTRACE_O_TRACEVFORK | ptrace_ffi.PTRACE_O_TRACECLONE
                 | ptrace_ffi.PTRACE_O_TRACEEXEC | ptrace_ffi.PTRACE_O_TRACESECCOMP
                 | ptrace_ffi.PTRACE_O_EXITKILL)

HOST_UID = 65533  # the kernel's uid (and gid) of every sandboxed process
SANDBOX_UID = 65534  # what the program sees (nobody/nogroup)
CLONE_NEWUSER = 0x10000000
SYS_UNSHARE = 272
MAX_COPY_BYTES = 256 << 20  # files copied into the sandbox, in all
_MAX_USERNS = "/proc/sys/user/max_user_namespaces"
# the ids U0 maps (to the same host ids): root, for the child and bwrap's set-up, the
# sandbox's host uid, and the overflow id bwrap maps root to in the sandbox; nothing else
U0_MAP = f"0 0 1\n{HOST_UID} {HOST_UID} 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n"


@dataclass(frozen=True)
class LaunchSpec:
    exe: str
    argv: list[str]
    env: list[str]
    cwd: str
    sandbox: bool = True
    ro_paths: tuple[str, ...] = ()  # host files the program maps (from the recording)
    named_paths: tuple[str, ...] = ()  # host files a changed command line names
    named_any: bool = True  # named files root may read are shown; False: only public ones
    exe_recorded: bool = True  # exe is the recorded program (not a what-if command)
    hidden: tuple[str, ...] = ()  # host paths the sandbox must not see (the lake, tokens)
    initial_fds: frozenset[int] = frozenset({0, 1, 2})  # open before the program starts
    cpu: int | None = None
    stderr_path: str = "/dev/null"
    hostname: str = "replay"
    limits: Limits = field(default_factory=Limits)
    notes: list[str] = field(default_factory=list)
    # what the recorded process started with (None: not recorded): its umask, and its
    # rlimits, resource -> (soft, hard), lowered where the sandbox's own are lower
    umask: int | None = None
    recorded_rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    # descriptors it started with besides 0-2, fd -> kind (pipe, socket: made as such;
    # others: /dev/null), placed before the exec
    placeholder_kinds: dict[int, str] = field(default_factory=dict)

    @property
    def exec_count(self) -> int:
        """Which exec in the traced tree is the recorded program (bwrap execs first)."""
        return 2 if self.sandbox else 1


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bubblewrap (bwrap) is not installed; install it or replay "
                           "without the sandbox")
    return path


def public(path: str, execute: bool = False) -> bool:
    """Can ``HOST_UID`` read (and execute) ``path``: others may search every directory on
    the way and read the file. (It owns nothing and is in no group: only "others" bits.)"""
    try:
        real = os.path.realpath(path)
        mode = os.stat(real).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if execute else 0)
    if mode & need != need:
        return False
    parent = os.path.dirname(real)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


@dataclass
class _Launch:
    """What the child execs, built before the fork."""

    path: bytes
    argv: ptrace_ffi.CStrings
    envp: ptrace_ffi.CStrings
    pass_fds: list[int]  # descriptors bwrap reads (--args, --add-seccomp-fd, copies)
    own_fds: list[int]  # every descriptor made here (closed in the parent after the fork)
    limits: list[tuple[int, tuple[int, int]]]


def _high_fd(fd: int, floor: int) -> int:
    """``fd`` moved to a number >= ``floor`` (close-on-exec), so the descriptors the
    recorded program inherited can be placed below it without clobbering it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return moved


@dataclass
class Plan:
    """What the sandbox adds to the host view for one replay (``plan``)."""

    covered: list[str] = field(default_factory=list)  # unsearchable dirs: a tmpfs on each
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (target, path) to make
    copies: list[tuple[int, str]] = field(default_factory=list)  # (descriptor, path)
    cwd: str = "/"
    biggest: int = 0  # bytes of the largest copy


def bwrap_options(spec: LaunchSpec, plan: Plan, filter_fds: list[int]) -> list[str]:
    """bwrap's options (what goes through ``--args``) for ``spec`` and its ``plan``;
    ``filter_fds`` hold the seccomp filters bwrap installs last (trace, deny)."""
    opts = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
            "--hostname", spec.hostname,
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in spec.hidden:  # under the read-only root: cover it, if it can be reached
        if (path.startswith("/tmp/") or not os.path.lexists(path)
                or _unsearchable(os.path.dirname(path)) is not None):
            continue
        opts += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    for path in plan.covered:
        opts += ["--tmpfs", path]
    for target, path in plan.symlinks:
        opts += ["--symlink", target, path]
    for fd, path in plan.copies:
        opts += ["--perms", "0555", "--ro-bind-data", str(fd), path]
    if plan.cwd.startswith("/tmp/") or _under(plan.cwd, plan.covered):
        opts += ["--dir", plan.cwd]
    opts += ["--chdir", plan.cwd, "--clearenv"]
    for entry in spec.env:
        key, eq, value = entry.partition("=")
        if eq and key:
            opts += ["--setenv", key, value]
        else:
            spec.notes.append(f"environment entry {entry[:40]!r} has no NAME=: not passed")
    for fd in filter_fds:
        opts += ["--add-seccomp-fd", str(fd)]
    return opts


def _under(path: str, dirs: list[str] | tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _unsearchable(path: str) -> str | None:
    """The highest of ``path`` and its ancestors that others may not search, if any."""
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        try:
            mode = os.stat(prefix).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return prefix
    return None


def _chain(path: str) -> tuple[list[tuple[str, str]], str]:
    """The symlinks from ``path`` to the file it names, as (link, target), and that file."""
    hops: list[tuple[str, str]] = []
    for _ in range(40):
        if not os.path.islink(path):
            break
        target = os.readlink(path)
        hops.append((path, target))
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return hops, path


def plan(spec: LaunchSpec, floor: int, own: list[int]) -> Plan:
    """What the sandbox must add so the replay finds its files: the uid it runs as sees
    the host as "others" do, and /tmp is private. Each file the replay needs that it could
    not reach is copied in by bwrap from a descriptor the tracer opens (root's rights, so
    only for what the recording says the program ran and mapped, or what a root user of
    the CLI names: ``named_any``); an unsearchable directory on its way is covered by an
    empty tmpfs (nothing under it was reachable anyway) in which the copy and the
    symlinks leading to it are made. Descriptors opened here go to ``own``."""
    out = Plan()
    wanted = [(spec.exe, spec.exe_recorded or spec.named_any)]
    wanted += [(p, True) for p in spec.ro_paths]
    wanted += [(p, spec.named_any) for p in spec.named_paths]
    seen: set[str] = set()
    total = 0

    def cover(path: str) -> bool:
        """Make ``path``'s unreachable ancestor a tmpfs; False if nothing needed it."""
        if path.startswith("/tmp/") or _under(path, out.covered):
            return True
        top = _unsearchable(path)
        if top is None:
            return False
        out.covered[:] = [c for c in out.covered if not _under(c, [top])] + [top]
        return True

    for path, lend in wanted:
        if not path.startswith("/") or path in seen or not os.path.exists(path):
            continue
        seen.add(path)
        hops, final = _chain(path)
        if not final.startswith("/tmp/") and public(final):
            continue  # the read-only host view shows it
        if not lend and not public(final):
            spec.notes.append(f"{path} is not readable by others on this host: the "
                              f"sandbox does not show it")
            continue
        try:
            fd = _high_fd(os.open(final, os.O_RDONLY | os.O_CLOEXEC), floor)
        except OSError as err:
            spec.notes.append(f"cannot show {path} in the sandbox: {err.strerror}")
            continue
        own.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or total + info.st_size > MAX_COPY_BYTES:
            spec.notes.append(f"{path} is not shown in the sandbox (not a regular file, or "
                              f"over {MAX_COPY_BYTES >> 20} MiB of copies)")
            continue
        total += info.st_size
        out.biggest = max(out.biggest, info.st_size)
        cover(final)  # False: only the file is unreadable; the copy goes over it
        out.copies.append((fd, final))
        for link, target in hops:
            if (link.startswith("/tmp/") or cover(link)) and (target, link) not in out.symlinks:
                out.symlinks.append((target, link))
    cwd = spec.cwd if spec.cwd.startswith("/") else "/"
    if not os.path.isdir(cwd):
        spec.notes.append(f"recorded cwd {cwd} does not exist here; the replay runs in /")
        cwd = "/"
    elif not cwd.startswith("/tmp/") and not public(cwd, execute=True) and not cover(cwd):
        spec.notes.append(f"the sandbox's unprivileged user cannot enter the recorded cwd "
                          f"{cwd}; the replay runs in /")
        cwd = "/"
    out.cwd = cwd
    # covered dirs outermost first; entries inside a covered dir are made after it
    out.covered.sort(key=lambda p: p.count("/"))
    return out


def _bwrap_launch(spec: LaunchSpec, floor: int, filter_: CompiledFilter) -> _Launch:
    bwrap = find_bwrap()
    own: list[int] = []

    def memfd(name: str, data: bytes) -> int:
        fd = _high_fd(os.memfd_create(name, os.MFD_CLOEXEC), floor)
        own.append(fd)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    try:
        layout = plan(spec, floor, own)
        trace = memfd("kprobe-replay-trace", program_bytes(filter_.prog))
        deny = memfd("kprobe-replay-deny", program_bytes(build_deny_program()))
        opts = bwrap_options(spec, layout, [trace, deny])
        args = memfd("kprobe-replay-args", b"".join(o.encode() + b"\0" for o in opts))
    except BaseException:
        for fd in own:
            os.close(fd)
        raise
    command = [bwrap, "--args", str(args), "--", spec.exe, *spec.argv[1:]]
    return _Launch(bwrap.encode(), ptrace_ffi.c_string_array([a.encode() for a in command]),
                   ptrace_ffi.c_string_array([]),
                   [fd for fd, _ in layout.copies] + [trace, deny, args], own,
                   merged_rlimits(spec, rlimits(spec.limits, layout.biggest)))


def merged_rlimits(spec: LaunchSpec, sandbox: list[tuple[int, tuple[int, int]]]
                   ) -> list[tuple[int, tuple[int, int]]]:
    """The sandbox's rlimits, each lowered to the recorded one where that is lower (the
    tracer sets the others to the recorded values: ``raise_recorded_rlimits``)."""
    out = []
    for which, (soft, hard) in sandbox:
        recorded = spec.recorded_rlimits.get(which)
        if recorded is not None:
            soft, hard = _lower(soft, recorded[0]), _lower(hard, recorded[1])
            soft = _lower(soft, hard)
        out.append((which, (soft, hard)))
    return out


def _lower(a: int, b: int) -> int:
    """min of two rlimit values, RLIM_INFINITY (-1) being the largest."""
    if a == resource.RLIM_INFINITY:
        return b
    if b == resource.RLIM_INFINITY:
        return a
    return min(a, b)


def raise_recorded_rlimits(pid: int, spec: LaunchSpec, sandboxed: set[int]) -> None:
    """Give the stopped child the recorded rlimits the sandbox does not set (root may
    raise a hard limit; the child lowers the sandbox's own after this)."""
    for which, pair in spec.recorded_rlimits.items():
        if which in sandboxed:
            continue
        try:
            resource.prlimit(pid, which, pair)
        except (OSError, ValueError) as err:
            spec.notes.append(f"cannot give the replay the recorded rlimit {which} {pair}: "
                              f"{err}")


def spawn(spec: LaunchSpec, filter_: CompiledFilter, cgroup: ReplayCgroup | None = None) -> int:
    """Fork the tracee, set ptrace options (and its user namespace's maps and cgroup) at
    its first stop, return its pid.

    The child is stopped at its own SIGSTOP when this returns; the caller resumes it.
    """
    placeholders = sorted(fd for fd in spec.initial_fds if fd > 2)
    floor = max([2, *placeholders]) + 1
    devnull = _high_fd(os.open("/dev/null", os.O_RDWR), floor)
    kinds = _placeholder_sources(spec, placeholders, floor)
    stderr_fd = _high_fd(os.open(spec.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                 0o600), floor)
    own = [devnull, stderr_fd, *kinds.values()]
    try:
        if spec.sandbox:
            launch = _bwrap_launch(spec, floor, filter_)
        else:
            launch = _Launch(spec.exe.encode(),
                             ptrace_ffi.c_string_array([a.encode() for a in spec.argv]),
                             ptrace_ffi.c_string_array([e.encode() for e in spec.env]),
                             [], [], merged_rlimits(spec, rlimits(spec.limits)))
        own += launch.own_fds
        max_userns = _MAX_USERNS.encode()
        cwd_b = None if spec.sandbox else spec.cwd.encode()
        pid = os.fork()
        if pid == 0:  # the child: syscalls only, then exec; never return
            try:
                _child(launch, cwd_b, devnull, stderr_fd, placeholders, spec.cpu,
                       spec.sandbox, max_userns, filter_, kinds, spec.umask)
            finally:
                os._exit(126)
    finally:
        for fd in own:
            os.close(fd)
    _, status = os.waitpid(pid, ptrace_ffi.WALL)
    if not os.WIFSTOPPED(status) or os.WSTOPSIG(status) != signal.SIGSTOP:
        raise SandboxError(f"tracee {pid} did not stop before exec (status {status:#x}): "
                           f"{_last_line(spec.stderr_path)}")
    try:
        ptrace_ffi.set_options(pid, TRACE_OPTIONS)
        if spec.sandbox:  # root in its own user namespace only
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
                    f.write(U0_MAP)
        if cgroup is not None:
            cgroup.add(pid)
        raise_recorded_rlimits(pid, spec, {which for which, _ in launch.limits})
    except OSError as err:
        ptrace_ffi.kill_quietly(pid)
        os.waitpid(pid, ptrace_ffi.WALL)
        raise SandboxError(f"cannot set up the tracee's user namespace or cgroup: "
                           f"{err.strerror}") from None
    return pid


def _last_line(path: str) -> str:
    """The child's last message before it gave up (it writes one line before exiting)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else f"no message (see {path})"


def _placeholder_sources(spec: LaunchSpec, placeholders: list[int], floor: int
                         ) -> dict[int, int]:
    """fd -> a descriptor of the recorded kind to dup there (a pipe's end for a pipe, a
    socket for a socket); the others are /dev/null. Their I/O is served from the
    recording either way: the kind is what fstat-free calls that run for real meet."""
    out: dict[int, int] = {}
    for fd in placeholders:
        kind = spec.placeholder_kinds.get(fd)
        if kind == "pipe":
            r, w = os.pipe()
            os.close(w)
            out[fd] = _high_fd(r, floor)
        elif kind == "socket":
            a, b = socket.socketpair()
            b.close()
            out[fd] = _high_fd(a.detach(), floor)
    return out


def _child(launch: _Launch, cwd: bytes | None, devnull: int, stderr_fd: int,
           placeholders: list[int], cpu: int | None, sandbox: bool, max_userns: bytes,
           filter_: CompiledFilter, kinds: dict[int, int] | None = None,
           umask: int | None = None) -> None:
    def fail(what: str) -> None:
        os.write(2, f"kprobe replay: {what}: {os.strerror(ptrace_ffi.errno())}\n".encode())
        os._exit(126)

    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(stderr_fd, 2)
    for fd in placeholders:  # descriptors the recorded process inherited
        os.dup2((kinds or {}).get(fd, devnull), fd)
    wanted = {0, 1, 2, *placeholders, *launch.pass_fds}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in wanted:
            try:
                os.close(int(name))
            except OSError:
                pass
    for fd in launch.pass_fds:
        os.set_inheritable(fd, True)
    if cwd is not None:
        os.chdir(cwd)
    if umask is not None:
        os.umask(umask)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if ptrace_ffi.personality(ptrace_ffi.ADDR_NO_RANDOMIZE) == -1:
        fail("personality(ADDR_NO_RANDOMIZE)")
    if sandbox and ptrace_ffi.raw_syscall(SYS_UNSHARE, CLONE_NEWUSER) != 0:
        fail("unshare(CLONE_NEWUSER)" + (
            " (the forked replayer has threads: a library's fork handler started them, e.g."
            " gRPC's fork support; replay from a process of its own, as kprobe replay does)"
            if ptrace_ffi.errno() == errno.EINVAL else ""))
    if ptrace_ffi.traceme() == -1:
        fail("PTRACE_TRACEME")
    os.kill(os.getpid(), signal.SIGSTOP)  # the tracer sets options, uid maps, cgroup now
    if ptrace_ffi.prctl(ptrace_ffi.PR_SET_TSC, ptrace_ffi.PR_TSC_SIGSEGV) != 0:
        fail("prctl(PR_SET_TSC)")
    if sandbox:
        try:
            limit = os.open(max_userns, os.O_WRONLY)
            os.write(limit, b"1")  # bwrap's own; none inside (by any syscall)
            os.close(limit)
            os.setgroups([])
            os.setresgid(HOST_UID, HOST_UID, HOST_UID)
            os.setresuid(HOST_UID, 0, 0)  # real uid HOST_UID: bwrap runs in setuid mode
        except OSError:
            fail("dropping privileges")
    try:
        for which, pair in launch.limits:
            resource.setrlimit(which, pair)
    except (OSError, ValueError):
        fail("setrlimit")
    if not sandbox and filter_.install() != 0:  # in the sandbox bwrap installs it
        fail("seccomp")
    ptrace_ffi.execve_raw(launch.path, launch.argv, launch.envp)
    fail(f"execve {launch.path.decode(errors='replace')}")
