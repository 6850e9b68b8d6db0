"""Errors of the lake package.

    LakeError                 base; carries a one-line human reason
    ├── LakeUnavailable       storage unreachable, bucket missing, wrong credentials
    ├── SchemaError           a batch or a table does not match schema v1
    │   └── SchemaVersionError  a table written by another schema version
    ├── UnknownTable          a table name that schema v1 does not define
    ├── ReadOnlyViolation     a statement that would write or reach outside the lake
    ├── QueryError            a read-only query that failed (syntax, unknown column, limits)
    ├── ClusterUnavailable    the Ray cluster could not be started or reached
    ├── TimeSpecError         a time or duration outside the one grammar (lake/timespec.py)
    └── PayloadSealError      sealed payloads that cannot be opened or sealed
        ├── PayloadKeyError     no key file, a bad one, or not the key the data was sealed for
        └── PayloadIntegrityError  a sealed segment altered, truncated or incomplete

Errors from deltalake, pyarrow and DuckDB are translated into these at the boundary, so
callers (the CLI, the API) map one family to exit codes and HTTP statuses. ``one_line``
turns any foreign error's text into such a reason (every package uses it: lake imports
nothing of ours, so everyone may import it).
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A native (Rust) backtrace appended to an error: "… 0: <unknown> 1: … start_thread at …"
_BACKTRACE = re.compile(r"(\bstack backtrace:|\bBacktrace:?|\s0: (<unknown>|0x[0-9a-f]+|\S+::))")


def one_line(reason: BaseException | str, limit: int = 300) -> str:
    """``reason`` on one line for a user: colours and a native backtrace dropped, white
    space collapsed, at most about ``limit`` characters. A longer text keeps both ends:
    object-store and driver errors put the useful part (SignatureDoesNotMatch, Connection
    refused) at the end of a long chain."""
    text = _ANSI.sub("", str(reason)).replace("↳", ":")
    cut = _BACKTRACE.search(text)
    if cut:  # frames of the native library say nothing to a user
        text = text[:cut.start()]
    text = " ".join(text.split())
    if not text:
        return "no reason given"
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    return f"{text[:head]} … {text[-(limit - head - 10):]}"


class LakeError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""


class LakeUnavailable(LakeError):
    """The lake's storage cannot be reached or refuses our credentials."""


class SchemaError(LakeError):
    """Data that does not fit the table's schema."""


class SchemaVersionError(SchemaError):
    """A table written with a schema version this code does not read."""


class ClusterUnavailable(LakeError):
    """The Ray cluster could not be started or reached (lake/cluster.py)."""


class UnknownTable(LakeError):
    """A table name that schema v1 does not define."""


class TimeSpecError(LakeError, ValueError):
    """A time or duration the grammar (lake/timespec.py) does not accept."""


class ReadOnlyViolation(LakeError):
    """A SQL statement that is not a read-only query."""


class QueryError(LakeError):
    """A read-only query that DuckDB could not run (syntax, unknown column, limits)."""


class PayloadSealError(LakeError):
    """Payloads encrypted at rest (lake/sealing.py) that cannot be sealed or opened."""


class PayloadKeyError(PayloadSealError):
    """The key file is missing or malformed, or lacks the key the data was sealed for."""


class PayloadIntegrityError(PayloadSealError):
    """A sealed segment failed authentication: altered, truncated or incomplete."""
