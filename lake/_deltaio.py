"""Opening Delta tables and translating deltalake's errors into ours, in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

from kprobe.lake.errors import LakeError, LakeUnavailable, SchemaVersionError, one_line
from kprobe.lake.schema import SCHEMA_VERSION, SCHEMA_VERSION_TAG
from kprobe.lake.storage import LakeLocation, filesystem

# Substrings of object-store errors that mean "cannot reach or not allowed", as opposed to
# a bug in the request.
_UNAVAILABLE = re.compile(
    r"connect|timed out|timeout|dns|resolve|refused|unreachable|credential|access ?denied|"
    r"forbidden|403|401|signature|invalidaccesskey|nosuchbucket|no such bucket|"
    r"error sending request|tcp connect|io error|os error|could not create|permission denied|"
    r"no such file|read-only file system|no space left",
    re.IGNORECASE,
)
_VERSION_TAG = re.compile(re.escape(SCHEMA_VERSION_TAG) + r"(\d+)")


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn storage and Delta failures during ``action`` into one-line LakeErrors."""
    try:
        yield
    except LakeError:
        raise
    except (OSError, DeltaError, DeltaProtocolError) as err:
        reason = one_line(err)
        if isinstance(err, OSError) or _UNAVAILABLE.search(reason):
            raise LakeUnavailable(f"lake unavailable ({action}): {reason}") from err
        raise LakeError(f"{action} failed: {reason}") from err


def log_missing(location: LakeLocation, table: str) -> bool:
    """A table that has files but no ``_delta_log``: its log was lost (or moved), and
    reading it as an empty table would answer wrong. One listing of the table's directory
    (an object-store LIST)."""
    if location.scheme == "file":  # on every check of a cached table: keep it cheap
        directory = location.local_path / "v1" / table
        try:
            if all(name == "_delta_log" for name in os.listdir(directory)):
                return False  # not created yet
            with os.scandir(directory / "_delta_log") as log:
                return not any(entry.is_file() for entry in log)  # stops at the first
        except FileNotFoundError:
            return directory.is_dir()
        except OSError:
            return False
    fs, base = filesystem(location)
    try:
        entries = fs.get_file_info(pafs.FileSelector(f"{base}/v1/{table}",
                                                     allow_not_found=True))
        data = [e for e in entries if e.base_name != "_delta_log"]
        if not data:
            return False  # not created yet
        # an empty _delta_log "directory" may remain on object stores that keep them
        commits = fs.get_file_info(pafs.FileSelector(f"{base}/v1/{table}/_delta_log",
                                                     allow_not_found=True))
    except OSError:
        return False  # cannot tell: the open that follows says why
    return not any(e.type == pafs.FileType.File for e in commits)


def open_table(location: LakeLocation, table: str) -> DeltaTable | None:
    """The table, or None when it does not exist yet. Checks the schema version."""
    uri = location.for_deltalake(table)
    try:
        dt = DeltaTable(uri, storage_options=location.storage_options or None)
    except TableNotFoundError:
        if log_missing(location, table):
            raise LakeUnavailable(f"lake unreadable: table {table} has data files but no "
                                  "_delta_log (lost or moved): restore its log") from None
        return None
    match = _VERSION_TAG.match(dt.metadata().description or "")
    found = match.group(1) if match else None
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"table {table} has schema version {found or 'unknown'}; "
            f"this kprobe reads version {SCHEMA_VERSION}"
        )
    return dt
