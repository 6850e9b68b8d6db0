"""Errors of the compute package.

    ComputeError              base; carries a one-line human reason
    ├── WindowError           a window that cannot be analysed (bad range, too many windows)
    ├── RulesError            a domain rules file that does not parse or validate
    ├── AnalysisError         a window's SQL failed (DuckDB errors are translated into this)
    ├── GraphError            the graph store failed (LadybugDB errors are translated)
    │   ├── GraphNotFound     no graph snapshot for the window(s) asked for
    │   └── QueryNotFound     an unknown named query, or a Cypher statement that failed
    ├── NotFound              no span, trace or business id matching what was asked
    └── DistributedError      the Ray cluster could not be reached or a task failed

Errors from DuckDB, LadybugDB, Ray and PyYAML are translated into these at the boundary, so
``kprobe`` maps the whole family to exit code 2 with its one-line reason.
"""

from __future__ import annotations


class ComputeError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""


class WindowError(ComputeError):
    """A time window that is empty, reversed or otherwise unusable."""


class RulesError(ComputeError):
    """The domain rules file is missing, malformed or invalid."""


class AnalysisError(ComputeError):
    """The analysis of one window failed."""


class GraphError(ComputeError):
    """The graph store failed."""


class GraphNotFound(GraphError):
    """No graph snapshot exists for the requested window(s)."""


class QueryNotFound(GraphError):
    """An unknown named query or a Cypher statement the engine refused."""


class NotFound(ComputeError):
    """Nothing matches the transaction, trace or id asked for."""


class DistributedError(ComputeError):
    """Ray could not run the windows."""


class ExportError(ComputeError):
    """Findings could not be sent to an OTLP endpoint (bad endpoint, refused, no answer)."""
