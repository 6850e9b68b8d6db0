"""Errors of the replay_sandbox package.

    ReplaySandboxError        base; carries a one-line human reason
    ├── RecordingError        the recording is missing, empty or malformed
    ├── SpecError             a bad --inject / --set-arg / --env / --process value
    ├── SandboxError          the sandbox or the tracee could not be started
    ├── TracerError           a ptrace / memory operation failed (carries errno)
    └── FuzzError             a timing-fuzz campaign could not run its replays

A divergence is not an error: the engine stops and the report says where the replay left
the recording (``report.Divergence``). The CLI maps both to exit codes.
"""

from __future__ import annotations


class ReplaySandboxError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""


class RecordingError(ReplaySandboxError):
    """No usable recording for the requested process."""


class SpecError(ReplaySandboxError):
    """A user-supplied specification (injection, argument, environment) is malformed."""


class SandboxError(ReplaySandboxError):
    """The tracee could not be started in its sandbox."""


class TracerError(ReplaySandboxError):
    """A ptrace call or a tracee memory access failed."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class FuzzError(ReplaySandboxError):
    """A timing-fuzz campaign could not run its replays (worker processes or Ray failed,
    or the unperturbed replay itself could not run)."""
