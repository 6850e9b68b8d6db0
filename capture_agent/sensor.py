"""A sensor: the programs and maps of one compiled BPF object, loaded and unloaded as a unit.

Lifecycle (libbpf's): open -> size maps, share maps, set ``const volatile`` config,
choose programs -> load -> attach every chosen program -> drain rings -> close.
Any failure leaves nothing behind (links destroyed, object closed) and raises a typed
error from ``capture_agent.errors`` naming the program or map and the errno.

    with Sensor(spec) as sensor:          # load + attach
        sensor.add_target(pid)
        batch = sensor.ring("sched_events").drain()
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import platform
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from kprobe.capture_agent import bpf_elf, libbpf
from kprobe.capture_agent.errors import (
    BpfAttachError,
    BpfError,
    BpfLoadError,
    BpfMapError,
    BpfObjectError,
)
from kprobe.capture_agent.kernel_btf import attach_point_exists
from kprobe.capture_agent.layouts import (
    DROP_REASON_MAX,
    EVENT_KIND_MAX,
    DropReason,
    EventKind,
    Family,
)
from kprobe.capture_agent.ringbuf import RingReader
from kprobe.capture_agent.verifier import VerifierStats, failure_reason, limit_of, parse_stats

BPF_DIR = Path(__file__).resolve().parent / "bpf"


def object_path(object_file: str, directory: Path | None = None) -> Path:
    """Where a compiled object is: ``directory``, else ``$KPROBE_BPF_DIR`` (objects built
    elsewhere, e.g. by another compiler), else where ``make bpf`` puts them."""
    return (directory or Path(os.environ.get("KPROBE_BPF_DIR") or BPF_DIR)) / object_file


@dataclass(frozen=True)
class SensorSpec:
    """What to load: a family's object, its configuration and sizes.

    config:        ``const volatile`` globals (name -> int), set before load
    ring_bytes:    ring map name -> size (power of two, multiple of the page size)
    map_entries:   other map name -> max_entries
    shared_maps:   map name -> fd of an existing map to use instead (e.g. one `targets`
                   map for all sensors); the fd stays owned by the caller
    disabled:      programs not to load (e.g. a record kind switched off)
    uprobes:       program name -> (binary, file offset, retprobe) places it attaches to
                   (section "uprobe"/"uretprobe" carry none)
    uprobes_per_process: the uprobe programs are not attached with the others but per
                   process, by ``attach_uprobes(pid, places)``: a uprobe attached for every
                   process traps in every process that runs the probed code (~8 us a trap
                   on this VM), targets or not
    """

    family: Family
    config: Mapping[str, int] = field(default_factory=dict)
    ring_bytes: Mapping[str, int] = field(default_factory=dict)
    map_entries: Mapping[str, int] = field(default_factory=dict)
    shared_maps: Mapping[str, int] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    uprobes: Mapping[str, tuple[tuple[str, int, bool], ...]] = field(default_factory=dict)
    uprobes_per_process: bool = False
    object_dir: Path | None = None
    prefer_fallbacks: bool = False  # load the family's fallbacks even where the programs
                                    # they stand in for could attach (to test them here)

    @property
    def name(self) -> str:
        return self.family.name


class Sensor:
    def __init__(self, spec: SensorSpec) -> None:
        self.spec = spec
        self._obj: libbpf.BpfObject | None = None
        self._links: dict[str, libbpf.Link] = {}
        self._process_links: dict[int, list[libbpf.Link]] = {}
        self._rings: dict[str, RingReader] = {}
        self.verifier_stats: dict[str, VerifierStats] = {}  # per program, once loaded
        # program whose attach point this kernel lacks -> the fallback loaded instead
        self.fallbacks_used: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Sensor:
        self.load()
        try:
            self.attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    @property
    def attached(self) -> list[str]:
        return list(self._links)

    def open(self) -> libbpf.BpfObject:
        """Open the object and apply the spec (sizes, shared maps, config, programs)."""
        spec = self.spec
        path = object_path(spec.family.object_file, spec.object_dir)
        if not path.exists():
            raise BpfObjectError(f"sensor {spec.name}: {path} not found (run `make bpf`)",
                                 errno_mod.ENOENT)
        mark = libbpf.log_mark()
        try:
            obj = libbpf.BpfObject(str(path))
        except OSError as e:
            raise BpfObjectError(f"sensor {spec.name}: cannot open {path.name}: {e.strerror}",
                                 e.errno or 0, libbpf.log_since(mark)) from None
        try:
            for name, size in {**spec.ring_bytes, **spec.map_entries}.items():
                with self._map_errors(name, "resize "):
                    obj.map(name).max_entries = size
            for name, fd in spec.shared_maps.items():
                with self._map_errors(name, "share "):
                    obj.map(name).reuse_fd(fd)
            try:
                obj.set_rodata(dict(spec.config))
            except OSError as e:
                raise BpfObjectError(f"sensor {spec.name}: config: {e.strerror}",
                                     e.errno or 0) from None
            for prog in obj.programs():
                if prog.name in spec.disabled:
                    prog.autoload = False
            self.fallbacks_used = _choose_fallbacks(obj, spec.family.fallbacks,
                                                    spec.prefer_fallbacks)
        except BaseException:
            obj.close()
            raise
        return obj

    def load(self) -> None:
        if self._obj is not None:
            return
        obj = self.open()
        mark = libbpf.log_mark()
        try:
            # the verifier's summary (and its complaint, on a refusal) in a buffer per
            # program: libbpf's own retry log can be megabytes and is cut in its print
            obj.request_verifier_stats()
            obj.load()
        except OSError as e:
            log = libbpf.log_since(mark)
            program = _failed_program(log)
            log += obj.verifier_logs().get(program, "").splitlines()
            obj.close()
            raise BpfLoadError(self._load_failure(program, e.errno or 0, log),
                               e.errno or 0, log) from None
        for name, text in obj.verifier_logs().items():
            stats = parse_stats(text)
            if stats is not None:
                self.verifier_stats[name] = stats
        self._obj = obj

    def _load_failure(self, program: str, err: int, log: list[str]) -> str:
        """One line: which program, why, which limit, on which kernel, built by what."""
        reason = failure_reason(log)
        limit = limit_of(reason)
        path = object_path(self.spec.family.object_file, self.spec.object_dir)
        try:
            build = bpf_elf.read(path).build
        except (OSError, BpfError):
            build = ""
        return (f"sensor {self.spec.name}: program {program} did not load on Linux "
                f"{platform.release()}: {_errno_text(err)}"
                + (f"; verifier: {reason}" if reason else "")
                + (f" ({limit})" if limit else "")
                + (f"; {path.name} built by {build.split(';')[0]}" if build else ""))

    def programs(self) -> list[tuple[str, str]]:
        """(name, section) of every program that loads, in object order."""
        return [(p.name, p.section) for p in self._require().programs() if p.autoload]

    def attach(self) -> None:
        """Attach every loaded program; on a failure detach those already attached."""
        for name, _section in self.programs():
            try:
                self.attach_program(name)
            except BpfAttachError:
                self.detach()
                raise

    def attach_program(self, name: str) -> None:
        """Attach one program (at its section's attach point); BpfAttachError names it."""
        if name in self._links or any(k.startswith(f"{name}@") for k in self._links):
            return
        try:
            prog = self._require().program(name)
        except OSError as e:
            raise BpfAttachError(f"sensor {self.spec.name}: {e.strerror}", e.errno or 0) from None
        mark = libbpf.log_mark()
        try:
            places = self.spec.uprobes.get(name)
            if places is not None and self.spec.uprobes_per_process:
                return  # attach_uprobes(pid, ...) attaches it, process by process
            if places is None:
                self._links[name] = prog.attach()
            for binary, offset, retprobe in places or ():
                self._links[f"{name}@{offset:#x}"] = prog.attach_uprobe(binary, offset,
                                                                       retprobe)
        except OSError as e:
            raise BpfAttachError(
                f"sensor {self.spec.name}: program {name} ({prog.section}) did not attach:"
                f" {_errno_text(e.errno or 0)}",
                e.errno or 0, libbpf.log_since(mark),
            ) from None

    def attach_uprobes(self, pid: int,
                       places: Mapping[str, tuple[tuple[str, int, bool], ...]]) -> None:
        """Attach uprobe programs to ``places`` in process ``pid`` only (all or none).

        OSError (e.g. ESRCH: the process is gone) leaves nothing attached for ``pid``.
        """
        if pid in self._process_links:
            return
        obj = self._require()
        links: list[libbpf.Link] = []
        try:
            for name, prog_places in places.items():
                prog = obj.program(name)
                for binary, offset, retprobe in prog_places:
                    links.append(prog.attach_uprobe(binary, offset, retprobe, pid))
        except OSError:
            for link in links:
                link.destroy()
            raise
        self._process_links[pid] = links

    def detach_uprobes(self, pid: int) -> None:
        for link in self._process_links.pop(pid, []):
            link.destroy()

    @property
    def uprobe_pids(self) -> list[int]:
        """Processes with uprobes attached by ``attach_uprobes``."""
        return list(self._process_links)

    def detach(self) -> None:
        for pid in list(self._process_links):
            self.detach_uprobes(pid)
        for link in self._links.values():
            link.destroy()
        self._links.clear()

    def close(self) -> None:
        self.detach()
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    # -- maps --------------------------------------------------------------------------------

    def map_fd(self, name: str) -> int:
        return self._map(name).fd

    def ring(self, name: str) -> RingReader:
        """The reader of ring map ``name`` (created on first use, closed with the sensor)."""
        if name not in self._rings:
            dtype = self.spec.family.rings.get(name)
            if dtype is None:
                raise BpfMapError(f"sensor {self.spec.name}: {name} is not a known ring")
            m = self._map(name)
            if m.type != libbpf.BPF_MAP_TYPE_RINGBUF:
                raise BpfMapError(f"sensor {self.spec.name}: map {name} is not a ring buffer")
            try:
                self._rings[name] = RingReader(m.fd, m.max_entries, dtype, name)
            except OSError as e:
                raise BpfMapError(f"sensor {self.spec.name}: mmap ring {name}: {e.strerror}",
                                  e.errno or 0) from None
        return self._rings[name]

    def target_maps(self) -> dict[str, int]:
        """The maps that say who is a target, for another sensor's ``shared_maps``: the
        ``targets`` set and the ``target_hint`` filter the kernel checks first."""
        return {name: self.map_fd(name) for name in TARGET_MAPS}

    def add_targets(self, tgids: Iterable[int]) -> None:
        """Capture these processes in detail (their future children follow)."""
        fd = self.map_fd("targets")
        hint = self.map_fd("target_hint")
        with self._map_errors("targets"):
            for tgid in tgids:
                # the hint first: the kernel skips `targets` for a slot still 0
                libbpf.map_update(hint, _u32(tgid % TARGET_HINT_SLOTS), b"\x01")
                libbpf.map_update(fd, _u32(tgid), b"\x01")

    def remove_targets(self, tgids: Iterable[int]) -> None:
        fd = self.map_fd("targets")
        with self._map_errors("targets"):
            for tgid in tgids:
                libbpf.map_delete(fd, _u32(tgid))

    def targets(self) -> list[int]:
        fd = self.map_fd("targets")
        with self._map_errors("targets"):
            keys = libbpf.map_keys(fd, 4)
        return sorted(struct.unpack("<I", k)[0] for k in keys)

    def drops(self) -> dict[EventKind | int, int]:
        """Records lost in the kernel so far, per event kind, whatever the reason
        (cumulative, nonzero only)."""
        out: dict[EventKind | int, int] = {}
        for (kind, _), count in self.drop_reasons().items():
            out[kind] = out.get(kind, 0) + count
        return out

    def drop_reasons(self) -> dict[tuple[EventKind | int, DropReason], int]:
        """Records lost in the kernel so far, per event kind and reason (cumulative,
        nonzero only)."""
        fd = self.map_fd("drops")
        with self._map_errors("drops"):  # one syscall for the whole array (every report)
            raw = libbpf.array_values(fd, DROP_REASON_MAX * EVENT_KIND_MAX, 8)
        counts = np.frombuffer(raw, "<u8")
        out: dict[tuple[EventKind | int, DropReason], int] = {}
        for index in np.flatnonzero(counts).tolist():
            reason, kind = divmod(index, EVENT_KIND_MAX)
            out[(_kind(kind), DropReason(reason))] = int(counts[index])
        return out

    # -- internals ---------------------------------------------------------------------------

    def _require(self) -> libbpf.BpfObject:
        if self._obj is None:
            raise BpfError(f"sensor {self.spec.name} is not loaded")
        return self._obj

    def _map(self, name: str) -> libbpf.Map:
        try:
            return self._require().map(name)
        except OSError as e:
            raise BpfMapError(f"sensor {self.spec.name}: {e.strerror}", e.errno or 0) from None

    @contextlib.contextmanager
    def _map_errors(self, name: str, what: str = "") -> Iterator[None]:
        """OSError from a map operation -> BpfMapError naming the sensor and map."""
        try:
            yield
        except OSError as e:
            raise BpfMapError(f"sensor {self.spec.name}: {what}map {name}: {e.strerror}",
                              e.errno or 0) from None


def _choose_fallbacks(obj: libbpf.BpfObject, fallbacks: Mapping[str, str],
                      prefer: bool = False) -> dict[str, str]:
    """Each fallback program loads only where the program it stands in for cannot (its
    attach point is missing from this kernel's BTF), or with ``prefer``; returns
    {replaced: fallback}."""
    programs = {p.name: p for p in obj.programs()}
    used: dict[str, str] = {}
    for fallback, preferred in fallbacks.items():
        fb, pref = programs.get(fallback), programs.get(preferred)
        if fb is None:
            continue
        if pref is not None and pref.autoload and (
                prefer or attach_point_exists(pref.section) is False):
            pref.autoload = False
            if fb.autoload:
                used[preferred] = fallback
        else:
            fb.autoload = False
    return used


# common.h: the targets map and its filter (slot tgid % TARGET_HINT_SLOTS, never cleared)
TARGET_MAPS = ("targets", "target_hint")
TARGET_HINT_SLOTS = 32768


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _kind(index: int) -> EventKind | int:
    try:
        return EventKind(index)
    except ValueError:
        return index


def _errno_text(err: int) -> str:
    return f"{errno_mod.errorcode.get(err, '?')} ({os.strerror(err)})"


def _failed_program(log: list[str]) -> str:
    """The program libbpf names in its load-failure message, else '?'."""
    for line in log:
        # "libbpf: prog 'on_sched_switch': BPF program load failed: Permission denied"
        if "prog '" in line and "failed" in line:
            return line.split("prog '", 1)[1].split("'", 1)[0]
    return "?"
