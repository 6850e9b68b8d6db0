"""Errors of the replay_sandbox package.

    ReplaySandboxError    base; carries a one-line human reason
"""

from __future__ import annotations


class ReplaySandboxError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""
