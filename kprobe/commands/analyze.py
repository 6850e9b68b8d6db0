"""``kprobe analyze --from T --to T``: build the causal graph of every window in a range."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kprobe.commands._common import (
    add_format_option,
    add_lake_option,
    dumps,
    open_lake,
    recorded_in,
)
from kprobe.commands.sql import render_table
from kprobe.compute.analysis import WindowOutput
from kprobe.compute.ray_driver import analyze_windows
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import split
from kprobe.errors import CommandError
from kprobe.lake import format_instant, parse_duration, parse_instant

if TYPE_CHECKING:
    from kprobe.compute.export_otlp import FindingsExporter


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "analyze",
        help="attribute every slow or failed operation in a time range to its causes",
        description="Cut [--from, --to) into windows (aligned to --window), and for each: "
        "rebuild what every thread was doing from sched/offcpu, lay the spans over it, "
        "attribute delays to memory pressure, CPU contention, disk, network, lock waits "
        "and remote calls, map spans to payments, settlements..., find root causes of "
        "failures, and publish a graph snapshot under {lake}/graphs/{window}/ and the "
        "edges in the causal_edges table. One window runs in-process; more run as Ray "
        "tasks (a local cluster unless --ray-address). Re-analysing a window replaces it.",
    )
    parser.add_argument("--from", dest="start", default=None, metavar="TIME",
                        help="start: RFC 3339 with a zone (2026-01-01T14:00:00Z), epoch with "
                        "a unit (1767276000s), now, or relative (--from=-15m); required "
                        "unless --follow (default then: now)")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME",
                        help="end (excl.); required unless --follow")
    parser.add_argument("--window", default=None, metavar="DURATION",
                        help="window length, e.g. 60s, 5m, 1m30s (default: 60s or "
                        "$KPROBE_COMPUTE_WINDOW_NS)")
    parser.add_argument("--node", action="append", default=None, metavar="NODE",
                        help="only this node (repeatable; default: all nodes together)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="Ray cluster to run on (default: $KPROBE_COMPUTE_RAY_ADDRESS, "
                        "$RAY_ADDRESS, or a local cluster)")
    parser.add_argument("--executor", choices=("auto", "local", "ray"), default="auto",
                        help="local: in this process; ray: Ray tasks even for one window; "
                        "auto: Ray when there is more than one window or an address")
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="CPUs of a local Ray cluster (default: all)")
    parser.add_argument("--rules", default=None, metavar="PATH",
                        help="domain rules file (YAML; default: the shipped rules)")
    follow = parser.add_argument_group(
        "continuous analysis",
        "--follow keeps running: each window is analysed once every live agent has flushed "
        "past its end plus --grace (agents write a flush marker to agent_meta), and again "
        "when late rows reach it (spans exported late, a node back with its spool). Windows "
        "run in this process (--executor ray: on one Ray cluster kept for the run). Stops on "
        "SIGINT/SIGTERM.")
    follow.add_argument("--follow", action="store_true",
                        help="analyse windows as they close, until stopped")
    follow.add_argument("--grace", default="10s", metavar="DURATION",
                        help="wait this long past a window's end for late spans (10s)")
    follow.add_argument("--node-timeout", default="2m", metavar="DURATION",
                        help="an agent silent this long no longer holds windows back (2m)")
    follow.add_argument("--late-horizon", default="15m", metavar="DURATION",
                        help="re-analyse windows this recent when late rows reach them (15m)")
    follow.add_argument("--poll", default="2s", metavar="DURATION",
                        help="how often to look at the lake (2s)")
    follow.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics (watermark, lag, windows) on this port")
    follow.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                        help="address of the metrics listener (127.0.0.1)")
    parser.add_argument("--export-otlp", default=None, metavar="ENDPOINT",
                        help="send each explained failure to this OTLP/HTTP endpoint "
                        "(http://host:4318) as spans on its own trace: root cause, driver, "
                        "kernel episodes with their times")
    add_lake_option(parser)
    add_format_option(parser)
    parser.set_defaults(func=run)


def compute_settings(**overrides: Any) -> ComputeSettings:
    """Settings from the environment with command-line overrides; bad values -> CommandError."""
    try:
        return ComputeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CommandError(f"invalid setting {where}: {first['msg']}") from None


def run(args: argparse.Namespace) -> int:
    settings = compute_settings(
        window_ns=parse_duration(args.window) if args.window else None,
        ray_address=args.ray_address, ray_num_cpus=args.num_cpus, rules_path=args.rules)
    exporter = _exporter(args.export_otlp)
    if args.follow:
        from kprobe.commands.analyze_follow import follow

        return follow(args, settings, exporter)
    if args.start is None or args.end is None:
        raise CommandError("--from and --to are required (or --follow)")
    start, end = parse_instant(args.start), parse_instant(args.end)
    windows = split(start, end, settings.window_ns, tuple(sorted(set(args.node or ()))),
                    settings.max_windows)
    location = open_lake(args)  # never creates a lake: it must hold kprobe tables
    found = recorded_in(location, start, end, tuple(sorted(set(args.node or ()))))
    if not any(found.values()):
        raise CommandError(f"nothing recorded from {format_instant(start)} to "
                           f"{format_instant(end)} in {location.root}: no spans and no "
                           "scheduler rows, so nothing was analysed (check --from/--to, "
                           "--node)")
    if not found["spans"]:
        print("kprobe analyze: no spans in the range: kernel episodes only, no transaction "
              "to explain", file=sys.stderr)

    def progress(output: WindowOutput) -> None:
        if args.format == "text" and len(windows) > 1:
            s = output.summary
            print(f"  {output.window.id}: {s.get('spans', 0)} spans, "
                  f"{s.get('failures', 0)} failures", file=sys.stderr)

    outputs, written = analyze_windows(location, windows, settings, executor=args.executor,
                                       on_done=progress)
    rows = [{**o.summary, "graph": o.graph_uri} for o in outputs]
    exported = sum(exporter.export_window(location, o.window.id, settings)
                   for o in outputs) if exporter is not None else None
    if args.format == "json":
        print(dumps({"windows": rows, "edges_written": written,
                          **({"exported": exported} if exported is not None else {})}))
        return 0
    import pyarrow as pa

    columns = ("window", "spans", "failures", "cause_edges", "episodes", "root_causes",
               "domain_events", "seconds", "graph")
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    sys.stdout.write(render_table(table, max_width=100))
    print(f"{written} causal edge(s) written to causal_edges")
    if exported is not None:
        print(f"{exported} explained failure(s) sent to {args.export_otlp}")
    return 0


def _exporter(endpoint: str | None) -> FindingsExporter | None:
    """The OTLP exporter of ``--export-otlp``; a bad endpoint is one line (exit 2)."""
    if endpoint is None:
        return None
    from kprobe.compute.export_otlp import FindingsExporter

    return FindingsExporter(endpoint)
