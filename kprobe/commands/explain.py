"""``kprobe explain TXN``: a transaction as a causal chain, business event to kernel event."""

from __future__ import annotations

import argparse

from kprobe.commands._common import add_format_option, add_lake_option, open_lake
from kprobe.commands._explain_text import render
from kprobe.commands.analyze import compute_settings
from kprobe.compute.explain import explain
from kprobe.compute.explain_model import Explanation
from kprobe.lake.timespec import parse_instant


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "explain",
        help="explain a transaction: from the business event down to the kernel event",
        description="Find the transaction (a business id such as a payment id, a trace id "
        "or a span id) in the analysed windows and print the chain from the business event "
        "at the top to the kernel event at the bottom, with durations, the processes that "
        "drove each kernel episode, and the root cause of a failure. Run kprobe analyze "
        "for the time range first.",
    )
    parser.add_argument("txn", metavar="TXN_OR_TRACE_ID",
                        help="payment id (or other business id), trace id or span id")
    parser.add_argument("--window", action="append", default=None, metavar="WINDOW_ID",
                        help="only this analysed window (repeatable)")
    parser.add_argument("--from", dest="start", default=None, metavar="TIME",
                        help="only windows ending after this time (now, -15m, RFC 3339, "
                        "epoch with a unit)")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME",
                        help="only windows starting before this time")
    add_lake_option(parser)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = compute_settings()
    results = explain(
        open_lake(args), args.txn, settings, window_ids=args.window,
        start_ns=parse_instant(args.start) if args.start else None,
        end_ns=parse_instant(args.end) if args.end else None)
    if args.format == "json":
        print(Explanation(query=args.txn, transactions=results).model_dump_json())
        return 0
    print(render(results), end="")
    return 0
