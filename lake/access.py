"""What a reader's SQL sees of the sensitive columns: nothing, ciphertext, or plaintext.

Every DuckDB connection or cursor over the lake registers its tables through
``register_tables``:

- without payload access (the API's ``read`` scope), each table with sensitive columns
  (``lake.schema.SENSITIVE_COLUMNS``: ``syscall_data.data`` and its seal, ``processes.env``)
  is registered as a dataset *without* them: no statement can name, ``*``-select, join,
  aggregate or cast what the connection does not have, however it is written;
- with payload access and no key, the tables as stored (sealed rows are ciphertext);
- with payload access and the key (``install_opener`` on the connection's database),
  ``syscall_data`` is a view whose ``data`` is opened by a vectorised UDF
  (lake/sealing.py). The raw table stays reachable as ``syscall_data__sealed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from kprobe.lake import payload_keys
from kprobe.lake.schema import SENSITIVE_COLUMNS, TABLES
from kprobe.lake.sealing import SEGMENT_COLUMNS, SegmentOpener

OPEN_FUNCTION = "kprobe_open_payload"
SEALED_SUFFIX = "__sealed"


def without_columns(dataset: Any, hidden: tuple[str, ...]) -> Any:
    """``dataset`` (a pyarrow dataset, or a table for a table not created yet) without
    ``hidden``: its scans never read them."""
    names = [n for n in dataset.schema.names if n not in hidden]
    if isinstance(dataset, pa.Table):
        return dataset.select(names)
    return dataset.replace_schema(pa.schema([dataset.schema.field(n) for n in names]))


def with_current_columns(dataset: Any, schema: pa.Schema) -> Any:
    """``dataset`` with the columns ``schema`` gained since its table was created (a table
    no agent has written since an upgrade: the writer adds them at its next write), read as
    nulls, so that queries of the current schema run on lakes of every version."""
    missing = [f for f in schema if f.name not in dataset.schema.names]
    if not missing or isinstance(dataset, pa.Table):
        return dataset
    return dataset.replace_schema(pa.schema([*dataset.schema, *missing]))


def install_opener(con: duckdb.DuckDBPyConnection, keys_file: str,
                   dataset: Callable[[], Any], cache_bytes: int = 256 << 20) -> SegmentOpener:
    """Register ``OPEN_FUNCTION`` on ``con``'s database: it opens sealed ``data`` with the
    private keys of ``keys_file``, reading whole batches from ``dataset()`` (the current
    ``syscall_data`` dataset) to verify them. Call before the connection is locked."""
    keys = payload_keys.load(keys_file)  # a bad key file fails here, in one line

    def fetch(batch_id: str) -> pa.Table:
        source = dataset()
        if isinstance(source, pa.Table):
            return source.filter(pc.equal(source.column("batch_id"), batch_id))
        scanned: pa.Table = source.to_table(columns=[*SEGMENT_COLUMNS, "batch_id"],
                                            filter=pads.field("batch_id") == batch_id)
        return scanned

    opener = SegmentOpener(keys, fetch, cache_bytes)

    def open_payload(data: pa.Array, seal: pa.Array, seal_pos: pa.Array,
                     batch_id: pa.Array) -> pa.Array:
        # the key file may have been rotated since: use its current keys
        opener.keys = payload_keys.load(keys_file)
        return opener.open(data, seal, seal_pos, batch_id)

    blob, bigint, varchar = (duckdb.sqltype(t) for t in ("BLOB", "BIGINT", "VARCHAR"))
    # (by name: the enums moved between DuckDB 1.x and 2.x; the stubs want the enums)
    con.create_function(OPEN_FUNCTION, open_payload,  # type: ignore[call-overload]
                        [blob, blob, bigint, varchar], blob, type="arrow",
                        null_handling="special", side_effects=False)
    return opener


def register_tables(con: duckdb.DuckDBPyConnection, datasets: Mapping[str, Any], *,
                    payloads: bool, opened: bool) -> None:
    """Register each table of ``datasets`` (name -> dataset) on ``con`` as this reader may
    see it (module doc). ``opened``: ``OPEN_FUNCTION`` is installed on ``con``'s database."""
    for name, dataset in datasets.items():
        dataset = with_current_columns(dataset, TABLES[name].schema)
        hidden = SENSITIVE_COLUMNS.get(name, ())
        sealed = TABLES[name].sealed_column
        if hidden and not payloads:
            con.register(name, without_columns(dataset, hidden))
        elif sealed and opened:
            raw = name + SEALED_SUFFIX
            con.register(raw, dataset)
            con.execute(f'CREATE OR REPLACE TEMP VIEW {name} AS SELECT * REPLACE '
                        f'({OPEN_FUNCTION}("{sealed}", seal, seal_pos, batch_id) AS "{sealed}") '
                        f"FROM {raw}")
        else:
            con.register(name, dataset)
