"""The node agent: sensors in the kernel, a flush loop, the lake sink, OTLP and metrics.

Life of a flush (every ``flush_interval_s``, and once more on stop): drain every ring of
every sensor into numpy batches, convert each batch to its lake table (vectorised), read
the in-kernel aggregates, and hand the tables to the sink, which commits one Delta batch per
table. Kernel drop counters and the sink's own losses become rows of the ``lost`` table, so
nothing is lost silently. A crash loses at most what was drained since the last flush.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from kprobe.capture_agent import procinfo, vdso_patch
from kprobe.capture_agent.clock import ClockSample, sample_offset
from kprobe.capture_agent.drainer import RingDrainer
from kprobe.capture_agent.errors import BpfLoadError, CaptureAgentError
from kprobe.capture_agent.families import FAMILIES, PROBE_FAMILIES, AgentOptions, ProbeFamily
from kprobe.capture_agent.families.base import DEFAULT_CAPTURE, CaptureMode
from kprobe.capture_agent.file_store import FileStore, FileStoreConfig
from kprobe.capture_agent.lake_sink import LakeSink
from kprobe.capture_agent.metrics import AgentCollector, AgentCounters, MetricsServer
from kprobe.capture_agent.process_probes import ProcessProbes, VdsoPatcher
from kprobe.capture_agent.protection import PayloadProtection, ProtectionConfig
from kprobe.capture_agent.redaction import RedactionRules
from kprobe.capture_agent.sensor import Sensor, object_path
from kprobe.capture_agent.spool import Spool
from kprobe.capture_agent.targets import Targets
from kprobe.lake import LakeSettings, LakeWriter, payload_keys
from kprobe.lake import blobs as lake_blobs
from kprobe.lake.errors import LakeError

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
CLOCK_RESAMPLE_S = 30.0


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or nothing elsewhere.

    glibc keeps the pages of freed blocks: what loading the sensors and kallsyms used
    (~35 MB) would stay resident for the agent's life. Trimmed once, after start. Not per
    flush: each flush would then fault its batches' pages in again (measured at 100k
    events/s: +1 % of a core for -4 MB of peak RSS).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


release_memory = _malloc_trim()


@dataclass
class AgentConfig:
    lake: LakeSettings
    targets: Targets = field(default_factory=Targets)
    families: tuple[str, ...] = ()  # empty: every family whose object is built
    payloads: bool = False
    payload_cap: int = 64 << 10  # bytes per payload region (syscalls.PAYLOAD_CAP_DEFAULT)
    vdso_clocks: bool = True  # with payloads: clock_gettime through the vDSO, by uprobes
    # with payloads: targets' vDSO clock reads made syscalls instead (vdso_patch.py)
    vdso_patch: bool = False
    flush_interval_s: float = 1.0
    drain_interval_s: float = 0.1  # rings are drained this often (and when over threshold)
    min_offcpu_ns: int = 1_000_000
    capture: CaptureMode = DEFAULT_CAPTURE  # families/base.py
    slice_ns: int = 10_000_000
    spool_dir: Path = Path("/var/lib/kprobe/spool")
    spool_max_bytes: int = 512 * 1024 * 1024
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    otlp_port: int | None = None  # None: no receiver; 0: any free port
    otlp_grpc_port: int | None = None  # OTLP/gRPC beside OTLP/HTTP (None: off; 0: any free)
    bind_host: str = "127.0.0.1"  # the OTLP receivers' address
    metrics_host: str = "127.0.0.1"
    # what is redacted from environments and command lines, and whether card numbers in
    # payloads are masked, before anything is written (capture_agent/protection.py)
    redaction: RedactionRules = field(default_factory=RedactionRules)
    mask_pans: bool = True
    # with payloads: reads of regular files by identity, each version's content stored
    # once in table blobs (capture_agent/file_store.py), or by their bytes as any payload
    file_reads: Literal["identity", "bytes"] = "identity"
    file_max: int = 64 << 20  # a bigger file version is not stored (its reads say so)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["lake"] = self.lake.lake
        out["spool_dir"] = str(self.spool_dir)
        return out


@dataclass
class LoadedFamily:
    probes: ProbeFamily
    sensor: Sensor

    @property
    def name(self) -> str:
        return self.probes.name


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.writer = LakeWriter.from_settings(config.lake)
        self.spool = Spool(config.spool_dir, config.spool_max_bytes)
        self.sink = LakeSink(self.writer, self.spool)
        # environments are kept only with payloads: a replay is their one use
        self.protection = PayloadProtection(ProtectionConfig(
            config.redaction, config.mask_pans, keep_env=config.payloads,
            payload_cap=config.payload_cap))
        self.files: FileStore | None = None
        if config.payloads and config.file_reads == "identity":
            location = self.writer.location
            keys = (payload_keys.load(location.payload_key_file)
                    if location.payload_key_file else None)
            self.files = FileStore(
                FileStoreConfig(max_file_bytes=config.file_max, mask_pans=config.mask_pans),
                present=lambda hour, names: self._blobs_present(hour, names), keys=keys)
        self.counters = AgentCounters()
        self.families: list[LoadedFamily] = []
        self.clock: ClockSample = sample_offset()
        self._last_clock = time.monotonic()
        self._reported_drops: dict[str, int] = {}
        self._metrics: MetricsServer | None = None
        self._drainer: RingDrainer | None = None
        self._probes: list[ProcessProbes] = []
        self._otlp: Any = None
        self._otlp_thread: threading.Thread | None = None
        self._otlp_grpc: Any = None
        self._otlp_sink: Any = None
        self.otlp_port: int | None = None
        self.otlp_grpc_port: int | None = None
        self.boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Agent:
        """Check the lake, load and attach every sensor, start the sink and servers."""
        self.writer.ensure_tables()  # an unreachable lake fails here, before any probe
        try:
            self._load_families()
            self._add_initial_targets()
            self._start_process_probes()
        except BaseException:
            self.close_sensors()
            raise
        self.sink.start()
        self._write_meta("start")
        if self.config.metrics_port is not None:
            self._metrics = MetricsServer(
                AgentCollector(self.counters, lambda: self.sink.stats, self.spool.size_bytes,
                               self.sink.queued),
                self.config.metrics_host, self.config.metrics_port)
        if self.config.otlp_port is not None:
            self._start_otlp()
        release_memory()
        return self

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        """Flush every interval until ``stop`` is set or ``duration_s`` has passed."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set():
            wait = self.config.flush_interval_s
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            stop.wait(wait)
            self.flush()

    def stop(self) -> None:
        """Final flush, then everything down; the sink commits (or spools) all it holds.

        The programs are detached first: the final flush then drains all they wrote, and
        what the kernel was still summing (evidence capture's open slices) is read whole."""
        try:
            for fam in self.families:
                fam.sensor.detach()
            self.flush()
            self._submit_tails()
            held = self.protection.release()  # exec regions still waiting for chunks
            if held is not None:
                self.sink.submit("syscall_data", held)
        finally:
            self.close_sensors()
            if self._otlp_grpc is not None:
                self._otlp_grpc.stop()
            if self._otlp is not None:
                self._otlp.should_exit = True
                if self._otlp_thread is not None:
                    self._otlp_thread.join(60)
            if self._otlp_sink is not None:
                self._otlp_sink.stop()
            self._write_meta("stop")
            self._report_losses()
            self.sink.stop()
            if self._metrics is not None:
                self._metrics.stop()

    def close_sensors(self) -> None:
        for probes in self._probes:
            probes.stop()
        self._probes = []
        if self._drainer is not None:
            self._drainer.stop()
            self._drainer = None
        for fam in self.families:
            fam.sensor.close()
        self.families = []

    # -- the flush ----------------------------------------------------------------------
    def flush(self) -> None:
        started = time.monotonic()
        if started - self._last_clock >= CLOCK_RESAMPLE_S:
            self.clock = sample_offset()
            self._last_clock = started
            self._write_meta("clock")
        drained_at = time.time_ns()  # what the rings held up to here is in this flush
        drained = self._drainer.take() if self._drainer is not None else {}
        for fam in self.families:
            for ring_name in fam.probes.rings:
                self.counters.ring_fill[ring_name] = fam.sensor.ring(ring_name).fill()
                batch = drained.get(f"{fam.name}/{ring_name}")
                if batch is not None and len(batch):
                    self.counters.add_events(ring_name, len(batch))
                    self._submit_converted(fam.probes, ring_name, batch)
            for table, rows in fam.probes.collect(fam.sensor, self.clock).items():
                self.sink.submit(table, rows)
        self.counters.clock_probe_processes = sum(p.attached for p in self._probes)
        self.counters.clock_probe_failures = sum(p.failed for p in self._probes)
        self._report_losses()
        for fam in self.families:
            self.counters.below_bound |= fam.probes.below_bound(fam.sensor)
        # The flush marker, the watermark of `kprobe analyze --follow` (compute/follow.py):
        # one committing thread commits (or spools) it after this flush's batches, so once it
        # is in the lake, so is every row this node drained before ``drained_at``.
        self.sink.submit("agent_meta", pa.table({
            "ts_ns": [drained_at], "kind": ["flush"], "boot_id": [self.boot_id]}))
        self.counters.flushes += 1
        self.counters.flush_seconds_last = time.monotonic() - started
        if self._drainer is not None:
            self.counters.drain_gap_max_s = self._drainer.max_gap_s

    def _submit_tails(self) -> None:
        for fam in self.families:
            try:
                tails = fam.probes.tails(fam.sensor, self.clock)
            except CaptureAgentError as err:
                log.error("cannot read what %s was still summing: %s", fam.name, err)
                self.sink.count_loss(fam.name, "tails_unreadable", 1)
                continue
            for table, rows in tails.items():
                if rows.num_rows:
                    self.sink.submit(table, rows)

    def _submit_converted(self, probes: ProbeFamily, ring: str, batch: np.ndarray) -> None:
        try:
            converted = probes.convert(ring, batch, self.clock)
        except CaptureAgentError as err:  # e.g. records of another layout version
            table = probes.rings[ring][0]
            log.error("cannot convert %d %s records: %s", len(batch), table, err)
            self.sink.count_loss(table, "convert_failed", len(batch))
            return
        for table, rows in converted.items():
            if table == "syscall_data" and self.files is not None:
                # the contents of the files read by identity, stored once, before the rows
                # that name them
                try:
                    rows, blobs, missing = self.files.process(rows)
                except (pa.ArrowException, ValueError, OSError) as err:  # rows keep blob ""
                    log.error("file store: %d rows: %s", rows.num_rows, err)
                    blobs, missing = None, {"file_store_failed": rows.num_rows}
                if blobs is not None:
                    self._submit_protected("blobs", blobs)
                for reason, count in missing.items():
                    self.sink.count_loss("blobs", reason, count)
            self._submit_protected(table, rows)

    def _blobs_present(self, hour: str, names: list[str]) -> set[str]:
        """Which names the lake's hour holds (another node's); none if it cannot say."""
        try:
            return lake_blobs.present(self.writer.location, hour, names)
        except LakeError as err:
            log.warning("cannot ask the lake which file contents it holds: %s", err)
            return set()

    def _submit_protected(self, table: str, rows: pa.Table) -> None:
        """Secrets redacted and card numbers masked first; rows that cannot be are lost
        (counted), never written as they are."""
        try:
            rows = self.protection.apply(table, rows)
        except (pa.ArrowException, ValueError) as err:
            log.error("cannot protect %d %s rows, dropped: %s", rows.num_rows, table, err)
            self.sink.count_loss(table, "protect_failed", rows.num_rows)
            return
        self.sink.submit(table, rows)

    def _report_losses(self) -> None:
        """New kernel drops and sink losses since the last report -> ``lost`` rows."""
        now = time.time_ns()
        sources: list[str] = []
        counts: list[int] = []
        reasons: list[str] = []
        for fam in self.families:
            for (kind, why), total in fam.sensor.drop_reasons().items():
                name = kind.name.lower() if hasattr(kind, "name") else str(kind)
                reason = why.name.lower()
                key = f"{fam.name}:{name}:{reason}"
                self.counters.kernel_drops[(name, reason)] = total
                delta = total - self._reported_drops.get(key, 0)
                if delta > 0:
                    self._reported_drops[key] = total
                    sources.append(name)
                    counts.append(delta)
                    reasons.append(reason)
            for (table, reason), n in fam.probes.take_losses().items():
                self.sink.count_loss(table, reason, n)
        for (table, reason), n in self.sink.take_new_losses().items():
            sources.append(table)
            counts.append(n)
            reasons.append(reason)
        if sources:
            log.warning("lost events: %s", dict(zip(sources, counts)))
            self.sink.submit("lost", pa.table({
                "ts_ns": pa.array(np.full(len(sources), now, np.int64)),
                "source": sources, "count": pa.array(counts, pa.int64()), "reason": reasons}))

    # -- set-up -------------------------------------------------------------------------
    def _family_names(self) -> list[str]:
        if self.config.families:
            unknown = set(self.config.families) - set(FAMILIES)
            if unknown:
                raise CaptureAgentError(f"unknown probe families: {', '.join(sorted(unknown))}; "
                                        f"known: {', '.join(FAMILIES)}")
            return list(self.config.families)
        return [n for n, f in FAMILIES.items() if object_path(f.object_file).exists()]

    def _load_families(self) -> None:
        names = self._family_names()
        if not names:
            raise CaptureAgentError("no BPF objects built: run `make bpf` (or `make setup`)")
        options = self._family_options()
        shared: dict[str, int] = {}
        for name in names:
            probes = PROBE_FAMILIES[name](options)
            sensor = Sensor(probes.sensor_spec(shared))
            try:
                sensor.load()
            except BpfLoadError as e:
                raise BpfLoadError(f"{e}; {self._meanwhile(name, names)}", e.errno,
                                   e.log) from None
            self.families.append(LoadedFamily(probes, sensor))
            if "targets" not in shared:
                # One targets map for every sensor: a target is a target everywhere.
                shared = sensor.target_maps()
            probes.loaded(sensor)
        for fam in self.families:
            fam.sensor.attach()
        self._drainer = RingDrainer(
            [(f"{fam.name}/{ring}", fam.sensor.ring(ring))
             for fam in self.families for ring in fam.probes.rings],
            self.config.drain_interval_s).start()

    def _meanwhile(self, failed: str, names: list[str]) -> str:
        """What a user can record until the kernel or the object is fixed."""
        others = [n for n in names if n != failed]
        ways = ["without --payloads"] if failed == "syscalls" and self.config.payloads else []
        if others:
            ways.append(f"without this family (--families {','.join(others)})")
        return ("meanwhile record " + " or ".join(ways) + "; " if ways else "") + (
            "`kprobe doctor` checks every family on this kernel")

    def _family_options(self) -> AgentOptions:
        """What this agent's configuration says to every family."""
        return AgentOptions(
            target_comms=tuple(self.config.targets.comms),
            target_cgroups=tuple(self.config.targets.cgroup_dirs()),
            target_all=self.config.targets.everything,
            min_offcpu_ns=self.config.min_offcpu_ns,
            capture=self.config.capture,
            slice_ns=self.config.slice_ns,
            payloads=self.config.payloads,
            payload_cap=self.config.payload_cap,
            vdso_clocks=self.config.vdso_clocks,
            files_by_identity=self.config.file_reads == "identity")

    def _add_initial_targets(self) -> None:
        """Processes already running that match the targets: add them and describe them."""
        if not self.families:
            return
        pids = self.config.targets.match_running()
        sensor = self.families[0].sensor
        if pids:
            sensor.add_targets(pids)
        infos = [procinfo.read_process(pid) for pid in pids]
        if infos:
            self._submit_protected("processes",
                                   procinfo.processes_table(infos, time.time_ns()))

    def add_target(self, pid: int) -> None:
        """Target a process started after the agent (``kprobe run``; with ``vdso_patch``,
        its vDSO is rewritten at its exec: ``vdso_patch.ExecWatch``)."""
        self.families[0].sensor.add_targets([pid])
        for probes in self._probes:
            probes.attach_now(pid)

    @property
    def vdso_patching(self) -> bool:
        """Are targets' clock reads recorded by rewriting their vDSO (``vdso_patch``)?"""
        return any(isinstance(p, VdsoPatcher) for p in self._probes)

    def vdso_rewritten_at_exec(self, pid: int, result: vdso_patch.PatchResult) -> None:
        """``kprobe run`` rewrote its child's vDSO at its exec (``vdso_patch.ExecWatch``)."""
        for probes in self._probes:
            if isinstance(probes, VdsoPatcher):
                probes.rewritten_at_exec(pid, result)

    def _start_process_probes(self) -> None:
        """Per-process uprobes (libc clock reads) for targets, as the targets change; or,
        with ``vdso_patch``, the targets' vDSO rewritten to make clock reads syscalls."""
        for fam in self.families:
            places_for = fam.probes.uprobe_places()
            if fam.sensor.spec.uprobes and fam.sensor.spec.uprobes_per_process and places_for:
                # with vdso_patch the uprobes stay for targets whose vDSO cannot be rewritten
                follow = VdsoPatcher if self._vdso_patch() else ProcessProbes
                self._probes.append(follow(fam.sensor, places_for).start())

    def _vdso_patch(self) -> bool:
        """Rewrite targets' vDSO (with payloads and libc clock reads recorded; not when every
        process is a target: that would stop every process of the node)."""
        return (self.config.payloads and self.config.vdso_clocks and self.config.vdso_patch
                and not self.config.targets.everything)

    def _write_meta(self, kind: str) -> None:
        self.sink.submit("agent_meta", pa.table({
            "ts_ns": [time.time_ns()], "kind": [kind], "kernel": [platform.release()],
            "agent_version": [AGENT_VERSION], "boot_id": [self.boot_id],
            "mono_to_epoch_ns": [self.clock.mono_to_epoch_ns],
            "config": [json.dumps(self.config.describe(), default=str)],
        }))

    def _start_otlp(self) -> None:
        from kprobe.capture_agent.otlp.grpc_server import OtlpGrpcServer
        from kprobe.capture_agent.otlp.server import (
            OtlpSettings,
            build_server,
            create_sink,
            listen_socket,
        )

        settings = OtlpSettings(host=self.config.bind_host, port=self.config.otlp_port or 0)
        sock = listen_socket(settings.host, settings.port)
        self.otlp_port = int(sock.getsockname()[1])
        writer = LakeWriter.from_settings(self.config.lake)
        # one sink for both protocols: the agent stops the receivers, then flushes it
        sink = self._otlp_sink = create_sink(settings, writer)
        if self.config.otlp_grpc_port is not None:
            try:
                self._otlp_grpc = OtlpGrpcServer(sink, settings.host, self.config.otlp_grpc_port,
                                                 max_message_bytes=settings.max_body_bytes)
            except BaseException:
                sock.close()
                raise
            self.otlp_grpc_port = self._otlp_grpc.port
        server, _sink = build_server(settings, writer, sink)
        sink.start()
        if self._otlp_grpc is not None:
            self._otlp_grpc.start()
        self._otlp = server
        self._otlp_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="otlp", daemon=True)
        self._otlp_thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise CaptureAgentError("OTLP receiver did not start within 10 s")


def default_spool_dir() -> Path:
    return Path(os.environ.get("KPROBE_SPOOL", "/var/lib/kprobe/spool"))
