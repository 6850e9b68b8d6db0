"""numpy columns of a drained batch -> Arrow arrays, vectorised (no Python loop per event)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT32 = pa.int32()


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
