"""``kprobe demo``: the main job, end to end on this machine.

Today: a local lake, the OTLP receiver as its own process, a real payment workload (SQLite
ledger with fsync) exporting spans through the OpenTelemetry SDK, then SQL over what
landed. The kernel capture and the incident story join as the agent and engine land.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kprobe.commands._common import add_format_option
from kprobe.errors import CommandError
from lake import LakeSettings, resolve
from lake.query import run_query

QUERIES: dict[str, str] = {
    "spans per operation": (
        "SELECT name, count(*) AS spans, "
        "round(quantile_cont(dur_ns, 0.5) / 1e6, 3) AS p50_ms, "
        "round(quantile_cont(dur_ns, 0.99) / 1e6, 3) AS p99_ms "
        "FROM spans GROUP BY name ORDER BY spans DESC"
    ),
    "payments by outcome": (
        "SELECT status, count(*) AS payments, "
        "sum((attributes->>'payment.amount')::BIGINT) AS amount_inr "
        "FROM spans WHERE name = 'POST /payments' GROUP BY status ORDER BY status"
    ),
    "failed payments": (
        "SELECT attributes->>'payment.id' AS payment, "
        "(attributes->>'payment.amount')::BIGINT AS amount_inr, "
        "status_message, pid, tid "
        "FROM spans WHERE name = 'POST /payments' AND status = 'ERROR' "
        "ORDER BY start_ns LIMIT 5"
    ),
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the end-to-end demo on this machine")
    parser.add_argument("--lake", default=None, metavar="URI",
                        help="lake to create or extend (default: ./kprobe-demo-lake)")
    parser.add_argument("--payments", type=int, default=60)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    lake_uri = args.lake or str(Path.cwd() / "kprobe-demo-lake")
    location = resolve(LakeSettings(lake=lake_uri))
    text = args.format == "text"
    with tempfile.TemporaryDirectory(prefix="kprobe-demo-") as work:
        port = _free_port()
        receiver = _start_receiver(lake_uri, port, Path(work) / "otlp.log")
        try:
            _say(text, f"OTLP receiver pid {receiver.pid} on 127.0.0.1:{port}, "
                       f"lake {location.root}")
            workload = subprocess.run(
                [sys.executable, "-P", "-m", "kprobe.demo.ledger_workload",
                 "--endpoint", f"http://127.0.0.1:{port}/v1/traces",
                 "--ledger", str(Path(work) / "ledger.db"),
                 "--payments", str(args.payments), "--seed", str(os.getpid() % 10_000)],
                capture_output=True, text=True, timeout=300, check=False,
            )
            if workload.returncode != 0:
                raise CommandError(f"demo workload failed: {workload.stderr.strip()[-300:]}")
            _say(text, f"workload: {workload.stdout.strip()}")
        finally:
            _stop(receiver)  # SIGTERM: the receiver flushes its last batch before exiting
        results: dict[str, Any] = {"lake": location.root, "queries": {}}
        for title, sql in QUERIES.items():
            table = run_query(location, sql).table
            results["queries"][title] = {"sql": sql, "rows": table.to_pylist()}
            if text:
                from kprobe.commands.sql import render_table

                print(f"\n-- {title}\n$ kprobe sql {_shell_quote(sql)}\n{render_table(table)}",
                      end="")
    results["seconds"] = round(time.monotonic() - started, 2)
    if text:
        print(f"\nDone in {results['seconds']} s. Explore the lake:")
        for sql in ("SELECT * FROM spans LIMIT 10", "DESCRIBE spans"):
            print(f"  kprobe sql --lake {location.root} {_shell_quote(sql)}")
    else:
        print(json.dumps(results, default=str))
    return 0


def _shell_quote(sql: str) -> str:
    """SQL is full of single quotes: double-quote it for the shell when that is safe."""
    return f'"{sql}"' if not set(sql) & set('"$`\\!') else shlex.quote(sql)


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_receiver(lake_uri: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "kprobe", "otlp", "--lake", lake_uri,
             "--host", "127.0.0.1", "--port", str(port), "--flush-interval", "0.5"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"OTLP receiver exited: {log.read_text().strip()[-300:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise CommandError("OTLP receiver did not answer within 30 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
