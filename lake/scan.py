"""Reading a slice of a table: the rows of some nodes in a time range, partitions pruned.

Tables are partitioned by ``node`` and ``hour`` (``lake.schema.PARTITION_COLUMNS``; the
writer derives the hour from the table's time column, ``lake/_batches.py``). Only this
module turns a time range into partition values: everyone else asks for
``scan(table, nodes, t0_ns, t1_ns)`` and gets a DuckDB ``FROM`` item whose filters on the
partition columns DuckDB pushes into the Delta dataset, so the files of other nodes and
hours are never opened.

The item is SQL text for a connection on which the table is registered (``lake.connect``,
``LakeDatabase.session``): node names are quoted as string literals and times are
integers, so it embeds safely in a larger statement, with its own alias::

    f"SELECT tid, count(*) FROM {scan('sched', ['n1'], t0, t1)} s GROUP BY tid"
"""

from __future__ import annotations

from collections.abc import Iterable

from kprobe.lake._batches import hour_label
from kprobe.lake.errors import UnknownTable
from kprobe.lake.schema import TABLE_NAMES, TABLES


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def hour_partition(ts_ns: int) -> str:
    """The ``hour`` partition value a row of time ``ts_ns`` is stored under."""
    return hour_label(ts_ns)


def partition_filter(nodes: Iterable[str], t0_ns: int, t1_ns: int) -> str:
    """The predicate on ``node`` and ``hour`` alone that keeps every row whose time is in
    ``[t0_ns, t1_ns)`` on ``nodes`` (all nodes when empty). Rows of other times in the same
    hours pass: pair it with a filter on the time column (``scan`` does)."""
    hi = max(t0_ns, t1_ns - 1)
    parts = [f"hour >= {_literal(hour_label(max(t0_ns, 0)))}",
             f"hour <= {_literal(hour_label(max(hi, 0)))}"]
    wanted = sorted(set(nodes))
    if len(wanted) == 1:
        parts.insert(0, f"node = {_literal(wanted[0])}")
    elif wanted:
        parts.insert(0, f"node IN ({', '.join(_literal(n) for n in wanted)})")
    return " AND ".join(parts)


def scan(table: str, nodes: Iterable[str], t0_ns: int, t1_ns: int) -> str:
    """A ``FROM`` item: the rows of ``table`` on ``nodes`` (all when empty) whose time
    column (``ts_ns``; ``start_ns`` for spans) is in ``[t0_ns, t1_ns)``."""
    spec = TABLES.get(table)
    if spec is None:
        raise UnknownTable(f"unknown table {table!r}; known: {', '.join(TABLE_NAMES)}")
    t0, t1 = int(t0_ns), int(t1_ns)
    time = spec.time_column
    return (f"(SELECT * FROM {table} WHERE {partition_filter(nodes, t0, t1)} "
            f"AND {time} >= {t0} AND {time} < {t1})")
