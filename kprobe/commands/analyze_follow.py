"""``kprobe analyze --follow``: the continuous analysis loop of the command (compute/follow.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from kprobe.commands._common import dumps, lake_settings
from kprobe.compute.analysis import WindowOutput
from kprobe.compute.follow import Follower, FollowOptions
from kprobe.compute.settings import ComputeSettings
from kprobe.errors import CommandError
from kprobe.lake import resolve
from kprobe.lake.errors import TimeSpecError
from kprobe.lake.timespec import format_instant, parse_duration, parse_instant

if TYPE_CHECKING:
    from kprobe.compute.export_otlp import FindingsExporter


def _duration(option: str, text: str) -> int:
    try:
        return parse_duration(text)
    except TimeSpecError as err:
        raise CommandError(f"{option}: {err}") from None


def follow(args: argparse.Namespace, settings: ComputeSettings,
           exporter: FindingsExporter | None) -> int:
    if args.end is not None:
        raise CommandError("--to cannot be used with --follow (it runs until stopped)")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise CommandError(f"--metrics-port {args.metrics_port}: not a port (0-65535)")
    options = FollowOptions(
        start_ns=parse_instant(args.start or "now"), window_ns=settings.window_ns,
        grace_ns=_duration("--grace", args.grace),
        node_timeout_ns=_duration("--node-timeout", args.node_timeout),
        late_horizon_ns=_duration("--late-horizon", args.late_horizon),
        poll_s=_duration("--poll", args.poll) / 1e9,
        nodes=tuple(sorted(set(args.node or ()))),
        # auto: Ray when a cluster is named, else this process (one window at a time)
        executor="ray" if args.executor == "ray" or (
            args.executor == "auto" and settings.ray_address is not None) else "local")
    location = resolve(lake_settings(args))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    follower: Follower

    def done(output: WindowOutput, again: bool) -> None:
        exported = 0
        if exporter is not None:
            try:
                exported = exporter.export_window(location, output.window.id, settings)
                follower.stats.exported += exported
            except Exception as err:  # noqa: BLE001 - an endpoint down must not stop analysis
                follower.stats.export_errors += 1
                logging.getLogger(__name__).warning("OTLP export of %s: %s",
                                                    output.window.id, err)
        s = output.summary
        if args.format == "json":
            print(dumps({**s, "graph": output.graph_uri, "reanalysed": again,
                              "exported": exported}), flush=True)
        else:
            print(f"{output.window.id}: {s.get('spans', 0)} spans, {s.get('failures', 0)} "
                  f"failures, {s.get('root_causes', 0)} root causes"
                  f"{' (re-analysed: late rows)' if again else ''}", flush=True)

    follower = Follower(location, settings, options, on_done=done)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = None
    if args.metrics_port is not None:
        from kprobe.capture_agent.metrics import MetricsServer
        from kprobe.compute.follow_metrics import FollowCollector

        try:
            server = MetricsServer(FollowCollector(follower.stats), args.metrics_host,
                                   args.metrics_port)
        except OSError as err:
            raise CommandError(f"metrics on {args.metrics_host}:{args.metrics_port}: "
                               f"{err.strerror or err}") from None
        print(f"metrics on http://{args.metrics_host}:{server.port}/metrics", file=sys.stderr,
              flush=True)
    print(f"following {location.root} from {format_instant(follower.next_start)}", file=sys.stderr,
          flush=True)
    try:
        follower.run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0
