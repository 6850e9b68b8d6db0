"""Following one table as it grows: the rows of each new commit, read once.

A ``TableTail`` remembers the table's version and the data files it has seen. ``poll()``
refreshes the Delta log incrementally (``update_incremental``: one listing of
``_delta_log``) and, when the version moved, diffs the table's add actions against the
known files and reads only the new data files (their ``node``/``hour`` come from the add
action's partition values). A commit that is not an append (compaction, retention, a
re-analysis replacing rows) rewrites files whose rows were already seen: those files become
known without being read, and the poll answers ``Rewritten``.

Files are read through pyarrow's native file systems (``lake.storage.filesystem``), not
deltalake's Python file system handler (reading through that handler and then exiting has
aborted the interpreter on this machine, ``terminate called without an active exception``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from kprobe.lake._deltaio import open_table, translate_errors
from kprobe.lake.storage import LakeLocation, filesystem

_APPEND_OPS = {"WRITE", "STREAMING UPDATE", "CREATE TABLE"}


@dataclass(frozen=True)
class Appended:
    """Rows that commits since the last poll appended (as stored, with node and hour)."""

    version: int
    rows: pa.Table


@dataclass(frozen=True)
class Rewritten:
    """Commits since the last poll rewrote rows already seen: nothing is read again."""

    version: int


class TableTail:
    """One table's position: its version and the data files seen. Not thread-safe."""

    def __init__(self, location: LakeLocation, table: str) -> None:
        self.location = location
        self.table = table
        self.version = -1
        self._dt: DeltaTable | None = None
        self._known: set[str] = set()
        self._fs, self._base = filesystem(location)

    def reset(self) -> None:
        """Start from the table as it is now: what is there already is never returned."""
        with translate_errors(f"open {self.table}"):
            self._dt = open_table(self.location, self.table)
            self._known = set()
            self.version = -1
            if self._dt is not None:
                self.version = self._dt.version()
                self._known = set(_add_actions(self._dt).column("path").to_pylist())

    def poll(self) -> Appended | Rewritten | None:
        """What changed since the last poll (or reset); None when nothing did."""
        with translate_errors(f"poll {self.table}"):
            return self._poll()

    def _poll(self) -> Appended | Rewritten | None:
        if self._dt is None:
            self._dt = open_table(self.location, self.table)
            if self._dt is None:
                return None
        else:
            self._dt.update_incremental()
        dt = self._dt
        version = dt.version()
        if version == self.version:
            return None
        actions = _add_actions(dt)
        paths = actions.column("path").to_pylist()
        new_mask = [p not in self._known for p in paths]  # one entry per file, not per row
        appended = _only_appends(dt, version - self.version)
        self._known = set(paths)
        self.version = version
        if not any(new_mask):
            return None
        if not appended:
            return Rewritten(version)
        new = actions.filter(pa.array(new_mask))
        parts = [self._read(p, node, hour) for p, node, hour in zip(
            new.column("path").to_pylist(), new.column("partition.node").to_pylist(),
            new.column("partition.hour").to_pylist())]
        return Appended(version, pa.concat_tables(parts, promote_options="default"))

    def _read(self, path: str, node: str | None, hour: str | None) -> pa.Table:
        full = path if "://" in path else "/".join([self._base, "v1", self.table,
                                                    unquote(path)])
        if "://" in full:  # an absolute URI in the log
            full = full.split("://", 1)[1]
        data = pq.read_table(full, filesystem=self._fs)
        n = data.num_rows
        if "node" not in data.column_names:
            data = data.append_column("node", pa.repeat(pa.scalar(node, pa.string()), n))
        if "hour" not in data.column_names:
            data = data.append_column("hour", pa.repeat(pa.scalar(hour, pa.string()), n))
        return data


def _add_actions(dt: DeltaTable) -> pa.Table:
    return pa.table(dt.get_add_actions(flatten=True))


def _only_appends(dt: DeltaTable, versions: int) -> bool:
    for commit in dt.history(max(1, versions)):
        operation = commit.get("operation")
        mode = (commit.get("operationParameters") or {}).get("mode", "Append")
        if operation not in _APPEND_OPS or (operation == "WRITE" and mode != "Append"):
            return False
    return True
