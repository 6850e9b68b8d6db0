"""``kprobe record``: run the capture agent until SIGINT/SIGTERM or ``--duration``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from kprobe.capture_agent.agent import Agent
from kprobe.capture_agent.targets import Targets
from kprobe.commands._agent_options import (
    add_agent_options,
    add_target_options,
    agent_config,
    require_root,
)
from kprobe.commands._common import add_format_option, dumps


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "record", help="record kernel events (and spans) into the lake",
        description="Run the capture agent (as root): eBPF probes on the targets (--pid, "
        "--comm, --cgroup or --all), an OTLP receiver for the services' spans, a batch "
        "written to the lake every --flush-interval, until SIGINT/SIGTERM or --duration. "
        "Everything is flushed on stop.")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: until SIGINT/SIGTERM)")
    add_target_options(parser)
    add_agent_options(parser, otlp_default=4318, metrics_default=9464)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_root()
    targets = Targets(args.pid, args.comm, args.cgroup, args.target_all)
    agent = Agent(agent_config(args, targets)).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # On stderr, also with --format json: scripts wait for this line to know capture is on.
    host = agent.config.bind_host
    extra = f", OTLP on {host}:{agent.otlp_port}" if agent.otlp_port else ""
    if agent.otlp_grpc_port:
        extra += f", OTLP/gRPC on {host}:{agent.otlp_grpc_port}"
    print(f"recording {', '.join(f.name for f in agent.families)} into "
          f"{agent.writer.location.root}{extra}; Ctrl+C stops", file=sys.stderr, flush=True)
    try:
        agent.run(stop, args.duration)
    finally:
        agent.stop()
    print_summary(agent, args.format)
    return 0


def print_summary(agent: Agent, fmt: str) -> None:
    stats = agent.sink.stats
    summary = {
        "events": agent.counters.events,
        "rows": dict(stats.committed_rows),
        "lost": {k: v for k, v in stats.lost_rows.items()},
        "kernel_drops": {f"{source}:{reason}": n
                         for (source, reason), n in agent.counters.kernel_drops.items()},
        "below_bound": dict(agent.counters.below_bound),
        "drain_gap_max_s": round(agent.counters.drain_gap_max_s, 3),
        "spooled_batches": len(agent.spool),
        "lake": agent.writer.location.root,
    }
    if fmt == "json":
        print(dumps(summary))
        return
    rows = ", ".join(f"{t} {n}" for t, n in sorted(stats.committed_rows.items())) or "none"
    print(f"rows written: {rows}", file=sys.stderr)
    lost = sum(stats.lost_rows.values()) + sum(agent.counters.kernel_drops.values())
    print(f"lost: {lost} (details in the `lost` table)" if lost else "lost: 0",
          file=sys.stderr)
    below = ", ".join(f"{source} {n}" for source, n in sorted(
        agent.counters.below_bound.items()) if n)
    if below:
        print(f"counted, not written (evidence capture: under the bound): {below}",
              file=sys.stderr)
    if summary["spooled_batches"]:
        print(f"{summary['spooled_batches']} batch(es) wait in the spool {agent.spool.directory}"
              " and upload at the next start", file=sys.stderr)
