"""Errors of the query_api package.

    QueryApiError    base; carries a one-line human reason
"""

from __future__ import annotations


class QueryApiError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""
