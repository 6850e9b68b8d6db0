"""Errors of the capture_agent package.

    CaptureAgentError    base; carries a one-line human reason
"""

from __future__ import annotations


class CaptureAgentError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""
