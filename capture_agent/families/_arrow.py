"""numpy columns of a drained batch -> Arrow arrays, vectorised (no Python loop per event)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.layouts import EVENT_HEADER, Family

_INT32 = pa.int32()


class Header(NamedTuple):
    """The header fields of a batch's records after ``ktime_ns``, as arrays."""

    kind: np.ndarray  # uint16
    cpu: np.ndarray  # uint16
    version: np.ndarray  # uint8
    flags: np.ndarray  # uint8


def _offset(dtype: np.dtype, field: str) -> int:
    fields = dtype.fields
    assert fields is not None
    return int(fields[field][1])


_META_OFFSET = _offset(EVENT_HEADER, "kind")  # kind, size, cpu, version, flags: 8 bytes
assert [_offset(EVENT_HEADER, f) - _META_OFFSET
        for f in ("kind", "size", "cpu", "version", "flags")] == [0, 2, 4, 6, 7]


@cache
def _meta_view(record: np.dtype) -> np.dtype:
    return np.dtype({"names": ["meta"], "formats": ["<u8"],
                     "offsets": [_offset(record, "hdr") + _META_OFFSET],
                     "itemsize": record.itemsize})


@cache
def _allowed(kinds: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(1 << 16, bool)
    table[list(kinds)] = True
    return table


def header(batch: np.ndarray) -> Header:
    """Every record's kind, cpu, version and flags from one gather of the 8 header bytes
    that hold them (a strided read of the batch costs ~4 ns per record, field by field)."""
    meta = np.ascontiguousarray(batch.view(_meta_view(batch.dtype))["meta"])
    words = meta.view(np.uint16).reshape(-1, 4)
    octets = meta.view(np.uint8).reshape(-1, 8)
    return Header(words[:, 0], words[:, 2], octets[:, 6], octets[:, 7])


def check_header(batch: np.ndarray, family: Family, kinds: tuple[int, ...]) -> Header:
    """The batch's ``header``, after refusing records of another layout version than
    ``family``'s or of a kind not in ``kinds`` (RingBufferError). Every family's
    converters start here."""
    hdr = header(batch)
    if not len(batch):
        return hdr
    layout_version = family.layout_version
    wrong_version = hdr.version != layout_version
    if wrong_version.any():
        raise RingBufferError(
            f"{family.name} record layout version {int(hdr.version[wrong_version][0])}, this"
            f" agent reads {layout_version}: rebuild the BPF objects (make bpf)")
    known = _allowed(kinds)[hdr.kind]
    if not known.all():
        raise RingBufferError(f"unexpected record kinds in a {family.name} batch: "
                              f"{sorted(set(hdr.kind[~known].tolist()))}")
    return hdr


def int_array(values: np.ndarray, null: np.ndarray | None = None,
              arrow_type: pa.DataType = _INT32) -> pa.Array:
    """Kernel integers as a signed lake column (Delta has no unsigned types)."""
    return pa.array(values.astype(arrow_type.to_pandas_dtype(), copy=False), type=arrow_type,
                    mask=null)


def lookup_strings(names: Sequence[str], codes: np.ndarray,
                   null: np.ndarray | None = None) -> pa.Array:
    """``names[code]`` per row via Arrow take; a code outside ``names`` becomes null."""
    idx = codes.astype(np.int32, copy=False)
    out_of_range = (idx < 0) | (idx >= len(names))
    mask = out_of_range if null is None else (out_of_range | null)
    indices = pa.array(np.where(out_of_range, 0, idx), type=pa.int32(), mask=mask)
    return pc.take(pa.array(list(names), type=pa.string()), indices)


def comm_array(comms: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """Fixed ``char[16]`` task names (NUL-padded) -> strings.

    Arrow reads numpy bytes up to the first NUL. A comm is whatever bytes a process set
    (prctl): if any is not UTF-8, decode the distinct values (a few hundred, not one per
    event) with replacement characters.
    """
    raw = pa.array(comms, type=pa.binary(), mask=null)
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        distinct, inverse = np.unique(comms, return_inverse=True)
        decoded = pa.array([bytes(v).decode("utf-8", "replace") for v in distinct],
                           type=pa.string())
        return pc.take(decoded, pa.array(inverse.ravel().astype(np.int32), mask=null))
