"""Options shared by ``kprobe record`` and ``kprobe run``, and the agent they build."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kprobe.capture_agent.agent import AgentConfig, default_spool_dir
from kprobe.capture_agent.families.base import CAPTURE_MODES, DEFAULT_CAPTURE, CaptureMode
from kprobe.capture_agent.redaction import RedactionRules
from kprobe.capture_agent.targets import Targets
from kprobe.commands._common import add_lake_option, lake_settings
from kprobe.errors import CommandError


def add_agent_options(parser: argparse.ArgumentParser, *, otlp_default: int | None,
                      metrics_default: int | None) -> None:
    add_lake_option(parser)
    parser.add_argument("--payloads", action="store_true",
                        help="also record the bytes syscalls of targets write to memory "
                        "(replay input)")
    parser.add_argument("--payload-cap", type=_size, default=64 << 10, metavar="SIZE",
                        help="bytes kept per payload region, e.g. 64K (default), 1M; a longer "
                        "one is cut and flagged truncated (a replay cannot serve what was cut)")
    parser.add_argument("--file-reads", choices=("identity", "bytes"), default="identity",
                        help="with --payloads, how reads of regular files are recorded: by "
                        "the file's identity, each version's content stored once in the "
                        "lake whatever its size (default), or by their bytes, cut at "
                        "--payload-cap like any payload")
    parser.add_argument("--file-max", type=_size, default=64 << 20, metavar="SIZE",
                        help="largest file version stored for reads by identity (default "
                        "64M); a read of a bigger one is recorded without its content")
    parser.add_argument("--no-vdso-clocks", action="store_true",
                        help="with --payloads, do not record clock_gettime calls libc answers "
                        "through the vDSO (uprobes: ~22 us per clock read here); a replay then "
                        "interpolates those clock values")
    parser.add_argument("--vdso-patch", action="store_true",
                        help="with --payloads, record targets' clock reads by rewriting their "
                        "vDSO clock functions into syscalls (each target's threads are "
                        "stopped once for it) instead of uprobes on libc: ~0.4 us per clock "
                        "read instead of ~1 us, and gettimeofday, time and runtimes that call "
                        "the vDSO themselves (Go, HotSpot) are recorded too")
    protect = parser.add_argument_group(
        "protecting what is recorded (before anything reaches the lake)")
    protect.add_argument("--redact-env", action="append", default=[], metavar="NAME_GLOB",
                         help="also redact variables (and --name=value arguments) whose name "
                         "matches, e.g. 'STRIPE_*' (repeatable; $KPROBE_REDACT_ENV, comma-"
                         "separated); always redacted: *KEY*, *SECRET*, *TOKEN*, *PASSWORD*, "
                         "*PASSWD*, *CREDENTIAL*, *PRIVATE* and connection-string passwords")
    protect.add_argument("--keep-env", action="append", default=[], metavar="NAME_GLOB",
                         help="never redact variables whose name matches, e.g. "
                         "'PUBLIC_KEY_ID' (repeatable; $KPROBE_KEEP_ENV)")
    protect.add_argument("--no-mask-pans", action="store_true",
                         help="keep card numbers in payloads as they are (masked by default: "
                         "first 6 and last 4 digits kept; e.g. when payloads are encrypted "
                         "and needed verbatim; $KPROBE_MASK_PANS=0)")
    protect.add_argument("--payload-key-file", metavar="PATH",
                         help="encrypt payloads at rest for this key file's active public key "
                         "(`kprobe lake new-key --public-out`; $KPROBE_PAYLOAD_KEY_FILE)")
    parser.add_argument("--families", default="", metavar="LIST",
                        help="comma-separated probe families (default: all built)")
    parser.add_argument("--flush-interval", type=float, default=1.0, metavar="SECONDS",
                        help="write a batch to the lake this often (default 1 s)")
    parser.add_argument("--min-offcpu-ms", type=float, default=1.0,
                        help="record blocked intervals of targets at least this long (with "
                        "evidence capture: the shortest off-CPU interval of any thread "
                        "whose switches and waking stay rows)")
    parser.add_argument("--capture", choices=CAPTURE_MODES,
                        default=os.environ.get("KPROBE_CAPTURE") or DEFAULT_CAPTURE,
                        help=f"default {DEFAULT_CAPTURE} ($KPROBE_CAPTURE). evidence: a "
                        "context switch, waking and TCP send/receive is a row only where it "
                        "bounds an off-CPU interval of at least --min-offcpu-ms (and TCP "
                        "rows of targets and their peers), per-thread and per-socket sums "
                        "per --slice-ms for the rest (tables cpu_slices, net_slices); full: "
                        "a row for each of them on the node")
    parser.add_argument("--slice-ms", type=float, default=10.0, metavar="MS",
                        help="with evidence capture, the time slice of the sums "
                        "(default 10 ms; 1 ms to 60 s)")
    parser.add_argument("--spool-dir", type=Path, default=None,
                        help="where batches wait while the lake is unreachable "
                        "(default $KPROBE_SPOOL or /var/lib/kprobe/spool)")
    parser.add_argument("--otlp-host", default="127.0.0.1", metavar="ADDR",
                        help="address of the OTLP receivers (default 127.0.0.1; 0.0.0.0 or "
                        ":: for spans from other hosts or pods)")
    parser.add_argument("--otlp-port", type=_port, default=otlp_default,
                        help="OTLP/HTTP span receiver port (0: any free port)")
    parser.add_argument("--otlp-grpc-port", type=_port, default=None, metavar="PORT",
                        help="also receive OTLP/gRPC on this port (4317 is the SDKs' "
                        "default; 0: any free port; default: off)")
    parser.add_argument("--no-otlp", action="store_true", help="do not receive spans")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                        help="address of the Prometheus metrics endpoint (default 127.0.0.1)")
    parser.add_argument("--metrics-port", type=_port, default=metrics_default,
                        help="Prometheus metrics port (0: any free port)")
    parser.add_argument("--no-metrics", action="store_true",
                        help="serve no Prometheus metrics")


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="target this process and its descendants (repeatable)")
    parser.add_argument("--comm", action="append", default=[],
                        help="target processes with this task name (repeatable)")
    parser.add_argument("--cgroup", action="append", default=[],
                        help="target processes in this cgroup v2 path (repeatable)")
    parser.add_argument("--all", action="store_true", dest="target_all",
                        help="target every process (expensive)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port, 0 to 65535")
    return int(text)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = text.rstrip("KkMmGgBb"), text[len(text.rstrip("KkMmGgBb")):].upper().rstrip("B")
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes, e.g. 65536, 64K or 1M")
    return int(number) * units[unit]


def _capture(mode: str) -> CaptureMode:
    if mode == "full":
        return "full"
    if mode == "evidence":
        return "evidence"
    raise CommandError(f"--capture {mode!r} ($KPROBE_CAPTURE?): expected full or evidence")


def _slice_ns(ms: float) -> int:
    if not 1.0 <= ms <= 60_000.0:
        raise CommandError(f"--slice-ms {ms:g}: expected 1 to 60000")
    return int(ms * 1_000_000)


def require_root() -> None:
    if os.geteuid() != 0:
        raise CommandError("capture needs root (loading BPF programs): run with sudo")


def _globs(given: list[str], variable: str) -> tuple[str, ...]:
    from_env = [g.strip() for g in os.environ.get(variable, "").split(",") if g.strip()]
    return tuple(from_env + [g for g in given if g.strip()])


def agent_config(args: argparse.Namespace, targets: Targets) -> AgentConfig:
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    lake = lake_settings(args)
    if args.payload_key_file:
        lake = lake.model_copy(update={"payload_key_file": args.payload_key_file})
    mask_env = os.environ.get("KPROBE_MASK_PANS", "1").strip().lower()
    return AgentConfig(
        lake=lake,
        redaction=RedactionRules(redact=_globs(args.redact_env, "KPROBE_REDACT_ENV"),
                                 keep=_globs(args.keep_env, "KPROBE_KEEP_ENV")),
        mask_pans=not args.no_mask_pans and mask_env not in ("0", "false", "no", "off"),
        targets=targets,
        families=families,
        payloads=args.payloads,
        payload_cap=args.payload_cap,
        vdso_clocks=not args.no_vdso_clocks,
        vdso_patch=args.vdso_patch and not args.no_vdso_clocks,
        file_reads=args.file_reads,
        file_max=args.file_max,
        flush_interval_s=args.flush_interval,
        min_offcpu_ns=int(args.min_offcpu_ms * 1_000_000),
        capture=_capture(args.capture),
        slice_ns=_slice_ns(args.slice_ms),
        spool_dir=args.spool_dir or default_spool_dir(),
        otlp_port=None if args.no_otlp else args.otlp_port,
        otlp_grpc_port=None if args.no_otlp else args.otlp_grpc_port,
        bind_host=args.otlp_host,
        metrics_host=args.metrics_host,
        metrics_port=None if args.no_metrics else args.metrics_port,
    )
