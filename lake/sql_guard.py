"""Read-only statement filter for user SQL (``kprobe sql``, ``POST /v1/sql``).

The filter uses DuckDB's own parser (no regexes over SQL): exactly one statement, of a
read-only kind. It is the first of two locks: connections from ``lake.reader`` also
disable external access, so a table function such as ``read_csv('/etc/passwd')`` that a
SELECT may contain is refused by DuckDB itself.
"""

from __future__ import annotations

import re

import duckdb

from kprobe.lake.errors import ReadOnlyViolation

_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(analy[sz]e\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)

# DESCRIBE, SHOW and SUMMARIZE parse as SELECT over a pragma-like table function.
_ALLOWED = {
    duckdb.StatementType.SELECT: "SELECT",
    duckdb.StatementType.EXPLAIN: "EXPLAIN",
}


def check_read_only(sql: str) -> str:
    """Return the statement, stripped, if it is one read-only statement; else raise."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise ReadOnlyViolation("empty statement")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as err:
        raise ReadOnlyViolation(f"cannot parse SQL: {' '.join(str(err).split())}") from None
    if len(statements) != 1:
        raise ReadOnlyViolation(f"exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: the explained statement must pass too.
        inner = _EXPLAIN_PREFIX.sub("", text, count=1)
        if inner != text and inner.strip():
            check_read_only(inner)
    if kind not in _ALLOWED:
        name = str(kind).rsplit(".", 1)[-1].replace("_STATEMENT", "")
        raise ReadOnlyViolation(
            f"{name} statements are not allowed: the lake is read-only here "
            "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN only)"
        )
    return text
