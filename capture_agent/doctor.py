"""Can this host run the capture agent? One check per prerequisite, each with a reason.

``run_checks()`` tries things rather than guessing from versions: it loads a trivial
program, creates and maps a ring buffer, loads every compiled sensor and attaches each of
its programs on its own (then detaches everything), and compares the record layouts with
the objects' BTF. It never raises; a failure is a Check with ``ok=False``.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kprobe.capture_agent import bpf_elf, libbpf
from kprobe.capture_agent.errors import BpfError
from kprobe.capture_agent.families import FAMILIES
from kprobe.capture_agent.layouts import EVENT_HEADER, Family, layout_differences
from kprobe.capture_agent.ringbuf import RingReader
from kprobe.capture_agent.sensor import Sensor, SensorSpec, object_path
from kprobe.capture_agent.verifier import INSN_BUDGET, STACK_BUDGET, verified_chain

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
TRACEFS_PATHS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # False: informational, the agent works without it


def _errno_text(err: int) -> str:
    return f"{errno_mod.errorcode.get(err, '?')} ({os.strerror(err)})" if err else "error"


def check_btf() -> Check:
    if VMLINUX_BTF.is_file() and os.access(VMLINUX_BTF, os.R_OK):
        size = VMLINUX_BTF.stat().st_size
        return Check("kernel BTF", True, f"Linux {platform.release()}; BTF from the kernel "
                     f"itself, {VMLINUX_BTF} ({size // 1024} KiB)")
    return Check("kernel BTF", False, f"{VMLINUX_BTF} missing: CO-RE objects cannot relocate "
                 "(kernel built without CONFIG_DEBUG_INFO_BTF)")


def check_tracefs() -> Check:
    mounts = Path("/proc/mounts").read_text(errors="replace").split("\n")
    mounted = [line.split()[1] for line in mounts if line.split()[2:3] == ["tracefs"]]
    if mounted:
        return Check("tracefs", True, f"mounted at {', '.join(mounted)}", required=False)
    return Check("tracefs", False, "not mounted: classic tracepoint/... programs cannot attach "
                 "(mount -t tracefs nodev /sys/kernel/tracing); tp_btf programs do not need it",
                 required=False)


def check_bpf_permission() -> Check:
    try:
        fd = libbpf.prog_load_trivial()
    except OSError as e:
        hint = " (run as root or grant CAP_BPF+CAP_PERFMON)" if e.errno == errno_mod.EPERM else ""
        return Check("BPF permission", False,
                     f"loading a trivial program failed: {_errno_text(e.errno or 0)}{hint}")
    os.close(fd)
    return Check("BPF permission", True, f"trivial program loaded (libbpf {libbpf.version()})")


def check_ringbuf() -> Check:
    size = 64 * 1024
    try:
        fd = libbpf.map_create(libbpf.BPF_MAP_TYPE_RINGBUF, "kprobe_doctor", 0, 0, size)
    except OSError as e:
        return Check("ring buffer", False, f"BPF_MAP_TYPE_RINGBUF create failed: "
                     f"{_errno_text(e.errno or 0)} (needs Linux >= 5.8)")
    try:
        reader = RingReader(fd, size, np.dtype([("hdr", EVENT_HEADER)]), "doctor")
        empty = len(reader.drain()) == 0
        reader.close()
    except OSError as e:
        return Check("ring buffer", False, f"ring created but mmap failed: "
                     f"{_errno_text(e.errno or 0)}")
    finally:
        os.close(fd)
    return Check("ring buffer", empty, "created, mapped and drained a 64 KiB ring")


def check_layouts(family: Family) -> Check:
    name = f"{family.name} layouts"
    path = object_path(family.object_file)
    try:
        with libbpf.Btf(str(path)) as btf:
            diffs = [
                f"{struct}: {d}"
                for struct, dt in {"event_header": EVENT_HEADER, **family.structs}.items()
                for d in layout_differences(
                    [(f.name, f.offset, f.size, f.kind) for f in btf.struct_fields(struct)],
                    btf.struct_size(struct), dt)
            ]
    except OSError as e:
        return Check(name, False, f"cannot read BTF of {path.name}: {e.strerror}")
    if diffs:
        return Check(name, False, f"{path.name} differs from the agent: {diffs[0]} "
                     f"(+{len(diffs) - 1} more); rebuild with `make bpf`")
    return Check(name, True, f"{len(family.structs)} record types match {path.name}")


def check_objects() -> Check:
    """Which compiler built the objects (one toolchain: all by the same one)."""
    builds: dict[str, list[str]] = {}
    for family in FAMILIES.values():
        path = object_path(family.object_file)
        try:
            build = bpf_elf.read(path).build or "an unknown compiler (no .kprobe.build)"
        except (OSError, BpfError):
            continue
        builds.setdefault(build, []).append(path.name)
    if not builds:
        return Check("BPF objects", False, "none built (run `make bpf`)")
    if len(builds) > 1:
        return Check("BPF objects", False, "built by different toolchains: " + "; ".join(
            f"{', '.join(names)}: {build}" for build, names in builds.items())
            + " (run `make bpf`)")
    build, names = next(iter(builds.items()))
    return Check("BPF objects", True, f"{len(names)} built by {build} "
                 f"(in {object_path('').resolve()})", required=False)


def check_sensor(family: Family, spec: SensorSpec | None = None) -> list[Check]:
    """Load the family's sensor, then attach each program alone: one Check per program."""
    path = object_path(family.object_file)
    if not path.exists():
        return [Check(f"{family.name} sensor", False, f"{path} not built (run `make bpf`)")]
    sensor = Sensor(spec or SensorSpec(family=family))
    try:
        sensor.load()
    except BpfError as e:
        return [Check(f"{family.name} sensor", False, str(e))]
    checks = [Check(f"{family.name} sensor", True,
                    f"{path.name} loaded (verifier passed{_margins(sensor, path)})")]
    for missing, fallback in sensor.fallbacks_used.items():
        checks.append(Check(f"{family.name} fallback", True,
                            f"{missing} cannot attach on this kernel; {fallback} records the "
                            "same instead", required=False))
    try:
        for program, section in sensor.programs():
            label = f"attach {section}"
            try:
                places = sensor.spec.uprobes.get(program)
                if places and sensor.spec.uprobes_per_process:
                    # attached per target process by the agent: tried on this one
                    sensor.attach_uprobes(os.getpid(), {program: places})
                    sensor.detach_uprobes(os.getpid())
                else:
                    sensor.attach_program(program)
                checks.append(Check(label, True, f"{family.name}/{program} works"))
            except OSError as e:
                checks.append(Check(label, False, f"{family.name}/{program} fails: "
                                    f"{_errno_text(e.errno or 0)}"))
            except BpfError as e:
                checks.append(Check(label, False, f"{family.name}/{program} fails: "
                                    f"{_errno_text(e.errno)}"))
    finally:
        sensor.close()
    return checks


def _margins(sensor: Sensor, path: Path) -> str:
    """'; deepest stack N of 512 bytes, M insns processed' from the verifier's own figures."""
    if not sensor.verifier_stats:
        return ""
    try:
        elf = bpf_elf.read(path)
        stack = max(verified_chain(elf, name, stats)
                    for name, stats in sensor.verifier_stats.items())
    except (OSError, BpfError, KeyError):
        return ""
    insns = max(s.processed_insns for s in sensor.verifier_stats.values())
    over = stack > STACK_BUDGET or insns > INSN_BUDGET
    return (f"; deepest stack chain {stack} of {bpf_elf.MAX_STACK} bytes, at most {insns:,} "
            f"insns processed of {bpf_elf.MAX_PROCESSED_INSNS:,}"
            + ("; OVER the project's margin" if over else ""))


ATTACH_KINDS = Family(name="attach kinds", object_file="attach_kinds.bpf.o", structs={})
_ATTACH_KIND_WHY = {
    "kprobe": "kprobes are not available to BPF here; kprobe uses tracepoints instead",
    "fentry": "fentry/fexit (BPF trampolines) are refused here; kprobe uses tp_btf instead",
}


def check_attach_kinds() -> list[Check]:
    """Each kind of attach point alone (kprobe, fentry, tracepoint, raw_tp, tp_btf).

    Informational: the agent only needs tp_btf (and tracepoints for some programs); this
    tells what else a future family could use on this kernel, and why not when it fails.
    """
    path = object_path(ATTACH_KINDS.object_file)
    if not path.exists():
        return [Check("attach kinds", False, f"{path} not built (run `make bpf`)",
                      required=False)]
    probe = Sensor(SensorSpec(family=ATTACH_KINDS))
    try:
        programs = [name for name, _ in _list_programs(probe)]
    except BpfError as e:
        return [Check("attach kinds", False, str(e), required=False)]
    checks = []
    for program in programs:
        kind = program.removeprefix("probe_")
        others = frozenset(p for p in programs if p != program)
        sensor = Sensor(SensorSpec(family=ATTACH_KINDS, disabled=others))
        try:
            sensor.load()
            sensor.attach_program(program)
            checks.append(Check(f"attach kind {kind}", True, "loads and attaches",
                                required=False))
        except BpfError as e:
            why = _ATTACH_KIND_WHY.get(kind, "")
            detail = f"refused: {_errno_text(e.errno)}" + (f"; {why}" if why else "")
            checks.append(Check(f"attach kind {kind}", False, detail, required=False))
        finally:
            sensor.close()
    return checks


def _list_programs(sensor: Sensor) -> list[tuple[str, str]]:
    """(name, section) of every program in the object, without loading any."""
    obj = sensor.open()
    try:
        return [(p.name, p.section) for p in obj.programs()]
    finally:
        obj.close()


# What kprobe's demo, tests and replays make and always remove; one still here was left by a
# killed run (kill -9, a crash, a power cut)
LEFTOVER_PREFIXES = ("kprobe-demo-", "kprobe-test-", "kprobe-replay-")


def check_leftovers(mounts: Path = Path("/proc/self/mounts")) -> Check:
    """Cgroups a killed kprobe run left behind (named by their prefixes), and zram swap
    devices in use (kprobe's demo makes one; a killed demo can leave it swapped on: it may
    also be the distribution's own, so this is only shown)."""
    found: list[str] = []
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] not in ("cgroup", "cgroup2"):
            continue
        root = Path(fields[1])
        for pattern in ("*", "*/*"):
            try:
                found += [str(d) for d in root.glob(pattern)
                          if d.is_dir() and d.name.startswith(LEFTOVER_PREFIXES)]
            except OSError:
                continue
    try:
        swaps = [line.split()[0] for line in
                 Path("/proc/swaps").read_text().splitlines()[1:] if line.strip()]
    except OSError:
        swaps = []
    zram = [s for s in swaps if Path(s).name.startswith("zram")]
    if not found and not zram:
        return Check("leftovers", True, "no kprobe cgroup, no zram swap",
                     required=False)
    parts = []
    if found:
        parts.append(f"{len(found)} kprobe cgroup(s): {', '.join(found[:4])}"
                     f"{' ...' if len(found) > 4 else ''} (none remain once no kprobe demo, "
                     "test or replay runs; a killed one's: kill what is in cgroup.procs, "
                     "then rmdir)")
    if zram:
        parts.append(f"zram swap in use: {', '.join(zram)} (if a killed `kprobe demo` made "
                     "it: swapoff, then echo N > /sys/class/zram-control/hot_remove)")
    return Check("leftovers", False, "; ".join(parts), required=False)


def run_checks() -> list[Check]:
    """Every check, in dependency order; BPF checks are skipped without BPF permission."""
    checks = [check_btf(), check_objects(), check_tracefs(), check_bpf_permission()]
    try:
        checks.insert(3, check_leftovers())
    except OSError as e:  # a doctor reports, it does not crash
        checks.insert(3, Check("leftovers", False, f"cannot look: {e}", required=False))
    if not checks[-1].ok:
        return [*checks, Check("BPF checks", False, "skipped: no BPF permission")]
    steps: list[Callable[[], list[Check]]] = [lambda: [check_ringbuf()], check_attach_kinds]
    for family in FAMILIES.values():
        steps.append(functools.partial(_one, check_layouts, family))
        steps.append(functools.partial(check_sensor, family, _full_spec(family)))
    for step in steps:
        try:
            checks.extend(step())
        except Exception as e:  # a doctor reports, it does not crash
            checks.append(Check("internal", False, f"{type(e).__name__}: {e}"))
    return checks


def _full_spec(family: Family) -> SensorSpec | None:
    """The syscalls sensor as `--payloads` loads it: its clock uprobes then attach to this
    machine's libc (without a place to attach, a uprobe program cannot be tried)."""
    if family.name != "syscalls":
        return None
    from kprobe.capture_agent.families import syscalls

    return syscalls.sensor_spec(syscalls.SyscallsConfig(capture_payloads=True))


def _one(check: Callable[[Family], Check], family: Family) -> list[Check]:
    return [check(family)]
