"""Errors of the compute package.

    ComputeError    base; carries a one-line human reason
"""

from __future__ import annotations


class ComputeError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""
