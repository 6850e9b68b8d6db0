"""Appending batches to lake tables: one batch, one Delta commit, never twice.

A batch is identified by ``(writer_id, seq)``. The commit carries a Delta *transaction
identifier* (``txn`` action, appId = writer id, version = seq), the protocol's own device for
idempotent writers: before committing, and again before any retry, the writer reads the
table's last committed version for its appId and skips a batch that already landed. So a
flush retried after an ambiguous failure (the commit reached S3 but the answer did not come
back) never duplicates rows. Every row also stores ``batch_id`` = ``{writer_id}-{seq}``.

A reader never sees part of a batch: Delta makes the commit file appear atomically.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TypeAlias

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lake.batches import conform, to_table
from lake.deltaio import open_table, translate_errors
from lake.errors import LakeUnavailable
from lake.schema import PARTITION_COLUMNS, SCHEMA_VERSION, SCHEMA_VERSION_TAG, TableSpec, spec
from lake.storage import LakeLocation, LakeSettings, resolve

_TRANSIENT_RETRIES = 5

BatchData: TypeAlias = pa.Table | pa.RecordBatch | dict[str, object]


@dataclass(frozen=True)
class PreparedBatch:
    """A batch conformed to its table and numbered, ready to commit (or to spool)."""

    table: str
    writer_id: str
    seq: int
    data: pa.Table

    @property
    def batch_id(self) -> str:
        return f"{self.writer_id}-{self.seq}"


@dataclass
class CommitResult:
    table: str
    batch_id: str
    rows: int
    version: int | None  # Delta version written; None when the batch had already landed
    duplicate: bool = False


@dataclass
class LakeWriter:
    """Appends batches for one node. Thread-safe; one writer id per agent process."""

    location: LakeLocation
    node: str
    writer_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    _seq: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tables: dict[str, DeltaTable] = field(default_factory=dict)
    # Table -> the last seq of this writer id known to have landed, kept while that
    # knowledge is exact: only for a writer id this object made up (no other writer, past
    # or present, can use it) and dropped when a commit attempt fails (it may have landed).
    # It spares the lake read of ``transaction_version`` (~5 ms) before each commit.
    _landed: dict[str, int] = field(default_factory=dict)
    _own_id: bool = False

    @classmethod
    def from_settings(cls, settings: LakeSettings, writer_id: str | None = None) -> LakeWriter:
        if writer_id:
            return cls(resolve(settings), settings.node, writer_id)
        writer = cls(resolve(settings), settings.node)
        writer._own_id = True
        return writer

    # -- public API ---------------------------------------------------------------------
    def prepare(self, table: str, data: BatchData) -> PreparedBatch:
        """Conform ``data`` to ``table`` and give it the next sequence number."""
        table_spec = spec(table)
        with self._lock:
            seq = self._seq.get(table, 0) + 1
            self._seq[table] = seq
        batch_id = f"{self.writer_id}-{seq}"
        conformed = conform(table_spec, to_table(data), node=self.node, batch_id=batch_id)
        return PreparedBatch(table, self.writer_id, seq, conformed)

    def commit(self, batch: PreparedBatch) -> CommitResult:
        """Commit a prepared batch exactly once, however many times this is called."""
        rows = batch.data.num_rows
        last_error: Exception | None = None
        for attempt in range(_TRANSIENT_RETRIES):
            known = self._landed.pop(batch.table, None) if self._own_id else None
            with translate_errors(f"append to {batch.table}"):
                dt = self._table(batch.table, refresh=attempt > 0)
                if batch.writer_id != self.writer_id or known is None or attempt > 0:
                    landed = dt.transaction_version(batch.writer_id) or 0
                else:
                    landed = known  # exact: every commit under this id went through here
                if landed >= batch.seq or rows == 0:
                    if batch.writer_id == self.writer_id:
                        self._landed[batch.table] = landed
                    if landed >= batch.seq:
                        return CommitResult(batch.table, batch.batch_id, rows, None,
                                            duplicate=True)
                    return CommitResult(batch.table, batch.batch_id, 0, None)
                try:
                    write_deltalake(
                        dt,
                        batch.data,
                        mode="append",
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(batch.writer_id, batch.seq)],
                            max_commit_retries=50,
                        ),
                    )
                except CommitFailedError as err:  # lost every race: re-read, check, retry
                    last_error = err
                    time.sleep(0.05 * (attempt + 1))
                    continue
                # write_deltalake leaves ``dt`` at the version it committed: no re-read of
                # the log (a LIST per commit on S3), and the version is ours, not whatever
                # another writer committed since.
                if batch.writer_id == self.writer_id:
                    self._landed[batch.table] = max(landed, batch.seq)
                return CommitResult(batch.table, batch.batch_id, rows, dt.version())
        raise LakeUnavailable(f"append to {batch.table} failed after retries: {last_error}")

    def append(self, table: str, data: BatchData) -> CommitResult:
        """Prepare and commit in one step."""
        return self.commit(self.prepare(table, data))

    def ensure_tables(self, tables: list[str] | None = None) -> None:
        """Create the named (default: all) tables if they do not exist yet."""
        from lake.schema import TABLE_NAMES

        for name in tables or list(TABLE_NAMES):
            with translate_errors(f"create {name}"):
                self._table(name)

    # -- internals ----------------------------------------------------------------------
    def _table(self, table: str, refresh: bool = False) -> DeltaTable:
        dt = self._tables.get(table)
        if dt is not None:
            if refresh:
                dt.update_incremental()
            return dt
        dt = open_table(self.location, table)
        if dt is None:
            dt = _create(self.location, spec(table))
        self._tables[table] = dt
        return dt


def _create(location: LakeLocation, table_spec: TableSpec) -> DeltaTable:
    uri = location.for_deltalake(table_spec.name)
    try:
        return DeltaTable.create(
            uri,
            table_spec.schema,
            mode="ignore",  # several agents may race to create the same table
            partition_by=list(PARTITION_COLUMNS),
            name=table_spec.name,
            # delta-rs refuses custom table properties, so the schema version rides in the
            # description, where open_table() checks it.
            description=f"{SCHEMA_VERSION_TAG}{SCHEMA_VERSION}: {table_spec.doc}",
            storage_options=location.storage_options or None,
        )
    except (CommitFailedError, TableNotFoundError):
        # Lost the creation race: the winner's table is the one to use.
        opened = open_table(location, table_spec.name)
        if opened is None:
            raise
        return opened
