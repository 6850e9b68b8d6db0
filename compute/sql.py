"""SQL building blocks shared by the analysis stages (all vectorised in DuckDB).

Interval overlap joins are the heart of the engine: a span against a thread's state
intervals, runnable pieces against what ran on that CPU, blocked pieces against block
requests. A plain ``a.key = b.key AND b.s < a.e AND b.e > a.s`` join is a hash join on the
key followed by a filter, i.e. every interval of a thread against every span of it. Here
both sides are cut into fixed time buckets and joined on (key, bucket); each overlapping
pair meets in exactly one bucket (the later of the two start buckets), so no DISTINCT is
needed and the cost follows the size of the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from kprobe.compute.errors import AnalysisError
from kprobe.lake import one_line


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    items = [sql_str(v) for v in values]
    return "(" + (", ".join(items) if items else "NULL") + ")"


def bucketed(source: str, bucket_ns: int, s: str = "s", e: str = "e") -> str:
    """``source`` (a table name or a parenthesised query) with one row per time bucket."""
    return (f"(SELECT *, unnest(generate_series({s} // {bucket_ns}, "
            f"greatest({e} - 1, {s}) // {bucket_ns})) AS _b FROM {source})")


def overlap_join(left: str, right: str, on: Sequence[str] | Sequence[tuple[str, str]],
                 bucket_ns: int, *, select: str, where: str = "", kind: str = "JOIN",
                 ls: str = "s", le: str = "e", rs: str = "s", re_: str = "e") -> str:
    """``SELECT {select} FROM left l JOIN right r`` where the intervals overlap.

    ``on`` lists the equality keys: a name present on both sides, or (left_expr, right_expr).
    Columns are referred to as ``l.x`` and ``r.x`` in ``select`` and ``where``. For an inner
    join the right side is first cut down to the keys and the time span the left side has
    (a semi join), so that intervals of threads, CPUs or connections nobody asked about are
    never cut into buckets.
    """
    keys, pairs = [], []
    for key in on:
        lk, rk = (key, key) if isinstance(key, str) else key
        keys.append(f"l.{lk} = r.{rk}")
        pairs.append((lk, rk))
    if kind == "JOIN":
        lcols = ", ".join(f"{lk} AS _k{i}" for i, (lk, _) in enumerate(pairs))
        match = " AND ".join(f"k._k{i} = r.{rk}" for i, (_, rk) in enumerate(pairs))
        right = (f"(SELECT r.* FROM {right} r SEMI JOIN (SELECT DISTINCT {lcols} FROM {left}) k"
                 f" ON {match} WHERE r.{re_} > (SELECT min({ls}) FROM {left})"
                 f" AND r.{rs} < (SELECT max({le}) FROM {left}))")
    cond = " AND ".join([*keys, "l._b = r._b",
                         f"l._b = greatest(l.{ls} // {bucket_ns}, r.{rs} // {bucket_ns})",
                         f"r.{rs} < l.{le}", f"r.{re_} > l.{ls}"])
    extra = f"WHERE {where}" if where else ""
    return (f"SELECT {select} FROM {bucketed(left, bucket_ns, ls, le)} l "
            f"{kind} {bucketed(right, bucket_ns, rs, re_)} r ON {cond} {extra}")


def merged(source: str, keys: Sequence[str], s: str = "s", e: str = "e") -> str:
    """Union of the intervals of ``source`` per ``keys``: rows (keys..., s, e), disjoint.

    Gaps-and-islands: an interval starts a new island when it begins after the furthest end
    seen so far in its group.
    """
    part = ", ".join(keys)
    cols = ", ".join(keys)
    return f"""(
        SELECT {cols}, min({s}) AS s, max({e}) AS e FROM (
            SELECT *, sum(_new) OVER (PARTITION BY {part} ORDER BY {s}, {e}
                                      ROWS UNBOUNDED PRECEDING) AS _island
            FROM (
                SELECT {cols}, {s}, {e},
                       CASE WHEN {s} <= max({e}) OVER (PARTITION BY {part} ORDER BY {s}, {e}
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                            THEN 0 ELSE 1 END AS _new
                FROM {source} WHERE {e} > {s}))
        GROUP BY {cols}, _island)"""


def evidence_list(struct: str, order: str, limit: int, where: str | None = None) -> str:
    """A JSON array of at most ``limit`` evidence rows, first by ``order`` (an aggregate
    expression). The rows are collected unordered and each group's list sorted after:
    an ``ORDER BY`` inside the aggregate sorted every row of the input first (for CPU
    contention, 1.1 of its 1.3 CPU seconds in a 1 M-event window of bench_compute)."""
    cond = f" FILTER (WHERE {where})" if where else ""
    rows = f"list({{'k': {order}, 'v': {struct}}}){cond}"
    return (f"to_json(coalesce(list_transform(list_sort({rows})[1:{limit}], lambda x: x.v),"
            f" []))")


def followed_span(span: str) -> str:
    """True for a span whose causes feed a root cause: a holder (what a waited-for thread
    did) or a span of a trace in which an operation failed. ``span``: the alias of a
    ``spans_all`` row (needs ``span_domain``, built before any cause)."""
    return (f"({span}.origin = 'holder' OR {span}.trace_id IN ("
            f"SELECT fs.trace_id FROM span_domain fd JOIN spans_all fs USING (span_key)"
            f" WHERE fd.failed AND fs.trace_id IS NOT NULL))")


@contextmanager
def translated(stage: str) -> Iterator[None]:
    """DuckDB failures inside a stage become one-line AnalysisErrors naming the stage."""
    try:
        yield
    except duckdb.Error as err:
        raise AnalysisError(f"{stage} failed: {one_line(err)}") from err


def scalar_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of ``sql``; the result is drained (DuckDB refuses other work on a
    connection with a half-read result)."""
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the connection holds a table ``name`` (a window's optional inputs)."""
    found = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                        [name]).fetchall()
    return bool(found[0][0])


def execute(con: duckdb.DuckDBPyConnection, stage: str, *statements: str) -> None:
    with translated(stage):
        for statement in statements:
            con.execute(statement)
