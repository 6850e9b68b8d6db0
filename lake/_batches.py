"""Turning a producer's columns into rows as stored: cast, partition, stamp the batch id.

Everything here is vectorised (Arrow / numpy): a batch of a million rows costs a handful of
array operations, never a Python call per row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from kprobe.lake.errors import SchemaError
from kprobe.lake.schema import SEAL_FIELDS, TableSpec

NS_PER_HOUR = 3_600_000_000_000


def hour_label(ts_ns: int) -> str:
    """The ``hour`` partition value of one timestamp: UTC ``YYYY-MM-DDTHH``."""
    return datetime.fromtimestamp(ts_ns // NS_PER_HOUR * 3600, tz=UTC).strftime("%Y-%m-%dT%H")


def hour_labels(ts_ns: np.ndarray) -> pa.Array:
    """``hour`` for every timestamp, formatting only the distinct hours (few per batch)."""
    hours = np.floor_divide(ts_ns, NS_PER_HOUR)
    if len(hours) == 0:
        return pa.array([], pa.string())
    lo, hi = int(hours.min()), int(hours.max())
    if hi - lo < 100_000:  # dense range: O(n) indexing, no sort
        labels = [hour_label(h * NS_PER_HOUR) for h in range(lo, hi + 1)]
        indices = (hours - lo).astype(np.int32)
    else:  # timestamps spread over decades: only the distinct ones
        uniq, inverse = np.unique(hours, return_inverse=True)
        labels = [hour_label(int(h) * NS_PER_HOUR) for h in uniq]
        indices = inverse.astype(np.int32)
    return pa.DictionaryArray.from_arrays(indices, labels).cast(pa.string())


def constant_column(value: str, length: int) -> pa.Array:
    """A string column holding one value, built from its buffers: the value repeated and
    evenly spaced offsets (no Python list per row, no dictionary to decode)."""
    encoded = value.encode()
    offsets = np.arange(length + 1, dtype=np.int32) * np.int32(len(encoded))
    return pa.StringArray.from_buffers(length, pa.py_buffer(offsets),
                                       pa.py_buffer(encoded * length))


def to_table(data: pa.Table | pa.RecordBatch | dict[str, object]) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    raise SchemaError(f"expected an Arrow table or record batch, got {type(data).__name__}")


def conform(spec: TableSpec, data: pa.Table, *, node: str, batch_id: str) -> pa.Table:
    """Cast ``data`` to the stored schema of ``spec`` and add node, hour and batch id.

    Missing nullable columns become nulls; an unknown column, a missing required column or
    a value that does not fit its type is a SchemaError naming the column.
    """
    payload = spec.payload_schema
    unknown = [name for name in data.column_names if name not in payload.names]
    if unknown:
        raise SchemaError(f"{spec.name}: unknown column(s) {', '.join(unknown)}")
    n = data.num_rows
    columns: list[pa.Array | pa.ChunkedArray] = []
    for field in payload:
        if field.name in data.column_names:
            column = data.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise SchemaError(
                        f"{spec.name}.{field.name}: cannot store {column.type} as {field.type}"
                        f" ({err})"
                    ) from None
            if not field.nullable and column.null_count:
                raise SchemaError(f"{spec.name}.{field.name}: {column.null_count} null value(s)")
        elif field.nullable:
            column = pa.nulls(n, field.type)
        else:
            raise SchemaError(f"{spec.name}: required column {field.name} is missing")
        columns.append(column)
    times = data.column(spec.time_column).to_numpy()
    if spec.sealed_column:  # stored in the clear unless the writer seals it afterwards
        columns.extend(pa.nulls(n, f.type) for f in SEAL_FIELDS)
    columns.append(constant_column(batch_id, n))
    columns.append(constant_column(node, n))
    columns.append(hour_labels(times))
    return pa.Table.from_arrays(columns, schema=spec.schema)
