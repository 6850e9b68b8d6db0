"""``kprobe doctor``: what works on this host for capture, what does not, and why."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from kprobe.commands._common import add_format_option


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "doctor", help="check this host can run the capture agent",
        description="Check, one line each, what capture needs on this host: root, BTF "
        "(/sys/kernel/btf/vmlinux), the BPF objects, each probe family's tracepoints, ring "
        "buffers, ptrace and namespaces for replay; what does not work and why. Exit 0 when "
        "everything needed works, 1 otherwise.")
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kprobe.capture_agent.doctor import run_checks

    checks = run_checks()
    if args.format == "json":
        print(json.dumps([asdict(c) for c in checks]))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "note")
            print(f"{mark}  {c.name.ljust(width)}  {c.detail}")
    failed = [c for c in checks if c.required and not c.ok]
    if args.format == "text":
        print(f"\n{len(failed)} required check(s) failed" if failed else
              "\nthis host can run the kprobe agent")
    return 1 if failed else 0
