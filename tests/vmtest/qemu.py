"""QEMU for the matrix: the read-only root share (virtiofsd), the accelerator probe, and one
guest's run with a deadline and a log.

The guest sees this machine's whole root file system through virtiofs, exported read-only
(cache=always: the guests run a snapshot of the tree that nothing changes during the run):
virtiofsd runs in a private mount namespace on a read-only bind mount of ``/`` (Debian 12's
virtiofsd, QEMU's C one, has no read-only option). The guest writes into an overlay in its
own memory, so it cannot change a file of the host.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from tests.vmtest.errors import NoQemuError, VmtestError

QEMU = "qemu-system-x86_64"
VIRTIOFSD = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
Accel = Literal["kvm", "tcg"]

# Console on the first serial port; results on the second (no kernel messages there).
# loglevel=5: warnings reach the log, with the registers and stacks a lockup or a BUG prints
# after its one emergency line; a soft lockup prints every CPU's stack (what a hung guest
# was doing, in its log)
KERNEL_ARGS = "console=ttyS0 loglevel=5 panic=-1 softlockup_all_cpu_backtrace=1"


@dataclass(frozen=True)
class VmSpec:
    accel: Accel
    cpus: int
    memory_mib: int
    cpu_model: str = "max"
    tsc_khz: int | None = None  # the host's TSC frequency, which an emulated TSC runs at


def clock_args(spec: VmSpec) -> str:
    """How an emulated guest keeps time. Under TCG its TSC counts at the host's TSC rate,
    but the guest measures that rate against the emulated HPET at boot, and on a loaded
    host that once came out ~3x wrong (the guest's seconds ran 2.9 times faster than the
    host's, and every timing in the tests with them). Told the rate (``tsc_early_khz``) it
    keeps the TSC, so vDSO clock reads stay as on a real machine; not knowing it, the HPET
    (right, but every clock read becomes a system call).

    ``no_timer_check``: on a host at load 25, 6.1's boot-time check that the IO-APIC timer
    ticks saw too few ticks in the slow emulated guest and panicked ("IO-APIC + timer
    doesn't work!"); the timer works, the check is timing-based."""
    if spec.accel != "tcg":
        return ""
    if spec.tsc_khz:
        return f"no_timer_check tsc=reliable tsc_early_khz={spec.tsc_khz}"
    return "no_timer_check clocksource=hpet"


_TSC_MHZ = re.compile(r"tsc: (?:Refined TSC clocksource calibration:|Detected) "
                      r"(\d+)\.(\d{3}) MHz")


def tsc_khz_from_kernel_log(text: str) -> int | None:
    """The TSC frequency the host's kernel settled on (its last word on it), in kHz."""
    found = _TSC_MHZ.findall(text)
    if not found:
        return None
    mhz, fraction = found[-1]
    return int(mhz) * 1000 + int(fraction)


def tsc_khz_from_cpuinfo(text: str) -> int | None:
    """The "cpu MHz" of /proc/cpuinfo, when the kernel took the TSC's frequency from the
    CPU or hypervisor (flag tsc_known_freq; no frequency scaling, so it is the TSC's)."""
    flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*(\d+)\.(\d{3})", text, re.MULTILINE)
    if flags is None or mhz is None or "tsc_known_freq" not in flags[1].split():
        return None
    return int(mhz[1]) * 1000 + int(mhz[2])


def host_tsc_khz() -> int | None:
    """This host's TSC frequency: from its kernel log, else /proc/cpuinfo when the kernel
    knew it; None when neither says."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    found = tsc_khz_from_kernel_log(out.stdout) if out.returncode == 0 else None
    return found or tsc_khz_from_cpuinfo(Path("/proc/cpuinfo").read_text())


def find_qemu(dirs: Sequence[str] | None = None) -> str:
    """The QEMU binary in ``dirs`` (default: PATH and /usr/bin)."""
    if dirs is None:
        dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]
    for directory in dirs:
        path = Path(directory) / QEMU
        if path.exists() and os.access(path, os.X_OK):
            return str(path)
    raise NoQemuError(f"{QEMU} not found (apt-get install qemu-system-x86)")


def find_virtiofsd() -> str:
    for path in VIRTIOFSD:
        if Path(path).exists() and os.access(path, os.X_OK):
            return path
    raise NoQemuError("virtiofsd not found (Debian 12 ships it in qemu-system-common)")


def qemu_command(qemu: str, spec: VmSpec, kernel: Path, initrd: Path, results: Path,
                 root_socket: Path | None = None, scratch: Path | None = None,
                 extra_args: str = "") -> list[str]:
    """The QEMU command line of one guest: no network device (loopback only), serial
    console on stdout, results on a second serial port written to ``results``."""
    command = [
        qemu, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-accel", "kvm" if spec.accel == "kvm" else "tcg,thread=multi",
        "-cpu", spec.cpu_model, "-smp", str(spec.cpus), "-m", f"{spec.memory_mib}M",
        "-serial", "stdio", "-serial", f"file:{results}",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", " ".join(a for a in (KERNEL_ARGS, clock_args(spec), extra_args) if a),
    ]
    if root_socket is not None:
        # vhost-user needs the guest's memory shared with virtiofsd
        command += [
            "-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=root,path={root_socket}",
            "-device", "vhost-user-fs-pci,chardev=root,tag=hostroot",
        ]
    if scratch is not None:
        command += ["-drive", f"file={scratch},format=raw,if=virtio,cache=unsafe"]
    return command


class RootShare:
    """virtiofsd exporting ``/`` read-only on ``socket`` for one guest, while in use."""

    _SCRIPT = ('mount --bind / "$1" && mount -o remount,bind,ro "$1" && '
               'exec "$2" --socket-path="$3" '
               '-o source="$1",cache=always,sandbox=namespace,no_posix_lock,no_xattr '
               '-o log_level=warn')

    def __init__(self, socket: Path, mountpoint: Path, log: IO[str]) -> None:
        self.socket, self.mountpoint, self.log = socket, mountpoint, log
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RootShare:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             self._SCRIPT, "sh", str(self.mountpoint), find_virtiofsd(), str(self.socket)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._proc.poll() is not None:
                raise VmtestError(f"virtiofsd exited ({self._proc.returncode}) before its "
                                  f"socket appeared; see {self.log.name}")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise VmtestError(f"virtiofsd made no socket in 10 s; see {self.log.name}")
            time.sleep(0.02)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.socket.unlink(missing_ok=True)


@dataclass(frozen=True)
class VmRun:
    seconds: float
    exit_code: int | None  # None when it was killed at the deadline
    marker_seen: bool  # the ``stop_on`` text appeared on the console
    last_lines: tuple[str, ...]  # the console's last lines, for a reason on a timeout
    lockup: str = ""  # the guest kernel's soft lockup that stopped it, with where it spun
    crash: str = ""  # the guest kernel's first panic, oops, BUG or OOM kill line, if any


# A CPU stuck this long in the kernel is a hung guest: it is stopped then (its backtraces
# printed first), not at the deadline; a short lockup of a starved emulated vCPU recovers.
LOCKUP_GIVE_UP_S = 120
LOCKUP_GRACE_S = 10.0  # for every CPU's backtrace to reach the console
_LOCKUP = re.compile(r"soft lockup - CPU#(\d+) stuck for (\d+)s! \[(.*)\]")
_RIP = re.compile(r"RIP: 0010:(\S+)")
# a guest kernel's own words for why it stopped (panic=-1 and -no-reboot: a panic ends QEMU
# with exit 0, like a clean power-off); the first such line names the cause
_CRASH = re.compile(r"Kernel panic - not syncing.*|kernel BUG at .*|BUG: .*|Oops: .*|"
                    r"general protection fault.*|Out of memory: Killed process.*|"
                    r"invalid opcode: .*")
_FRAME = re.compile(r"^\[\s*[0-9.]+\]\s+(?:\? )?([A-Za-z_][\w.]*\+0x[0-9a-f]+/0x[0-9a-f]+)")


def lockup_summary(lines: Sequence[str]) -> str:
    """The first soft lockup of a guest console, in one line: which CPU, which task, and
    where each CPU was (its RIP, then the first frames of its stack)."""
    first = next((m for m in map(_LOCKUP.search, lines) if m), None)
    if first is None:
        return ""
    places: list[str] = []
    frames: list[str] = []
    for line in lines:
        rip = _RIP.search(line)
        if rip:
            if frames:
                places.append(" < ".join(frames))
            frames = [rip[1]]
        elif frames and len(frames) < 6 and (frame := _FRAME.match(line)):
            frames.append(frame[1])
    if frames:
        places.append(" < ".join(frames))
    where = "; ".join(dict.fromkeys(places)) or "no stack printed"
    return f"soft lockup of CPU#{first[1]} in task {first[3]}: {where}"


def run_vm(command: Sequence[str], log: IO[str], deadline_s: float,
           stop_on: str | None = None) -> VmRun:
    """Run QEMU until it exits, ``stop_on`` appears on its console, or the deadline;
    everything it prints goes to ``log``."""
    start = time.monotonic()
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen = threading.Event()
    tail: list[str] = []
    kernel: list[str] = []  # from the first soft lockup on
    hung_at: list[float] = []  # when a CPU had been stuck LOCKUP_GIVE_UP_S
    crashes: list[str] = []  # the kernel's crash lines, first ones kept

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").replace("\r", "")
            log.write(line)
            log.flush()
            if line.strip():
                tail.append(line.rstrip())
                del tail[:-20]
            if stop_on is not None and stop_on in line:
                seen.set()
            crash = _CRASH.search(line)
            if crash and len(crashes) < 5:
                crashes.append(crash[0].strip())
            lockup = _LOCKUP.search(line)
            if lockup or kernel:
                if len(kernel) < 2000:
                    kernel.append(line.rstrip())
                if lockup and int(lockup[2]) >= LOCKUP_GIVE_UP_S and not hung_at:
                    hung_at.append(time.monotonic())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    exit_code: int | None = None
    while True:
        remaining = deadline_s - (time.monotonic() - start)
        hung = bool(hung_at) and time.monotonic() - hung_at[0] > LOCKUP_GRACE_S
        if seen.is_set() or remaining <= 0 or hung:
            proc.kill()
            proc.wait()
            break
        try:
            exit_code = proc.wait(timeout=min(remaining, 0.2))
            break
        except subprocess.TimeoutExpired:
            continue
    reader.join(timeout=5)
    return VmRun(seconds=time.monotonic() - start, exit_code=exit_code,
                 marker_seen=seen.is_set(), last_lines=tuple(tail),
                 lockup=lockup_summary(kernel) if hung_at else "",
                 crash="; ".join(crashes))
