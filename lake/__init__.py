"""The kprobe event lake: schema v1, storage, writers and readers (imports nothing of ours)."""

from typing import TYPE_CHECKING

from lake.errors import (
    LakeError,
    LakeUnavailable,
    ReadOnlyViolation,
    SchemaError,
    SchemaVersionError,
    UnknownTable,
)
from lake.schema import SCHEMA_VERSION, TABLE_NAMES, TABLES
from lake.storage import LakeLocation, LakeSettings, resolve
from lake.writer import CommitResult, LakeWriter, PreparedBatch

if TYPE_CHECKING:
    from lake.reader import LakeDatabase, connect
    from lake.tables import TableCache, TableSnapshot

# The read side (DuckDB, ~10 MB resident and 0.1 s to import) loads on first use: the
# capture agent writes the lake and never queries it.
_LAZY = {"LakeDatabase": "lake.reader", "connect": "lake.reader",
         "TableCache": "lake.tables", "TableSnapshot": "lake.tables"}


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
