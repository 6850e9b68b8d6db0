"""x86_64 system calls: number -> name, argument count and descriptor argument.

The ``syscalls`` lake table stores the number the kernel saw (``nr``) and, decided here
with one vectorised lookup per batch, its ``name``, how many of the six argument
registers are arguments (``args`` keeps only those), and which argument is a file
descriptor (the ``fd`` column: argument 0 for read/write/fstat/openat(dirfd)/...,
argument 4 for mmap, null for the rest).

Numbers and names: the x86_64 syscall table (``arch/x86/entry/syscalls/syscall_64.tbl``,
user-space names: ``stat``, not tracefs's ``newstat``) up to Linux 6.18. Argument counts:
the fields of ``/sys/kernel/tracing/events/syscalls/sys_enter_*`` on 6.18 (6 where the
kernel has no tracepoint). Descriptor arguments: argument 0 where the kernel names it
``fd``/``dfd``/``epfd``/``ufd``/... (not ``pipe``'s ``int *fildes``). Numbers 512 and above
(x32) and compat (ia32) calls are not x86_64 calls: they get ``syscall_<nr>`` and no fd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NR_MAX = 512  # x86_64 numbers are below this; x32 numbers start at 512

# "nr name nargs fd_arg" ("-": no descriptor argument)
_TABLE = """
0 read 3 0                      1 write 3 0                     2 open 3 -
3 close 1 0                     4 stat 2 -                      5 fstat 2 0
6 lstat 2 -                     7 poll 3 -                      8 lseek 3 0
9 mmap 6 4                      10 mprotect 3 -                 11 munmap 2 -
12 brk 1 -                      13 rt_sigaction 4 -             14 rt_sigprocmask 4 -
15 rt_sigreturn 0 -             16 ioctl 3 0                    17 pread64 4 0
18 pwrite64 4 0                 19 readv 3 0                    20 writev 3 0
21 access 2 -                   22 pipe 1 -                     23 select 5 -
24 sched_yield 0 -              25 mremap 5 -                   26 msync 3 -
27 mincore 3 -                  28 madvise 3 -                  29 shmget 3 -
30 shmat 3 -                    31 shmctl 3 -                   32 dup 1 0
33 dup2 2 0                     34 pause 0 -                    35 nanosleep 2 -
36 getitimer 2 -                37 alarm 1 -                    38 setitimer 3 -
39 getpid 0 -                   40 sendfile 4 0                 41 socket 3 -
42 connect 3 0                  43 accept 3 0                   44 sendto 6 0
45 recvfrom 6 0                 46 sendmsg 3 0                  47 recvmsg 3 0
48 shutdown 2 0                 49 bind 3 0                     50 listen 2 0
51 getsockname 3 0              52 getpeername 3 0              53 socketpair 4 -
54 setsockopt 5 0               55 getsockopt 5 0               56 clone 5 -
57 fork 0 -                     58 vfork 0 -                    59 execve 3 -
60 exit 1 -                     61 wait4 4 -                    62 kill 2 -
63 uname 1 -                    64 semget 3 -                   65 semop 3 -
66 semctl 4 -                   67 shmdt 1 -                    68 msgget 2 -
69 msgsnd 4 -                   70 msgrcv 5 -                   71 msgctl 3 -
72 fcntl 3 0                    73 flock 2 0                    74 fsync 1 0
75 fdatasync 1 0                76 truncate 2 -                 77 ftruncate 2 0
78 getdents 3 0                 79 getcwd 2 -                   80 chdir 1 -
81 fchdir 1 0                   82 rename 2 -                   83 mkdir 2 -
84 rmdir 1 -                    85 creat 2 -                    86 link 2 -
87 unlink 1 -                   88 symlink 2 -                  89 readlink 3 -
90 chmod 2 -                    91 fchmod 2 0                   92 chown 3 -
93 fchown 3 0                   94 lchown 3 -                   95 umask 1 -
96 gettimeofday 2 -             97 getrlimit 2 -                98 getrusage 2 -
99 sysinfo 1 -                  100 times 1 -                   101 ptrace 4 -
102 getuid 0 -                  103 syslog 3 -                  104 getgid 0 -
105 setuid 1 -                  106 setgid 1 -                  107 geteuid 0 -
108 getegid 0 -                 109 setpgid 2 -                 110 getppid 0 -
111 getpgrp 0 -                 112 setsid 0 -                  113 setreuid 2 -
114 setregid 2 -                115 getgroups 2 -               116 setgroups 2 -
117 setresuid 3 -               118 getresuid 3 -               119 setresgid 3 -
120 getresgid 3 -               121 getpgid 1 -                 122 setfsuid 1 -
123 setfsgid 1 -                124 getsid 1 -                  125 capget 2 -
126 capset 2 -                  127 rt_sigpending 2 -           128 rt_sigtimedwait 4 -
129 rt_sigqueueinfo 3 -         130 rt_sigsuspend 2 -           131 sigaltstack 2 -
132 utime 2 -                   133 mknod 3 -                   134 uselib 6 -
135 personality 1 -             136 ustat 2 -                   137 statfs 2 -
138 fstatfs 2 0                 139 sysfs 3 -                   140 getpriority 2 -
141 setpriority 3 -             142 sched_setparam 2 -          143 sched_getparam 2 -
144 sched_setscheduler 3 -      145 sched_getscheduler 1 -      146 sched_get_priority_max 1 -
147 sched_get_priority_min 1 -    148 sched_rr_get_interval 2 -    149 mlock 2 -
150 munlock 2 -                 151 mlockall 1 -                152 munlockall 0 -
153 vhangup 0 -                 154 modify_ldt 3 -              155 pivot_root 2 -
156 _sysctl 6 -                 157 prctl 5 -                   158 arch_prctl 2 -
159 adjtimex 1 -                160 setrlimit 2 -               161 chroot 1 -
162 sync 0 -                    163 acct 1 -                    164 settimeofday 2 -
165 mount 5 -                   166 umount2 2 -                 167 swapon 2 -
168 swapoff 1 -                 169 reboot 4 -                  170 sethostname 2 -
171 setdomainname 2 -           172 iopl 1 -                    173 ioperm 3 -
174 create_module 6 -           175 init_module 6 -             176 delete_module 6 -
177 get_kernel_syms 6 -         178 query_module 6 -            179 quotactl 4 -
180 nfsservctl 6 -              181 getpmsg 6 -                 182 putpmsg 6 -
183 afs_syscall 6 -             184 tuxcall 6 -                 185 security 6 -
186 gettid 0 -                  187 readahead 3 0               188 setxattr 5 -
189 lsetxattr 5 -               190 fsetxattr 5 0               191 getxattr 4 -
192 lgetxattr 4 -               193 fgetxattr 4 0               194 listxattr 3 -
195 llistxattr 3 -              196 flistxattr 3 0              197 removexattr 2 -
198 lremovexattr 2 -            199 fremovexattr 2 0            200 tkill 2 -
201 time 1 -                    202 futex 6 -                   203 sched_setaffinity 3 -
204 sched_getaffinity 3 -       205 set_thread_area 6 -         206 io_setup 2 -
207 io_destroy 1 -              208 io_getevents 5 -            209 io_submit 3 -
210 io_cancel 3 -               211 get_thread_area 6 -         212 lookup_dcookie 6 -
213 epoll_create 1 -            214 epoll_ctl_old 6 -           215 epoll_wait_old 6 -
216 remap_file_pages 5 -        217 getdents64 3 0              218 set_tid_address 1 -
219 restart_syscall 0 -         220 semtimedop 4 -              221 fadvise64 4 0
222 timer_create 3 -            223 timer_settime 4 -           224 timer_gettime 2 -
225 timer_getoverrun 1 -        226 timer_delete 1 -            227 clock_settime 2 -
228 clock_gettime 2 -           229 clock_getres 2 -            230 clock_nanosleep 4 -
231 exit_group 1 -              232 epoll_wait 4 0              233 epoll_ctl 4 0
234 tgkill 3 -                  235 utimes 2 -                  236 vserver 6 -
237 mbind 6 -                   238 set_mempolicy 3 -           239 get_mempolicy 5 -
240 mq_open 4 -                 241 mq_unlink 1 -               242 mq_timedsend 5 -
243 mq_timedreceive 5 -         244 mq_notify 2 -               245 mq_getsetattr 3 -
246 kexec_load 6 -              247 waitid 5 -                  248 add_key 5 -
249 request_key 4 -             250 keyctl 5 -                  251 ioprio_set 3 -
252 ioprio_get 2 -              253 inotify_init 0 -            254 inotify_add_watch 3 0
255 inotify_rm_watch 2 0        256 migrate_pages 4 -           257 openat 4 0
258 mkdirat 3 0                 259 mknodat 4 0                 260 fchownat 5 0
261 futimesat 3 0               262 newfstatat 4 0              263 unlinkat 3 0
264 renameat 4 0                265 linkat 5 0                  266 symlinkat 3 -
267 readlinkat 4 0              268 fchmodat 3 0                269 faccessat 3 0
270 pselect6 6 -                271 ppoll 5 -                   272 unshare 1 -
273 set_robust_list 2 -         274 get_robust_list 3 -         275 splice 6 0
276 tee 4 0                     277 sync_file_range 4 0         278 vmsplice 4 0
279 move_pages 6 -              280 utimensat 4 0               281 epoll_pwait 6 0
282 signalfd 3 0                283 timerfd_create 2 -          284 eventfd 1 -
285 fallocate 4 0               286 timerfd_settime 4 0         287 timerfd_gettime 2 0
288 accept4 4 0                 289 signalfd4 4 0               290 eventfd2 2 -
291 epoll_create1 1 -           292 dup3 3 0                    293 pipe2 2 -
294 inotify_init1 1 -           295 preadv 5 0                  296 pwritev 5 0
297 rt_tgsigqueueinfo 4 -       298 perf_event_open 5 -         299 recvmmsg 5 0
300 fanotify_init 2 -           301 fanotify_mark 5 0           302 prlimit64 4 -
303 name_to_handle_at 5 0       304 open_by_handle_at 3 0       305 clock_adjtime 2 -
306 syncfs 1 0                  307 sendmmsg 4 0                308 setns 2 0
309 getcpu 3 -                  310 process_vm_readv 6 -        311 process_vm_writev 6 -
312 kcmp 5 -                    313 finit_module 6 -            314 sched_setattr 3 -
315 sched_getattr 4 -           316 renameat2 5 0               317 seccomp 3 -
318 getrandom 3 -               319 memfd_create 2 -            320 kexec_file_load 6 -
321 bpf 3 -                     322 execveat 5 0                323 userfaultfd 1 -
324 membarrier 3 -              325 mlock2 3 -                  326 copy_file_range 6 0
327 preadv2 6 0                 328 pwritev2 6 0                329 pkey_mprotect 4 -
330 pkey_alloc 2 -              331 pkey_free 1 -               332 statx 5 0
333 io_pgetevents 6 -           334 rseq 4 -                    335 uretprobe 0 -
336 uprobe 0 -                  424 pidfd_send_signal 4 0       425 io_uring_setup 2 -
426 io_uring_enter 6 0          427 io_uring_register 4 0       428 open_tree 3 0
429 move_mount 5 0              430 fsopen 2 -                  431 fsconfig 5 0
432 fsmount 3 0                 433 fspick 3 0                  434 pidfd_open 2 -
435 clone3 2 -                  436 close_range 3 0             437 openat2 4 0
438 pidfd_getfd 3 0             439 faccessat2 4 0              440 process_madvise 5 0
441 epoll_pwait2 6 0            442 mount_setattr 5 0           443 quotactl_fd 4 0
444 landlock_create_ruleset 3 -    445 landlock_add_rule 4 0       446 landlock_restrict_self 2 0
447 memfd_secret 1 -            448 process_mrelease 2 0        449 futex_waitv 5 -
450 set_mempolicy_home_node 4 -    451 cachestat 4 0               452 fchmodat2 4 0
453 map_shadow_stack 6 -        454 futex_wake 4 -              455 futex_wait 6 -
456 futex_requeue 4 -           457 statmount 4 -               458 listmount 4 -
459 lsm_get_self_attr 4 -       460 lsm_set_self_attr 4 -       461 lsm_list_modules 3 -
462 mseal 3 -                   463 setxattrat 6 0              464 getxattrat 6 0
465 listxattrat 5 0             466 removexattrat 4 0           467 open_tree_attr 5 0
468 file_getattr 5 0            469 file_setattr 5 0
"""


def _parse() -> tuple[list[str], np.ndarray, np.ndarray]:
    names = [f"syscall_{nr}" for nr in range(NR_MAX)]
    nargs = np.full(NR_MAX, 6, np.int8)
    fd_arg = np.full(NR_MAX, -1, np.int8)
    fields = _TABLE.split()
    for i in range(0, len(fields), 4):
        nr = int(fields[i])
        names[nr] = fields[i + 1]
        nargs[nr] = int(fields[i + 2])
        fd_arg[nr] = -1 if fields[i + 3] == "-" else int(fields[i + 3])
    return names, nargs, fd_arg


NAMES, NARGS, FD_ARG = _parse()
NUMBERS: dict[str, int] = {name: nr for nr, name in enumerate(NAMES)
                           if not name.startswith("syscall_")}


def name_of(nr: int) -> str:
    return NAMES[nr] if 0 <= nr < NR_MAX else f"syscall_{nr}"


def number_of(name: str) -> int:
    """The x86_64 number of ``name`` (KeyError if unknown)."""
    return NUMBERS[name]


@dataclass(frozen=True)
class SyscallIndex:
    """Syscall numbers as a safe index into the tables, worked out once per batch and
    shared by the name, argument-count and fd lookups."""

    nr: np.ndarray
    idx: np.ndarray  # int32; 0 where outside
    outside: np.ndarray | None  # None: every number is in the table


def index(nr: np.ndarray | SyscallIndex) -> SyscallIndex:
    if isinstance(nr, SyscallIndex):
        return nr
    nr32 = np.asarray(nr).astype(np.int32, copy=False)
    outside = nr32.view(np.uint32) >= NR_MAX  # negative numbers wrap around: outside too
    if not outside.any():
        return SyscallIndex(nr32, nr32, None)
    return SyscallIndex(nr32, np.where(outside, 0, nr32), outside)


_NAME_ARRAY = pa.array(NAMES, type=pa.string())


def numbered(prefix: str, nr: np.ndarray) -> pa.Array:
    """``<prefix><nr>`` per row (vectorised)."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(nr), pa.string()), "")


def names_array(nr: np.ndarray | SyscallIndex) -> pa.Array:
    """The ``name`` column for syscall numbers ``nr`` (``syscall_<nr>`` if unknown)."""
    ix = index(nr)
    names = pc.take(_NAME_ARRAY, pa.array(ix.idx))
    if ix.outside is None:
        return names
    # x32 numbers, a skipped syscall's -1: no name
    return pc.if_else(pa.array(ix.outside), numbered("syscall_", ix.nr), names)


def arg_counts(nr: np.ndarray | SyscallIndex) -> np.ndarray:
    """Arguments each syscall takes (6 for unknown numbers)."""
    ix = index(nr)
    counts: np.ndarray = NARGS[ix.idx]
    if ix.outside is not None:
        counts = np.where(ix.outside, 6, counts)
    return counts.astype(np.int64)


def fd_column(nr: np.ndarray | SyscallIndex, args: np.ndarray) -> pa.Array:
    """The ``fd`` column: the descriptor argument as the kernel reads it (a C ``int``, so
    AT_FDCWD is -100), null for syscalls without one. ``args``: (rows, 6) registers."""
    ix = index(nr)
    which = FD_ARG[ix.idx]
    if ix.outside is not None:
        which = np.where(ix.outside, -1, which)
    has_fd = which >= 0
    raw = np.take_along_axis(args, np.maximum(which, 0).astype(np.intp)[:, None], axis=1)[:, 0]
    fd = raw.astype(np.uint64, copy=False).astype(np.uint32).view(np.int32).astype(np.int64)
    return pa.array(fd, type=pa.int64(), mask=None if has_fd.all() else ~has_fd)


__all__ = ["FD_ARG", "NARGS", "NAMES", "NR_MAX", "NUMBERS", "SyscallIndex", "arg_counts",
           "fd_column", "index", "name_of", "names_array", "number_of", "numbered"]
