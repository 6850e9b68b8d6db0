"""``kprobe`` entry point: parse, dispatch, and turn errors into exit codes (only here).

Exit codes (README, "Exit codes"):

    0    success
    1    the command ran and its check failed: ``doctor`` found a missing capability,
         ``replay`` an expectation not met, ``demo`` a payment that did not fail,
         ``otlp`` dropped spans, ``run`` the child's own status
    2    bad input or environment, one line on stderr: a bad option or time, a location
         with no kprobe tables, an unreachable lake, an unknown transaction
    70   an unexpected error (a bug): one line; ``KPROBE_TRACEBACK=1`` shows the traceback
    130  interrupted (Ctrl-C); a running SQL statement is cancelled first

Every error is one line on stderr, ``kprobe COMMAND: reason``, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kprobe import __version__
from kprobe.commands import COMMAND_MODULES
from kprobe.errors import CommandError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``only`` (a command name), that command's subparser alone.

    Each command module imports what it needs (compute, DuckDB, the query API, ...), so
    building every subparser costs ~30 MB of resident memory and ~0.5 s. A long-running
    ``kprobe record`` should pay for its own imports only.
    """
    parser = _Parser(
        prog="kprobe",
        description="Flight recorder and debugger for financial systems, "
        "from the Linux kernel up.",
    )
    parser.add_argument("--version", action="version", version=f"kprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"kprobe.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"kprobe.commands.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def _package_errors() -> tuple[type[BaseException], ...]:
    """Every package's base error: each carries a one-line reason for the user."""
    found: list[type[BaseException]] = []
    for module, name in (
        ("kprobe.lake.errors", "LakeError"),
        ("kprobe.capture_agent.errors", "CaptureAgentError"),
        ("kprobe.compute.errors", "ComputeError"),
        ("kprobe.replay_sandbox.errors", "ReplaySandboxError"),
        ("kprobe.query_api.errors", "QueryApiError"),
    ):
        found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, if its first argument is one (e.g. not ``--help``)."""
    return argv[0] if argv and argv[0] in COMMAND_MODULES else None


def main(argv: Sequence[str] | None = None) -> int:
    command = _command_of(sys.argv[1:] if argv is None else argv)
    try:  # a command's imports take a while: Ctrl-C meanwhile is one line too
        parser = build_parser(command)
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (already printed)
        return done.code if isinstance(done.code, int) else 2
    except KeyboardInterrupt:
        print(f"kprobe{f' {command}' if command else ''}: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"kprobe {args.command}: {err}", file=sys.stderr)
        if err.leave_now:
            _leave(err.exit_code)
        return err.exit_code
    except _package_errors() as err:
        print(f"kprobe {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kprobe {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kprobe sql ... | head`
        return 0
    except Exception as err:  # a bug, not the user's input: still one line
        if os.environ.get("KPROBE_TRACEBACK"):
            raise
        reason = " ".join(str(err).split())[:300]
        print(f"kprobe {args.command}: unexpected {type(err).__name__}: {reason} "
              "(a bug; KPROBE_TRACEBACK=1 shows where)", file=sys.stderr)
        return 70


def _leave(code: int) -> NoReturn:
    """Exit at once with ``code``, output flushed, without the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
