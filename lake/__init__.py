"""The kprobe event lake: schema v1, storage, writers and readers (imports nothing of ours)."""

from lake.errors import (
    LakeError,
    LakeUnavailable,
    ReadOnlyViolation,
    SchemaError,
    SchemaVersionError,
    UnknownTable,
)
from lake.reader import LakeDatabase, connect
from lake.schema import SCHEMA_VERSION, TABLE_NAMES, TABLES
from lake.storage import LakeLocation, LakeSettings, resolve
from lake.tables import TableCache, TableSnapshot
from lake.writer import CommitResult, LakeWriter, PreparedBatch

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "TABLE_NAMES",
    "CommitResult",
    "LakeDatabase",
    "LakeError",
    "LakeLocation",
    "LakeSettings",
    "LakeUnavailable",
    "LakeWriter",
    "PreparedBatch",
    "ReadOnlyViolation",
    "SchemaError",
    "SchemaVersionError",
    "TableCache",
    "TableSnapshot",
    "UnknownTable",
    "connect",
    "resolve",
]
