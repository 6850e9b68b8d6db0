"""Errors of the kprobe CLI.

    KprobeError        base
    └── CommandError   a command failed for a reason the user can act on; carries an exit code

``kprobe.cli.main`` is the one place that turns errors into exit codes: CommandError → its
code, any package's error (LakeError, CaptureAgentError, ...) → 2 with its one-line reason.
"""

from __future__ import annotations


class KprobeError(Exception):
    """Base class of CLI errors."""


class CommandError(KprobeError):
    """A one-line reason and the exit code to leave with (2 = bad input or environment)."""

    def __init__(self, message: str, exit_code: int = 2, *, leave_now: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        # the process must not run the interpreter's shutdown (e.g. a cancelled DuckDB
        # statement: its threads can abort the exit with SIGABRT, "exception not rethrown")
        self.leave_now = leave_now
