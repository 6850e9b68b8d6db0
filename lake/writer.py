"""Appending batches to lake tables: one batch, one Delta commit, never twice.

A batch is identified by ``(writer_id, seq)``. The commit carries a Delta *transaction
identifier* (``txn`` action, appId = writer id, version = seq), the protocol's own device for
idempotent writers: before committing, and again before any retry, the writer reads the
table's last committed version for its appId and skips a batch that already landed. So a
flush retried after an ambiguous failure (the commit reached S3 but the answer did not come
back) never duplicates rows. Every row also stores ``batch_id`` = ``{writer_id}-{seq}``.

A reader never sees part of a batch: Delta makes the commit file appear atomically.

Small batches go through ``write_deltalake``; large ones (``direct_min_rows``) are encoded
and uploaded here and committed as file actions with the same transaction id
(lake/datafiles.py). Either way the writer checkpoints its tables every
``checkpoint_every`` versions and reloads them from there: a long-lived DeltaTable object
otherwise makes every append dearer than the last.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TypeAlias

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake._internal import DeltaFileSystemHandler
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.schema import Field as DeltaField
from deltalake.transaction import AddAction, RemoveAction

from kprobe.lake import datafiles, payload_keys
from kprobe.lake._batches import conform, to_table
from kprobe.lake._deltaio import open_table, translate_errors
from kprobe.lake.errors import LakeError, LakeUnavailable
from kprobe.lake.schema import (
    PARTITION_COLUMNS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TAG,
    TableSpec,
    spec,
)
from kprobe.lake.sealing import seal_table
from kprobe.lake.storage import LakeLocation, LakeSettings, resolve

log = logging.getLogger(__name__)

_TRANSIENT_RETRIES = 5
# Delta's default ``delta.checkpointInterval``: the commit at version v writes a checkpoint
# when (v + 1) is a multiple of it (the post-commit hook of whoever committed v).
_CHECKPOINT_INTERVAL = 100
# The writer checkpoints more often than that, and reloads after each (see ``_rebase``).
CHECKPOINT_EVERY = 20
# Commit log files older than this, and older than the newest checkpoint, are deleted
# after each checkpoint. Every commit lists the whole ``_delta_log`` (a LIST per commit on
# S3), so its cost grows with the number of log files: measured on a local lake, a 1-row
# commit took 5.6 ms with 46 log files, 6.7 ms with 163, 9.7 ms with 643 and 30 ms with
# 3000 (at 600 data files; the data files add their own growth: 4.0 ms at 115 files, 9.6
# ms at 3015, which compaction bounds, lake/maintenance.py). At one commit per table per
# second, 2 minutes keeps ~140 files. Nothing here reads old versions (no time travel); a
# reader only needs the commits after the newest checkpoint, which are never deleted; a
# reader older than that still updates (from the checkpoint: tests/unit/test_lake_tables.py).
LOG_RETENTION = "interval 2 minutes"
TABLE_PROPERTIES = {"delta.logRetentionDuration": LOG_RETENTION,
                    "delta.enableExpiredLogCleanup": "true"}
# Batches of this many rows or more are encoded here and committed as file actions
# (lake/datafiles.py); smaller ones through write_deltalake, whose fixed cost per commit is
# lower (10 rows: 5 ms of CPU, against 7 ms with the extra snapshot update the other way).
DIRECT_MIN_ROWS = 10_000

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
    # Table -> the version its DeltaTable object was loaded at (see ``_rebase``).
    _loaded_at: dict[str, int] = field(default_factory=dict)
    _stores: dict[str, DeltaFileSystemHandler] = field(default_factory=dict)
    direct_min_rows: int = DIRECT_MIN_ROWS
    checkpoint_every: int = CHECKPOINT_EVERY

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
        if table_spec.sealed_column and self.location.payload_key_file:
            # sealed before it can reach the spool or the lake (lake/sealing.py)
            conformed = seal_table(conformed, payload_keys.load(self.location.payload_key_file),
                                   table_spec.sealed_column)
        return PreparedBatch(table, self.writer_id, seq, conformed)

    def commit(self, batch: PreparedBatch) -> CommitResult:
        """Commit a prepared batch exactly once, however many times this is called."""
        rows = batch.data.num_rows
        last_error: Exception | None = None
        for attempt in range(_TRANSIENT_RETRIES):
            known = self._landed.pop(batch.table, None) if self._own_id else None
            with translate_errors(f"append to {batch.table}"):
                try:
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
                    commit_properties = CommitProperties(
                        app_transactions=[Transaction(batch.writer_id, batch.seq)],
                        max_commit_retries=50,
                    )
                    try:
                        if not self._append_files(dt, batch, commit_properties):
                            write_deltalake(
                                dt,
                                batch.data,
                                mode="append",
                                writer_properties=datafiles.writer_properties(batch.table),
                                commit_properties=commit_properties,
                            )
                    except CommitFailedError as err:  # lost every race: re-read, check, retry
                        last_error = err
                        time.sleep(0.05 * (attempt + 1))
                        continue
                    # ``dt`` is left at the version committed (by write_deltalake) or at the
                    # newest (after a direct append): no re-read of the log before the next.
                    if batch.writer_id == self.writer_id:
                        self._landed[batch.table] = max(landed, batch.seq)
                    version = dt.version()
                    self._rebase(batch.table, dt, version)
                    return CommitResult(batch.table, batch.batch_id, rows, version)
                except DeltaError as err:
                    if not _log_cleaned_up(err):
                        raise
                    # this object's snapshot predates commits another writer's clean-up
                    # removed (a table this writer appends to rarely): reload, retry
                    self._tables.pop(batch.table, None)
                    last_error = err
        raise LakeUnavailable(f"append to {batch.table} failed after retries: {last_error}")

    def append(self, table: str, data: BatchData) -> CommitResult:
        """Prepare and commit in one step."""
        return self.commit(self.prepare(table, data))

    def ensure_tables(self, tables: list[str] | None = None) -> None:
        """Create the named (default: all) tables if they do not exist yet; check the
        payload key file, if any (a writer that could not seal must fail at its start)."""
        from kprobe.lake.schema import TABLE_NAMES

        if self.location.payload_key_file:
            payload_keys.load(self.location.payload_key_file)

        for name in tables or list(TABLE_NAMES):
            with translate_errors(f"create {name}"):
                self._table(name)

    # -- internals ----------------------------------------------------------------------
    def _table(self, table: str, refresh: bool = False) -> DeltaTable:
        dt = self._tables.get(table)
        if dt is not None:
            if not refresh:
                return dt
            try:
                dt.update_incremental()
                return dt
            except DeltaError as err:  # the commits it would replay were cleaned up
                if not _log_cleaned_up(err):
                    raise
        dt = open_table(self.location, table)
        if dt is None:
            dt = _create(self.location, spec(table))
        else:
            if any(dt.metadata().configuration.get(k) != v
                   for k, v in TABLE_PROPERTIES.items()):
                _set_properties(dt, table)  # a table made before they were set
            _add_missing_columns(dt, spec(table))  # a table made by an older schema v1
        self._tables[table] = dt
        self._loaded_at[table] = dt.version()
        return dt

    def _append_files(self, dt: DeltaTable, batch: PreparedBatch,
                      commit_properties: CommitProperties) -> bool:
        """Encode, upload and commit ``batch`` as file actions (lake/datafiles.py); False
        when it is for write_deltalake (small, or partition values needing escapes)."""
        if batch.data.num_rows < self.direct_min_rows:
            return False
        partitions = datafiles.partition_values(batch.data)
        if partitions is None:
            return False
        store = self._stores.get(batch.table)
        if store is None:
            store = DeltaFileSystemHandler(self.location.for_deltalake(batch.table),
                                        self.location.storage_options or None)
            self._stores[batch.table] = store
        adds: list[AddAction | RemoveAction] = [
            datafiles.upload(store, f)
            for f in datafiles.encode(batch.table, batch.data, partitions)]
        dt.create_write_transaction(adds, "append", dt.schema(),
                                    partition_by=list(PARTITION_COLUMNS),
                                    commit_properties=commit_properties)
        # Unlike write_deltalake, this leaves ``dt`` at the version it read: the next
        # commit would then conflict with this one's transaction id.
        dt.update_incremental()
        return True

    def _rebase(self, table: str, dt: DeltaTable, version: int) -> None:
        """Checkpoint ``table`` every ``checkpoint_every`` versions and reload it from its
        newest checkpoint once one exists past the load.

        A DeltaTable object carries forward every commit since it was loaded, and each
        append replays them all again (a checkpoint written meanwhile is not picked up):
        measured on a local lake, a 10-row append cost 4 ms on a fresh object and 30 ms
        after 300 commits, growing without bound; within one checkpoint interval it still
        grows (a 110k-row flush: 22 ms after a checkpoint, 48 ms 100 commits later).
        Delta's default interval is 100; a checkpoint and a reload cost about one append
        each while the table has few files (~40 ms at 3600 files).
        """
        every = self.checkpoint_every
        if (version + 1) % every == 0 and (version + 1) % _CHECKPOINT_INTERVAL:
            try:  # (a multiple of the default interval: the commit's own hook wrote it)
                with translate_errors(f"checkpoint {table}"):
                    dt.create_checkpoint()
                    dt.cleanup_metadata()  # log files past LOG_RETENTION
            except LakeError as err:  # the batch has landed; a later checkpoint will do
                log.warning("no checkpoint of %s at version %d: %s", table, version, err)
        loaded = self._loaded_at.get(table, version)
        if (version + 1) // every <= (loaded + 1) // every:
            return
        try:
            with translate_errors(f"reload {table}"):
                reloaded = open_table(self.location, table)
        except LakeError as err:  # the batch has landed; the old object still works
            log.warning("keeping the loaded %s table: %s", table, err)
            return
        if reloaded is not None:
            self._tables[table] = reloaded
            self._loaded_at[table] = reloaded.version()


def _log_cleaned_up(err: Exception) -> bool:
    """A commit file this table object still needed is gone: another writer's expired-log
    clean-up (``LOG_RETENTION``) removed it after a newer checkpoint."""
    text = str(err)
    return "_delta_log" in text and ("not found" in text.lower()
                                     or "no such file" in text.lower())


def _set_properties(dt: DeltaTable, table: str) -> None:
    try:
        with translate_errors(f"set properties of {table}"):
            dt.alter.set_table_properties(TABLE_PROPERTIES, raise_if_not_exists=False)
    except LakeError as err:  # e.g. another writer altered it at once: appends still work
        log.warning("table %s keeps its log retention: %s", table, err)


def _add_missing_columns(dt: DeltaTable, table_spec: TableSpec) -> None:
    """Add the (nullable) columns schema v1 gained since ``dt`` was created: rows written
    before read them as nulls. Several writers may race: a column another one added
    meanwhile is not added twice."""
    present = set(dt.schema().to_arrow().names)
    missing = [f for f in table_spec.schema if f.name not in present]
    if not missing:
        return
    with translate_errors(f"add columns to {table_spec.name}"):
        try:
            dt.alter.add_columns([DeltaField.from_arrow(f) for f in missing])
        except (CommitFailedError, DeltaError):
            dt.update_incremental()
            present = set(dt.schema().to_arrow().names)
            if any(f.name not in present for f in missing):
                raise


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
            configuration=TABLE_PROPERTIES,
            storage_options=location.storage_options or None,
        )
    except (CommitFailedError, TableNotFoundError):
        # Lost the creation race: the winner's table is the one to use.
        opened = open_table(location, table_spec.name)
        if opened is None:
            raise
        return opened
