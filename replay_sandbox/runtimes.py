"""Runtimes an exact replay cannot follow, named before it starts (never a silent divergence).

A replay works at the syscall boundary, one thread of a process running user code at a
time, with clock reads it has no record of synthesized from virtual time. Two runtimes
depend on what that cannot give them:

- **Go** (a binary with a ``.go.buildinfo`` section): the runtime calls the vDSO itself
  (``runtime.nanotime1`` / ``walltime``), not libc's ``clock_gettime`` that the recorder
  probes, and a uretprobe on Go's own functions would break its moving goroutine stacks, so
  its clock reads are not recorded; its scheduler starts threads (``clone``) and parks them
  (``futex``) by those times and by races between its threads in user space. An exact
  replay diverges at the first clone or futex the recording ordered otherwise.
- **HotSpot** (``libjvm.so`` among the files the program maps): it reserves more address
  space than the sandbox's default RLIMIT_AS (8 GiB), so glibc gives its threads other
  malloc arenas than recorded (measured, OpenJDK 17: a JVM thread diverges at its 4th call,
  sched_getaffinity where /sys/devices/system/cpu/online was opened); with a larger limit
  (``Limits.address_space`` 64 GiB) its threads still act on clock reads HotSpot makes
  through the vDSO from its own code, which are not recorded (measured: a thread re-reads
  its cgroup's memory.limit_in_bytes where the recording's did not, as its cached value
  expires by that clock). It also maps a file it writes at start
  (``/tmp/hsperfdata_<user>/<pid>``, ``-XX:-UsePerfData`` turns it off).

Node (V8, libuv's threads, epoll, its own timers) replays: V8's reservations are placed
at their recorded addresses, and an mmap of a thread is followed wherever the race of its
malloc arenas put it (engine: ``_on_map``).
"""

from __future__ import annotations

GO_MAGIC = b"\xff Go buildinf:"  # the start of a Go binary's .go.buildinfo section
_CHUNK = 8 << 20
_SCAN_MAX = 512 << 20


def _is_go(exe: str) -> bool:
    """An ELF file holding Go's build information (scanned in chunks that overlap)."""
    try:
        with open(exe, "rb") as binary:
            if binary.read(4) != b"\x7fELF":
                return False
            tail = b""
            for _ in range(_SCAN_MAX // _CHUNK):
                chunk = binary.read(_CHUNK)
                if not chunk:
                    return False
                if GO_MAGIC in tail + chunk:
                    return True
                tail = chunk[-len(GO_MAGIC):]
    except OSError:
        return False
    return False


def runtime_notes(exe: str, mapped: tuple[str, ...]) -> list[str]:
    """What keeps this program from an exact replay, if it is one of those runtimes."""
    notes = []
    if _is_go(exe):
        notes.append(
            "a Go program: its runtime reads the clock through the vDSO itself (libc's "
            "clock_gettime, which the recorder probes, is not called), so those reads are "
            "synthesized here, and its scheduler starts and parks threads by them and by "
            "races between its threads in user space: an exact replay may diverge at a "
            "clone or futex the recording ordered otherwise")
    if any(path.endswith("/libjvm.so") for path in mapped):
        notes.append(
            "a HotSpot JVM: it reserves more address space than the sandbox's RLIMIT_AS "
            "(8 GiB), so glibc gives its threads other malloc arenas than recorded, and it "
            "acts on clock reads HotSpot makes through the vDSO from its own code (not "
            "recorded; e.g. it re-reads its cgroup memory limit when a cached value "
            "expires): an exact replay diverges in one of its threads where those differ. "
            "It also maps a file it writes at start (/tmp/hsperfdata_*: -XX:-UsePerfData)")
    return notes


__all__ = ["runtime_notes"]
