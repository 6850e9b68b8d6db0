"""The kprobe event lake: schema v1, storage, writers and readers (imports nothing of ours).

The public surface, the only one other packages use (ARCHITECTURE.md, "Layers"):

- where: ``LakeSettings`` -> ``resolve`` -> ``LakeLocation``; ``filesystem(location)`` is
  the one factory of a storage client (local or S3, with the lake's credentials);
- write: ``LakeWriter`` (append, one commit per batch), ``delete_where``, ``compact``,
  ``retain``;
- read: ``connect`` (a locked DuckDB connection over the tables), ``LakeDatabase`` (one
  per long-lived reader, a cursor per statement), ``scan(table, nodes, t0_ns, t1_ns)`` (a
  FROM item that prunes the node/hour partitions), ``run_query``, ``TableTail`` (the rows
  of new commits);
- Ray: ``connect_ray`` (lake/cluster.py: the one way to join or start the cluster);
- errors: ``LakeError`` and its family; ``one_line`` (any error's text as a reason);
- time: ``parse_instant``, ``parse_duration``, ``format_instant`` (lake/timespec.py).

Partitioning (``_batches``) and the Delta plumbing (``_deltaio``) are private.
"""

from typing import TYPE_CHECKING

from kprobe.lake.cluster import connect_ray
from kprobe.lake.errors import (
    ClusterUnavailable,
    LakeError,
    LakeUnavailable,
    ReadOnlyViolation,
    SchemaError,
    SchemaVersionError,
    UnknownTable,
    one_line,
)
from kprobe.lake.maintenance import TableReport, compact, delete_where, retain
from kprobe.lake.scan import hour_partition, partition_filter, scan
from kprobe.lake.schema import SCHEMA_VERSION, TABLE_NAMES, TABLES
from kprobe.lake.storage import LakeLocation, LakeSettings, filesystem, resolve
from kprobe.lake.tail import Appended, Rewritten, TableTail
from kprobe.lake.timespec import TimeSpecError, format_instant, parse_duration, parse_instant
from kprobe.lake.writer import CommitResult, LakeWriter, PreparedBatch

if TYPE_CHECKING:
    from kprobe.lake.query import QueryResult, run_query
    from kprobe.lake.reader import LakeDatabase, connect
    from kprobe.lake.tables import TableCache, TableSnapshot

# The read side (DuckDB, ~10 MB resident and 0.1 s to import) loads on first use: the
# capture agent writes the lake and never queries it.
_LAZY = {"LakeDatabase": "kprobe.lake.reader", "connect": "kprobe.lake.reader",
         "TableCache": "kprobe.lake.tables", "TableSnapshot": "kprobe.lake.tables",
         "QueryResult": "kprobe.lake.query", "run_query": "kprobe.lake.query"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lake' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "TABLE_NAMES",
    "Appended",
    "ClusterUnavailable",
    "CommitResult",
    "LakeDatabase",
    "LakeError",
    "LakeLocation",
    "LakeSettings",
    "LakeUnavailable",
    "LakeWriter",
    "PreparedBatch",
    "QueryResult",
    "ReadOnlyViolation",
    "Rewritten",
    "SchemaError",
    "SchemaVersionError",
    "TableCache",
    "TableReport",
    "TableSnapshot",
    "TableTail",
    "TimeSpecError",
    "UnknownTable",
    "compact",
    "connect",
    "connect_ray",
    "delete_where",
    "filesystem",
    "one_line",
    "format_instant",
    "hour_partition",
    "parse_duration",
    "parse_instant",
    "partition_filter",
    "resolve",
    "retain",
    "run_query",
    "scan",
]
