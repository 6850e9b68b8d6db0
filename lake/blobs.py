"""The content-addressed store of file versions: table ``blobs``.

A read of a regular file is recorded by the file's identity and the offset read
(``syscall_data.blob`` / ``blob_offset``); the content of each version is stored once, as a
row of ``blobs`` named by its hash (``lake.sealing.blob_name``), by the agent that saw the
read first (capture_agent/file_store.py). Retention drops whole hours, so a row may only
name content stored in its own hour or a later one: each hour holds the content its rows
name, once, whichever node stored it (``present`` asks before storing).

    present(location, "2026-12-06T09", ["ab12...", ...]) -> names that hour already holds
    fetch(location, names, hours) -> {name: (data, seal)}
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from kprobe.lake._batches import NS_PER_HOUR, hour_label
from kprobe.lake._deltaio import open_table, translate_errors
from kprobe.lake.storage import LakeLocation

TABLE = "blobs"


def _dataset(location: LakeLocation) -> pads.Dataset | None:
    with translate_errors(f"read {TABLE}"):
        dt = open_table(location, TABLE)
        return None if dt is None else dt.to_pyarrow_dataset()


def present(location: LakeLocation, hour: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` the lake holds in ``hour`` (any node's)."""
    wanted = sorted(set(names))
    dataset = _dataset(location) if wanted else None
    if dataset is None:
        return set()
    with translate_errors(f"read {TABLE}"):
        found = dataset.to_table(columns=["blob"], filter=(pads.field("hour") == hour)
                                 & pads.field("blob").isin(wanted))
    return set(pc.unique(found.column("blob")).to_pylist())


def fetch(location: LakeLocation, names: Iterable[str],
          hours: Iterable[str] | None = None) -> dict[str, tuple[bytes, bytes | None]]:
    """The stored (data, seal) of each of ``names`` found (in ``hours`` if given: the
    hours of the rows naming them and later)."""
    wanted = sorted(set(names))
    dataset = _dataset(location) if wanted else None
    if dataset is None:
        return {}
    where = pads.field("blob").isin(wanted)
    if hours is not None:
        where &= pads.field("hour").isin(sorted(set(hours)))
    with translate_errors(f"read {TABLE}"):
        rows = dataset.to_table(columns=["blob", "data", "seal"], filter=where)
    out: dict[str, tuple[bytes, bytes | None]] = {}
    # one row per name (an hour may hold a name twice: two nodes stored it at once)
    rows = _first_of_each(rows)
    for name, data, seal in zip(rows.column("blob").to_pylist(),
                                rows.column("data").to_pylist(),
                                rows.column("seal").to_pylist(), strict=True):
        out[name] = (data or b"", seal)
    return out


def hours_between(first_ns: int, last_ns: int) -> list[str]:
    """The hours that may hold the contents rows from ``first_ns`` to ``last_ns`` name:
    theirs and the next (the agent stores a content within seconds of its reads)."""
    return [hour_label(first_ns + h * NS_PER_HOUR)
            for h in range((last_ns - first_ns) // NS_PER_HOUR + 2)] + [
        hour_label(last_ns + NS_PER_HOUR)]


def _first_of_each(rows: pa.Table) -> pa.Table:
    indices = pa.array(range(rows.num_rows), pa.int64())
    keyed = rows.select(["blob"]).append_column("i", indices)
    first = keyed.group_by("blob", use_threads=False).aggregate([("i", "min")])
    return rows.take(first.column("i_min"))


__all__ = ["TABLE", "fetch", "hours_between", "present"]
