"""A batch as the Parquet files of a Delta append: encoded here, added by one commit.

``write_deltalake`` re-partitions every batch it is given (a sort and a copy of every
column by partition value) and runs it through a DataFusion plan before encoding. A
flush is already one partition (one node, nearly always one hour), so the writer encodes
large batches itself with pyarrow, uploads them through deltalake's own object store
(same URIs and credentials), and commits their ``add`` actions with the batch's
transaction id. Measured on a flush of 110k syscalls rows: 33 ms of CPU through
``write_deltalake``, 22 ms this way.

Column settings are the same on both paths (``delta_encoded``): nanosecond times and
sequence numbers are near-sorted, high-cardinality int64s, for which Parquet's default
dictionary hashes every value until the dictionary page overflows and then falls back to
PLAIN; delta encoding stores the small differences instead (110k syscalls rows: 1.5 MB ->
0.27 MB, and 48 -> 32 ms through ``write_deltalake``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import ColumnProperties, WriterProperties
from deltalake._internal import DeltaFileSystemHandler
from deltalake.transaction import AddAction

from kprobe.lake.schema import PARTITION_COLUMNS, spec

# Partition values written into paths as they are: anything else would need the Hive
# escaping Delta expects, which is left to write_deltalake.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._-]+\Z")
_STATS_TYPES = (pa.types.is_integer, pa.types.is_string, pa.types.is_boolean)


@cache
def delta_encoded(table: str) -> tuple[str, ...]:
    """``table``'s int64 columns stored with delta encoding: ``*_ns`` and ``seq``."""
    return tuple(f.name for f in spec(table).fields
                 if f.type == pa.int64() and (f.name.endswith("_ns") or f.name == "seq"))


@cache
def writer_properties(table: str) -> WriterProperties:
    """``write_deltalake``'s settings for ``table``: delta encoding for ``delta_encoded``
    columns, the defaults (snappy, dictionaries, statistics) elsewhere."""
    encoded = ColumnProperties(dictionary_enabled=False, encoding="DELTA_BINARY_PACKED")
    columns = dict.fromkeys(delta_encoded(table), encoded)
    return WriterProperties(column_properties=columns or None)


@dataclass(frozen=True)
class DataFile:
    """One encoded file of a batch, not yet uploaded."""

    partition: dict[str, str]
    body: pa.Buffer
    meta: pq.FileMetaData


def partition_values(data: pa.Table) -> list[dict[str, str]] | None:
    """The distinct (node, hour) of a conformed batch, or None when one would need escaping
    in a path (then the batch takes ``write_deltalake``'s path)."""
    node = data.column(PARTITION_COLUMNS[0])
    hours = pc.unique(data.column(PARTITION_COLUMNS[1])).to_pylist()
    nodes = pc.unique(node).to_pylist()
    if len(nodes) != 1:
        return None
    values = [{PARTITION_COLUMNS[0]: nodes[0], PARTITION_COLUMNS[1]: hour} for hour in hours]
    if not all(_PLAIN_VALUE.match(v) for p in values for v in p.values()):
        return None
    return values


def encode(table: str, data: pa.Table, partitions: list[dict[str, str]]) -> list[DataFile]:
    """One Parquet file per partition of a conformed batch (partition columns left out, as
    Delta stores them in the path)."""
    hour = PARTITION_COLUMNS[1]
    files = []
    for values in partitions:
        part = data if len(partitions) == 1 else data.filter(
            pc.equal(data.column(hour), pa.scalar(values[hour])))
        body = part.drop_columns(list(PARTITION_COLUMNS))
        encoded = delta_encoded(table)
        sink = pa.BufferOutputStream()
        collected: list[pq.FileMetaData] = []
        pq.write_table(
            body, sink, compression="snappy",
            use_dictionary=[c for c in body.column_names if c not in encoded],
            column_encoding=dict.fromkeys((c for c in encoded if c in body.column_names),
                                          "DELTA_BINARY_PACKED"),
            metadata_collector=collected,
        )
        files.append(DataFile(values, sink.getvalue(), collected[0]))
    return files


def upload(store: DeltaFileSystemHandler, file: DataFile) -> AddAction:
    """Write ``file`` under its partition directory; its ``add`` action, with statistics.

    ``store``: deltalake's object store at the table's root (deltalake.fs wraps it for
    pyarrow, whose file objects hand it buffers where it takes bytes)."""
    directory = "/".join(f"{k}={v}" for k, v in file.partition.items())
    path = f"{directory}/part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    out = store.open_output_stream(path)
    out.write(file.body.to_pybytes())
    out.close()  # type: ignore[attr-defined]  # (missing from deltalake's stub)
    return AddAction(path, file.body.size, dict(file.partition), int(time.time() * 1000),
                     True, file_stats(file.meta))


def file_stats(meta: pq.FileMetaData) -> str:
    """Delta's per-file statistics (rows, and min, max and nulls per column) from the
    Parquet footer, as write_deltalake writes them: min/max of flat integer, string and
    boolean columns, nulls of every flat column (write_deltalake leaves binary ones out).
    A column whose footer lacks a statistic gets none (no statistic is always correct)."""
    kinds = {f.name: f.type for f in meta.schema.to_arrow_schema()}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    no_minmax: set[str] = set()
    no_nulls: set[str] = set()
    for r in range(meta.num_row_groups):
        group = meta.row_group(r)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if name not in kinds:  # a leaf of a nested column
                continue
            stats = column.statistics
            if stats is None or not stats.has_null_count:
                no_minmax.add(name)
                no_nulls.add(name)
                continue
            nulls[name] = nulls.get(name, 0) + stats.null_count
            if not any(is_kind(kinds[name]) for is_kind in _STATS_TYPES):
                no_minmax.add(name)
            elif stats.has_min_max:
                low, high = stats.min, stats.max
                mins[name] = low if name not in mins else min(mins[name], low)
                maxs[name] = high if name not in maxs else max(maxs[name], high)
            elif stats.null_count < column.num_values:  # values, but no bounds for them
                no_minmax.add(name)
    return json.dumps({
        "numRecords": meta.num_rows,
        "minValues": {n: v for n, v in mins.items() if n not in no_minmax},
        "maxValues": {n: v for n, v in maxs.items() if n not in no_minmax},
        "nullCount": {n: v for n, v in nulls.items() if n not in no_nulls},
    })
