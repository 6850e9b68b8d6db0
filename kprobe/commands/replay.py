"""``kprobe replay``: re-run a recorded process in a sandbox, serving its syscalls from the lake.

Exit code: 0 when the expectation held, 1 when it did not, 2 on bad input. The expectation
is ``--expect-exit CODE`` or ``--expect-output-match`` if given; otherwise, in exact mode,
that the replay followed the recording (no divergence, same outputs), and in what-if mode,
that the replay ran to its end.

With ``--fuzz N`` (timing fuzz, ``replay_sandbox.fuzz``) the expectation is that timing does
not matter: 0 when no perturbed replay's outcome differs from the unperturbed one's (and,
with ``--expect-exit`` / ``--expect-output-match``, the unperturbed replay meets it), 1 when
a perturbation flips the outcome (or the expectation fails without any), 2 on bad input.
The outcome is the expectation when one is given, else status, exit and every output's bytes.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from kprobe.commands._common import add_format_option, add_lake_option, lake_settings
from kprobe.errors import CommandError
from kprobe.lake import resolve
from kprobe.lake.errors import TimeSpecError
from kprobe.lake.timespec import parse_duration, parse_instant
from kprobe.replay_sandbox.lake_source import parse_process
from kprobe.replay_sandbox.request import FuzzSpec, ReplayRequest
from kprobe.replay_sandbox.worker import execute


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "replay",
        help="re-run a recorded process under ptrace, serving its syscalls from the lake",
        description="Re-run a recorded process in a sandbox (an unprivileged uid with no "
        "capabilities in its own user, mount, pid, net, ipc and uts namespaces; read-only "
        "host root; private /tmp; no network; a seccomp deny list; rlimits and a cgroup), "
        "serving its inputs "
        "from the lake in the recorded order and checking its outputs against it. Clock reads "
        "and waits run in virtual time. Injections and changed arguments, environment or "
        "command line turn it into a what-if replay.",
    )
    add_lake_option(parser)
    parser.add_argument("--process", required=True, metavar="PID@NODE",
                        help="the recorded process (its last exec, or the one running at --from)")
    parser.add_argument("--from", dest="from_", metavar="TIME",
                        help="pick the exec of PID at or before TIME (now, -15m, RFC 3339 with "
                        "a zone, or epoch with its unit: 1796550608s, ...ms, ...ns)")
    parser.add_argument("--to", metavar="TIME",
                        help="stop where the recording reaches TIME (as --from)")
    parser.add_argument("--tree", action="store_true",
                        help="replay the process and every process it started (and theirs), "
                        "each served from its own recording: pipes between them carry the "
                        "recorded bytes, exits and waits are checked, each one's outputs "
                        "compared")
    parser.add_argument("--inject", action="append", default=[], metavar="SPEC",
                        help="delay, e.g. 'fsync:+50ms', 'recv fd=7:+800ms', 'net:+20ms' "
                        "(repeatable)")
    parser.add_argument("--set-arg", action="append", default=[], metavar="N=VALUE",
                        help="replace argv[N] of the recorded command line (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="set an environment variable (repeatable)")
    parser.add_argument("--cmd", metavar="COMMAND",
                        help="run this command line instead of the recorded one")
    parser.add_argument("--mode", choices=("exact", "whatif"),
                        help="exact stops at the first divergence; what-if keeps going "
                        "(default: exact unless something is changed)")
    expect = parser.add_mutually_exclusive_group()
    expect.add_argument("--expect-exit", type=int, metavar="CODE",
                        help="succeed when the replayed process exits with CODE")
    expect.add_argument("--expect-output-match", action="store_true",
                        help="succeed when every output matches the recording")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run without namespaces, as root (debugging only: outputs are "
                        "still not performed)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="wall-clock limit for the replay (default 120)")
    fuzz = parser.add_argument_group(
        "timing fuzz", "replay N times with small timing perturbations (arrival delays of "
        "single inputs, swaps of adjacent rows of two threads) and report the minimal sets "
        "that flip the outcome (delta debugging)")
    fuzz.add_argument("--fuzz", type=int, metavar="N",
                      help="number of perturbed replays (besides one unperturbed baseline)")
    fuzz.add_argument("--seed", type=int, metavar="S",
                      help="seed of the perturbations (default 0): the same seed gives the "
                      "same perturbations")
    fuzz.add_argument("--fuzz-max-delay", metavar="DURATION",
                      help="largest arrival delay, e.g. 200ms (the default), 1s, 500us")
    fuzz.add_argument("--fuzz-workers", type=int, metavar="N",
                      help="replays at a time (default: the CPUs this process may use)")
    fuzz.add_argument("--fuzz-no-swaps", action="store_true",
                      help="do not perturb the cross-thread order")
    fuzz.add_argument("--ray", action="store_true",
                      help="run the replays on Ray, one actor per CPU (default when RAY_ADDRESS or "
                      "--ray-address names a cluster; else a local 127.0.0.1 cluster)")
    fuzz.add_argument("--ray-address", metavar="ADDRESS",
                      help="the Ray cluster to join (default $RAY_ADDRESS)")
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    outcome = execute(request, resolve(lake_settings(args)))
    if args.format == "json":
        sys.stdout.write(outcome.report.to_json() + "\n")
    else:
        sys.stdout.write(outcome.report.render_text())
    return 0 if outcome.passed else 1


def build_request(args: argparse.Namespace) -> ReplayRequest:
    """The typed request the flags describe (the same the API builds from a POST): the
    replay itself runs in ``replay_sandbox.worker.execute``."""
    if args.fuzz is None:
        _no_fuzz_options(args)
    pid, node = parse_process(args.process)
    cmd = None
    if args.cmd is not None:
        try:
            cmd = tuple(shlex.split(args.cmd))
        except ValueError as err:
            raise CommandError(f"--cmd: {err}") from None
        if not cmd:
            raise CommandError("--cmd is empty")
    set_args = []
    for item in args.set_arg:
        index, eq, value = item.partition("=")
        if not eq or not index.isdigit():
            raise CommandError(f"--set-arg {item!r}: expected N=VALUE")
        set_args.append((int(index), value))
    fuzz = None
    if args.fuzz is not None:
        if args.fuzz < 1:
            raise CommandError("--fuzz: expected at least 1 perturbed replay")
        if args.fuzz_workers is not None and args.fuzz_workers < 1:
            raise CommandError("--fuzz-workers: expected at least 1")
        fuzz = FuzzSpec(runs=args.fuzz, seed=args.seed or 0,
                        max_delay_ns=duration(args.fuzz_max_delay or "200ms", "--fuzz-max-delay"),
                        swaps=not args.fuzz_no_swaps, workers=args.fuzz_workers,
                        executor="ray" if args.ray or args.ray_address else "auto",
                        ray_address=args.ray_address)
    return ReplayRequest(
        pid=pid, node=node, from_ns=parse_time(args.from_, "--from"),
        to_ns=parse_time(args.to, "--to"), injections=tuple(args.inject),
        set_args=tuple(set_args), env=tuple(_env(args.env).items()), cmd=cmd,
        mode=args.mode, expect_exit=args.expect_exit,
        expect_output_match=args.expect_output_match, timeout_s=args.timeout, fuzz=fuzz,
        tree=args.tree, sandbox=not args.no_sandbox)


def _no_fuzz_options(args: argparse.Namespace) -> None:
    given = [name for name, value in (
        ("--seed", args.seed is not None), ("--fuzz-max-delay", args.fuzz_max_delay),
        ("--fuzz-workers", args.fuzz_workers is not None),
        ("--fuzz-no-swaps", args.fuzz_no_swaps), ("--ray", args.ray),
        ("--ray-address", args.ray_address)) if value]
    if given:
        raise CommandError(f"{given[0]} needs --fuzz N")


def parse_time(text: str | None, option: str) -> int | None:
    """An instant of the one time grammar (lake/timespec.py) as epoch ns; None stays None."""
    if text is None:
        return None
    try:
        return parse_instant(text)
    except TimeSpecError as err:
        raise CommandError(f"{option}: {err}") from None


def duration(text: str, option: str) -> int:
    """A positive duration of the one time grammar (lake/timespec.py) in ns."""
    try:
        return parse_duration(text)
    except TimeSpecError as err:
        raise CommandError(f"{option}: {err}") from None


def _env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CommandError(f"--env {item!r}: expected K=V")
        out[key] = value
    return out
