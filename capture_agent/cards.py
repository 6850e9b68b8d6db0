"""Card numbers (PANs) in payload bytes, masked before they reach the lake.

A PAN is 13 to 19 digits passing the Luhn check, written either unbroken (and not part of a
longer run of digits) or in the groups cards are printed in, separated by one space or one
dash used consistently: 4-4-4-4 (16), 4-4-4-4-3 (19), 4-4-4-1..7 (13-19), 4-6-5 (15,
American Express), 4-6-4 (14, Diners). A match keeps its first 6 and last 4 digits (the
BIN and the last four, as PCI DSS allows displaying) and every other digit becomes
``MASK`` (``*``); separators and the length stay, so a replay serves and compares the same
number of bytes at the same offsets. A digit run that fails the Luhn check (an order id, a
timestamp, a phone number) is left alone.

Cost: one vectorised RE2 scan of the whole batch (``PREFILTER``, a superset of every PAN
shape: 13 digits in a row, or the first 13 digits of a grouped form) finds the rows that
could hold one; only those rows, rare in most traffic, are examined in Python. Measured in
``tests/bench/bench_payload_protection.py``.

Limits: a PAN split between two payload chunks (a region is cut into 4 KiB chunks), between
two syscalls (a program writing a few bytes at a time) or written in another shape (other
groupings, other separators, UTF-16) is not recognised; encryption at rest and the
``payloads`` scope protect what this cannot see.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MASK = ord("*")
PREFILTER = (r"[0-9]{13}|[0-9]{4}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]"
             r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4}")
_RUN = re.compile(rb"[0-9]+(?:[ -][0-9]+)*")
_GROUPED = ((4, 6, 5), (4, 6, 4))  # American Express, Diners


def luhn(digits: bytes) -> bool:
    """The Luhn check of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_shape(groups: list[int]) -> bool:
    """Group lengths of a separated number a card could be printed as."""
    if tuple(groups) in _GROUPED:
        return True
    if len(groups) < 4 or any(g != 4 for g in groups[:3]):
        return False
    if len(groups) == 4:
        return 1 <= groups[3] <= 7
    return len(groups) == 5 and groups[3] == 4 and groups[4] == 3


def _mask_span(out: bytearray, positions: list[int]) -> None:
    """Keep the first 6 and last 4 of the digits at ``positions``; mask the others."""
    for at in positions[6:-4]:
        out[at] = MASK


def mask_bytes(data: bytes) -> tuple[bytes, int]:
    """``data`` with every PAN in it masked, and how many there were."""
    out: bytearray | None = None
    found = 0
    for run in _RUN.finditer(data):
        start, text = run.start(), run.group()
        digits = [start + i for i, ch in enumerate(text) if 48 <= ch <= 57]
        if len(digits) == len(text):  # unbroken: the whole run, 13 to 19 digits
            if 13 <= len(text) <= 19 and luhn(text):
                out = out if out is not None else bytearray(data)
                _mask_span(out, digits)
                found += 1
            continue
        # grouped: each group alone (unbroken), and every window of whole groups with one
        # separator and a card's shape
        bounds = [(m.start() + start, m.end() + start) for m in re.finditer(rb"[0-9]+", text)]
        seps = [data[bounds[i][1]] for i in range(len(bounds) - 1)]
        for a, b in bounds:
            if 13 <= b - a <= 19 and luhn(data[a:b]):
                out = out if out is not None else bytearray(data)
                _mask_span(out, list(range(a, b)))
                found += 1
        for first in range(len(bounds)):
            for last in range(first + 1, min(first + 5, len(bounds))):
                if len(set(seps[first:last])) != 1:
                    break
                groups = [b - a for a, b in bounds[first:last + 1]]
                if not 13 <= sum(groups) <= 19 or not _card_shape(groups):
                    continue
                span = [i for a, b in bounds[first:last + 1] for i in range(a, b)]
                if luhn(bytes(data[i] for i in span)):
                    out = out if out is not None else bytearray(data)
                    _mask_span(out, span)
                    found += 1
    return (data if out is None else bytes(out)), found


def mask_pans(values: pa.Array) -> tuple[pa.Array, int]:
    """A binary (or string) array with the PANs in its values masked, and how many were."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return values, 0
    hits = np.flatnonzero(np.asarray(pc.fill_null(
        pc.match_substring_regex(values, PREFILTER), False).to_numpy(zero_copy_only=False)))
    if not len(hits):
        return values, 0
    masked: list[bytes | None] = []
    found = 0
    for value in values.take(pa.array(hits)).to_pylist():  # candidate rows only
        raw = value.encode() if isinstance(value, str) else value
        new, n = mask_bytes(raw)
        masked.append(new)
        found += n
    if not found:
        return values, 0
    replacement = pa.array(masked, pa.binary())
    if not pa.types.is_binary(values.type):
        replacement = replacement.cast(values.type)  # ASCII '*' for ASCII digits: still UTF-8
    index = np.arange(len(values), dtype=np.int64)
    index[hits] = len(values) + np.arange(len(hits))
    return pa.concat_arrays([values, replacement]).take(pa.array(index)), found
