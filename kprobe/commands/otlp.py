"""``kprobe otlp``: receive OpenTelemetry spans (OTLP/HTTP, and OTLP/gRPC with ``--grpc-port``)
into the lake's ``spans``."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from kprobe.capture_agent.otlp import OtlpSettings, run_receiver
from kprobe.commands._common import add_lake_option, lake_settings
from kprobe.errors import CommandError
from kprobe.lake import LakeWriter, resolve


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "otlp",
        help="receive OpenTelemetry spans (OTLP/HTTP, OTLP/gRPC) into the lake",
        description="Serve POST /v1/traces (OTLP/HTTP, protobuf or JSON, optionally gzip) "
        "and, with --grpc-port, the OTLP/gRPC TraceService, and write every span to the "
        "lake's spans table, one commit per flush. Stops on SIGTERM or Ctrl+C after flushing. "
        "Defaults come from KPROBE_OTLP_* variables.",
    )
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $KPROBE_OTLP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="OTLP/HTTP port (default: $KPROBE_OTLP_PORT or 4318)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve OTLP/gRPC on this port (4317 is the SDKs' default; "
                        "0: any free port; default: $KPROBE_OTLP_GRPC_PORT or off)")
    add_lake_option(parser)
    parser.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                        help="largest request body, also after gzip (default: 16 MiB)")
    parser.add_argument("--flush-interval", type=float, default=None, metavar="SECONDS",
                        help="write buffered spans to the lake this often (default: 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("grpc_port", args.grpc_port),
            ("max_body_bytes", args.max_body_bytes),
            ("flush_interval_s", args.flush_interval),
        )
        if value is not None
    }
    try:
        settings = OtlpSettings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CommandError(f"invalid setting {where}: {first['msg']}") from None
    lake = lake_settings(args)
    writer = LakeWriter.from_settings(lake)
    writer.ensure_tables(["spans"])  # an unreachable lake fails here, in one line
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="kprobe otlp: %(message)s")
    logging.getLogger(__name__).info("writing spans to %s", resolve(lake).root)
    stats = run_receiver(settings, writer)
    dropped = sum(stats.dropped_spans.values())
    print(
        f"kprobe otlp: stopped; {stats.committed_spans} span(s) written in "
        f"{stats.committed_batches} commit(s), {stats.refused_spans} refused (buffer full), "
        f"{dropped} dropped",
        file=sys.stderr, flush=True,
    )
    return 1 if dropped else 0
