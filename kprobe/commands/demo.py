"""``kprobe demo``: the ₹50,000 payment incident, recorded, explained and replayed.

A small payment system (gateway, risk, settlement with a SQLite ledger) runs as real
processes under the real agent; a nightly batch job in the settlement service's memory
cgroup makes a ₹50,000 payment time out; ``kprobe analyze`` and ``kprobe explain`` find
why, down to the kernel; the replay re-runs the gateway as recorded and with a longer
timeout. ``kprobe.demo.incident`` stages it; this module drives it and reports.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kprobe.commands._agent_options import require_root
from kprobe.commands._common import add_format_option, dumps
from kprobe.errors import CommandError

if TYPE_CHECKING:
    from kprobe.demo.incident import IncidentConfig, IncidentRecord, Say

S3_PREFIX = "demo"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "demo", help="the ₹50,000 payment incident: recorded, explained and replayed",
        description="Stage a real incident on this machine (as root): a payment gateway, a "
        "risk service and a settlement service writing a SQLite ledger run under the kprobe "
        "agent; a batch job in the settlement service's memory cgroup makes a ₹50,000 "
        "payment time out. Then analyse, explain and replay it. Takes about 15-20 s on a "
        "2-vCPU VM (about 40 s with --s3, more with --ray: a cluster starts).")
    parser.add_argument("--lake", default=None, metavar="URI",
                        help="lake to write (default: ./kprobe-demo-lake, or s3://kprobe/demo "
                        "with --s3)")
    parser.add_argument("--s3", action="store_true",
                        help="start a local SeaweedFS and keep the lake in it")
    parser.add_argument("--ray", action="store_true", help="analyse on a local Ray cluster")
    parser.add_argument("--keep", action="store_true",
                        help="leave the services (and the agent, cgroup and swap) running")
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_root()
    started = time.monotonic()
    text = args.format == "text"
    say = _printer(text, started)
    workdir = Path(tempfile.mkdtemp(prefix="kprobe-demo-"))
    try:
        return _run(args, workdir, started, text, say)
    except KeyboardInterrupt:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    except CommandError as err:
        if workdir.exists():
            raise CommandError(f"{err} (logs in {workdir})", err.exit_code) from err
        raise
    except Exception:  # a package error: the CLI prints it; say where the logs are
        print(f"kprobe demo: logs in {workdir}", file=sys.stderr)
        raise


def _run(args: argparse.Namespace, workdir: Path, started: float, text: bool,
         say: Say) -> int:
    from kprobe.demo import incident

    with ExitStack() as stack:
        lake_uri, lake_env, s3_note = _lake(args, workdir, stack, say)
        config = incident.IncidentConfig(lake=lake_uri, workdir=workdir, lake_env=lake_env,
                                         keep=args.keep)
        say(f"kprobe demo: lake {lake_uri}, work dir {workdir}")
        record = incident.record_incident(config, say, _cutoffs())
        report = _report_base(record, lake_uri)
        report["timings"]["record_s"] = round(time.monotonic() - started, 2)
        if record.failed_payment is None:
            report["leftovers"] = incident.leftovers(record, workdir)
            _finish(report, text, started, None, s3_note, lake_uri)
            raise CommandError(
                f"the incident did not happen: {len(record.incident_attempts)} "
                f"₹{config.tuning.incident_amount_inr:,} payments settled in time, the last "
                f"answered {record.incident_payment.get('status')} in "
                f"{record.incident_payment.get('ms', 0):.0f} ms", exit_code=1)
        payment_id = record.failed_payment["payment_id"]
        _investigate(config, record, report, args.ray, text, say)
    report["leftovers"] = incident.leftovers(record, workdir)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    _finish(report, text, started, payment_id, s3_note, lake_uri)
    return 0


def _investigate(config: IncidentConfig, record: IncidentRecord, report: dict[str, Any],
                 ray: bool, text: bool, say: Say) -> None:
    """What an engineer does once the payment failed, timed: analyse the recording,
    explain the payment, replay the gateway. Fills ``report``."""
    from kprobe.demo import incident

    assert record.failed_payment is not None
    payment_id = record.failed_payment["payment_id"]
    clock = time.monotonic()
    say(f"payment {payment_id} failed: analysing {_seconds(record)} s of recording")
    report["analysis"] = incident.analyze(config, record, ray)
    analysed = time.monotonic()
    explanation_text, explanation = incident.explain(config, payment_id)
    explained = time.monotonic()
    if text:
        print(f"\n$ kprobe explain {payment_id}\n{explanation_text.rstrip()}\n", flush=True)
    location = incident.lake_location(config.lake, config.lake_env)
    spans = incident.payment_spans(location, payment_id)
    gateway = spans["gateway"]
    verdict = incident.verdict(explanation, spans)
    report.update(verdict)
    report.update({"failed_payment_id": payment_id, "explanation": explanation,
                   "explanation_text": explanation_text, "node": gateway["node"],
                   "payment_span": {k: gateway[k] for k in ("start_ns", "end_ns")},
                   "settlement_span": spans["settlement"],
                   "settlement_writes": incident.settlement_writes(location)})
    say(_verdict_line(verdict, record))
    report["replay"] = replay_step(
        lake=config.lake, lake_env=config.lake_env, node=gateway["node"],
        gateway_pid=record.pids["gateway"], payment_id=payment_id,
        start_ns=gateway["start_ns"], end_ns=gateway["end_ns"],
        timeout_arg_index=record.timeout_arg_index, gateway_argv=record.gateway_argv,
        say=say)
    replayed = time.monotonic()
    report["timings"].update({
        "analyze_s": round(analysed - clock, 2), "explain_s": round(explained - analysed, 2),
        "replay_s": round(replayed - explained, 2),
        "investigation_s": round(replayed - clock, 2)})


def replay_step(*, lake: str, lake_env: dict[str, str], node: str, gateway_pid: int,
                payment_id: str, start_ns: int, end_ns: int, timeout_arg_index: int,
                gateway_argv: list[str], say: Say) -> dict[str, Any]:
    """Replay the gateway process from its recording: exactly (the payment fails again),
    then with ``gateway_argv[timeout_arg_index]`` (the value of ``--settlement-timeout-ms``,
    "750") set to "1500" (the payment settles).

    The gateway's recording runs from its exec (``processes`` row of ``gateway_pid`` on
    ``node``) to its exit; the failed payment's POST /payments span is
    [``start_ns``, ``end_ns``] (epoch ns). ``lake_env`` holds the KPROBE_S3_* variables of
    an S3 lake (empty for a local one). Returns what the JSON report carries as "replay".
    """
    from kprobe.demo.incident import lake_location
    from kprobe.demo.replay_step import WHATIF_TIMEOUT_MS, run_replays

    say(f"replaying gateway pid {gateway_pid}@{node} from its exec to the failed payment "
        f"(exact), then with {gateway_argv[timeout_arg_index - 1]} "
        f"{WHATIF_TIMEOUT_MS} (what-if)")
    outcomes = run_replays(lake_location(lake, lake_env), node, gateway_pid, payment_id,
                           end_ns, timeout_arg_index, WHATIF_TIMEOUT_MS)
    exact, what_if = (o.to_dict() for o in outcomes)
    for label, o in (("exact replay", exact), (f"timeout {WHATIF_TIMEOUT_MS} ms", what_if)):
        say(f"  {label}: {payment_id} -> HTTP {o['http_status']} {o['answer'] or ''} "
            f"({o['served']} syscalls served in {o['wall_s']} s, replay {o['status']})")
    return {"run": True, "process": f"{gateway_pid}@{node}", "payment_id": payment_id,
            "timeout_arg_index": timeout_arg_index,
            "timeout_arg": gateway_argv[timeout_arg_index],
            "exact": exact, "what_if": what_if,
            "exact_fails_as_in_production": exact["http_status"] == 504,
            "what_if_succeeds": what_if["http_status"] == 200}


# -- lake --------------------------------------------------------------------------------------
def _lake(args: argparse.Namespace, workdir: Path, stack: ExitStack,
          say: Say) -> tuple[str, dict[str, str], str]:
    """(lake URI, environment for kprobe commands, a line on how to reach it later)."""
    if not args.s3:
        lake = args.lake or "kprobe-demo-lake"
        if "://" not in lake:  # the services and the agent run in a work directory
            lake = str(Path(lake).resolve())
        return lake, {}, ""
    from kprobe.demo.seaweed import S3Server, S3ServerError

    # A directory per run: a server that was killed (not stopped) may leave its data
    # unreadable, and one bad run must not spoil the next.
    data = Path.cwd() / "kprobe-demo-s3" / time.strftime("%Y%m%d-%H%M%S")
    try:
        server = S3Server.start(data)
    except S3ServerError as err:
        raise CommandError(f"--s3: {err}") from None
    if args.keep:
        say(f"SeaweedFS pid {server.process.pid} stays up (--keep): {server.endpoint}")
    else:
        def stop() -> None:
            say("stopping SeaweedFS gracefully (~25 s) so its data can be served again")
            server.stop_gracefully()
        stack.callback(stop)
    prefix = (args.lake or f"s3://{server.bucket}/{S3_PREFIX}")
    env = {k: v for k, v in server.env(S3_PREFIX).items() if k != "KPROBE_LAKE"}
    say(f"SeaweedFS S3 on {server.endpoint} (data in {data})")
    note = (f"the S3 lake lives in {data}: `python -m kprobe.demo.seaweed {data} "
            f"{S3_PREFIX}` serves it again and prints the KPROBE_* variables to export")
    return prefix, env, note


def _cutoffs() -> str:
    """The clearing cutoffs the domain rules use, for the services' clearing attributes."""
    from kprobe.compute.domain import load_rules

    clearing = load_rules().clearing
    return ",".join(clearing.cutoffs) if clearing and clearing.cutoffs else ""


# -- report ------------------------------------------------------------------------------------
def _report_base(record: IncidentRecord, lake_uri: str) -> dict[str, Any]:
    healthy = sorted(record.healthy_ms())
    return {
        "lake": lake_uri, "run_id": record.run_id, "pids": record.pids,
        "batch_job_pid": record.pids.get("batch_job"), "cgroup": record.cgroup,
        "cgroup_id": record.cgroup_id, "cpu_cgroup": record.cpu_cgroup,
        "zram_device": record.zram_device, "gateway_argv": record.gateway_argv,
        "timeout_arg_index": record.timeout_arg_index, "pressure": record.pressure,
        "payments": record.payments, "incident_payment": record.incident_payment,
        "incident_attempts": record.incident_attempts,
        "healthy_ms": {"count": len(healthy), "median": healthy[len(healthy) // 2]
                       if healthy else None, "max": healthy[-1] if healthy else None},
        "agent": record.agent_summary, "kept": record.kept,
        "timings": dict(record.timings),
    }


def _verdict_line(verdict: dict[str, Any], record: IncidentRecord) -> str:
    kind = verdict.get("root_cause_kind") or "none"
    culprit = verdict.get("culprit_pid")
    who = ("the batch job" if culprit == record.pids.get("batch_job")
           else f"pid {culprit}" if culprit else "nobody")
    settle, delay = verdict.get("settlement_span_ms"), verdict.get("attributed_delay_ms")
    return (f"root cause: {kind}, driven by {who} (PID {culprit}); settlement write "
            f"{settle} ms, of which {delay} ms attributed to it")


def _seconds(record: IncidentRecord) -> float:
    return round(float(record.ended_ns - record.started_ns) / 1e9, 1)


def _finish(report: dict[str, Any], text: bool, started: float, payment_id: str | None,
            s3_note: str, lake_uri: str) -> None:
    report["timings"]["total_s"] = round(time.monotonic() - started, 2)
    if payment_id:
        report["console_url"] = console_url(payment_id)
    if not text:
        print(dumps(report))
        return
    timings = report["timings"]
    left = {k: v for k, v in report.get("leftovers", {}).items() if v}
    print(f"\nLeft behind: {json.dumps(left) if left else 'nothing'}"
          + (f" (kept on purpose: {', '.join(report['kept'])})" if report.get("kept") else ""))
    if report.get("kept"):
        pids = " ".join(k.rsplit(" ", 1)[1] for k in report["kept"])
        device = report["zram_device"].removeprefix("/dev/zram")
        print(f"To stop what --keep left running: kill {pids}; then rmdir "
              f"{report['cgroup']} {report['cpu_cgroup']}; swapoff {report['zram_device']}; "
              f"echo {device} > /sys/class/zram-control/hot_remove")
    if "investigation_s" in timings:
        print(f"Investigation took {timings['investigation_s']} s (analyse "
              f"{timings['analyze_s']} s, explain {timings['explain_s']} s, replay "
              f"{timings['replay_s']} s); the whole demo {timings['total_s']} s.")
    lake = shlex.quote(lake_uri)
    print("\nTry next:")
    tries = [
        "SELECT service, name, count(*) AS spans, round(median(dur_ns) / 1e6, 1) AS p50_ms, "
        "round(max(dur_ns) / 1e6, 1) AS max_ms FROM spans GROUP BY ALL ORDER BY max_ms DESC",
        "SELECT kind, count(*) AS episodes, round(sum(dur_ns) / 1e6) AS ms FROM mem "
        "WHERE kind LIKE '%reclaim' GROUP BY kind",
    ]
    if payment_id:
        tries.append("SELECT service, name, round(dur_ns / 1e6, 1) AS ms, status, "
                     "status_message FROM spans WHERE trace_id = (SELECT trace_id FROM spans "
                     f"WHERE attributes->>'payment.id' = '{payment_id}' LIMIT 1) "
                     "ORDER BY start_ns")
    for sql in tries:
        print(f"  kprobe sql --lake {lake} {_shell_quote(sql)}")
    if payment_id:
        print(f"  kprobe serve --lake {lake} --no-auth   # then open the console (read-only) at"
              f"\n    {report['console_url']}\n    (to replay from it: kprobe serve --lake "
              f"{lake} --tokens-file F, a token from --new-token NAME --scopes "
              "read,replay,payloads --tokens-file F)")
        print(f"  kprobe explain {payment_id} --lake {lake}")
        print(f"  kprobe graph root-cause {payment_id} --lake {lake}")
    if s3_note:
        print(f"  ({s3_note})")
    sys.stdout.flush()


def console_url(payment_id: str) -> str:
    """Where ``kprobe serve`` (its host and port settings) shows the payment in the console."""
    from urllib.parse import quote

    from kprobe.query_api.settings import ApiSettings

    settings = ApiSettings()
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}/transactions/{quote(payment_id, safe='')}"


def _shell_quote(sql: str) -> str:
    """SQL is full of single quotes: double-quote it for the shell when that is safe."""
    return f'"{sql}"' if not set(sql) & set('"$`\\!') else shlex.quote(sql)


def _printer(enabled: bool, started: float) -> Say:
    def say(line: str) -> None:
        if enabled:
            print(f"[{time.monotonic() - started:5.1f}s] {line}", flush=True)
    return say
