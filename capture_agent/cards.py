"""Card numbers (PANs) in payload bytes, masked before they reach the lake.

A PAN is 13 to 19 digits passing the Luhn check and starting with a card issuer's digit
(2-6 or 8: ``_ISSUER_DIGITS``), written either unbroken (and not part of a
longer run of digits) or in the groups cards are printed in, separated by one space or one
dash used consistently: 4-4-4-4 (16), 4-4-4-4-3 (19), 4-4-4-1..7 (13-19), 4-6-5 (15,
American Express), 4-6-4 (14, Diners). A match keeps its first 6 and last 4 digits (the
BIN and the last four, as PCI DSS allows displaying) and every other digit becomes
``MASK`` (``*``); separators and the length stay, so a replay serves and compares the same
number of bytes at the same offsets. A digit run that fails the Luhn check (an order id, a
timestamp, a phone number) is left alone, and so is one inside a hex word of at least
``HEX_WORD`` (32) characters: a hash, a trace id, a UUID written without dashes. A git
object's name (``585b9907bee39765385016483cc6c…``) held a Luhn-valid run: masked, the path
the program opened no longer matched its recording in a replay. Letters elsewhere are
boundaries: track data (``%B4111…^``) or a fixed-width record keeps its PAN masked.

Cost: one vectorised RE2 scan of the whole batch (``PREFILTER``, a superset of every PAN
shape: 13 digits in a row, or the first 13 digits of a grouped form) finds the rows that
could hold one. Those rows are masked together: unbroken numbers with numpy over their
concatenated bytes (digit runs, Luhn sums by ``reduceat``), so rows full of long numbers
(nanosecond timestamps in JSON, order ids) cost no Python; only rows with a grouped shape
(``4111 1111 ...``) are examined in Python. Measured in
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
GROUPED_PREFILTER = (r"[0-9]{4}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]"
                     r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4}")
PREFILTER = r"[0-9]{13}|" + GROUPED_PREFILTER
_RUN = re.compile(rb"[0-9]+(?:[ -][0-9]+)*")
_GROUPED = ((4, 6, 5), (4, 6, 4))  # American Express, Diners


# A PAN's first digit (its major industry identifier) on the cards in use: 2 and 5
# (Mastercard), 3 (Amex, JCB, Diners), 4 (Visa), 6 (Discover, UnionPay, Maestro, RuPay 60/65),
# 8 (RuPay 81/82). Numbers starting with 0, 1, 7 or 9 are never taken for a card: epoch
# timestamps (1...), which pass the Luhn check one time in ten, are the commonest decoy.
_ISSUER_DIGITS = b"234568"


HEX_WORD = 32  # an MD5 in hex; longer than any PAN with the letters around it


def _issuer(first: int) -> bool:
    return first in _ISSUER_DIGITS


def _is_hex(byte: int) -> bool:
    return 48 <= byte <= 57 or 97 <= (byte | 0x20) <= 102


def _in_hex_word(data: bytes, start: int, end: int) -> bool:
    """Whether the digits ``data[start:end]`` lie in a hex word of ``HEX_WORD`` or more."""
    while start > 0 and _is_hex(data[start - 1]):
        start -= 1
    while end < len(data) and _is_hex(data[end]):
        end += 1
    return end - start >= HEX_WORD


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
    """``data`` with every PAN in it masked, and how many there were (the reference: one
    value at a time, for exec regions and tests; batches go through ``mask_pans``)."""
    return _mask_runs(data, unbroken=True)


def _mask_runs(data: bytes, *, unbroken: bool) -> tuple[bytes, int]:
    """PANs in ``data`` masked: grouped ones always, unbroken ones if ``unbroken``."""
    out: bytearray | None = None
    found = 0
    for run in _RUN.finditer(data):
        start, text = run.start(), run.group()
        bounds = [(m.start() + start, m.end() + start) for m in re.finditer(rb"[0-9]+", text)]
        if unbroken:  # each group alone: 13 to 19 digits between non-digits
            for a, b in bounds:
                if (13 <= b - a <= 19 and _issuer(data[a]) and luhn(data[a:b])
                        and not _in_hex_word(data, a, b)):
                    out = out if out is not None else bytearray(data)
                    _mask_span(out, list(range(a, b)))
                    found += 1
        if len(bounds) < 3:
            continue
        # grouped: every window of whole groups with one separator and a card's shape
        seps = [data[bounds[i][1]] for i in range(len(bounds) - 1)]
        for first in range(len(bounds)):
            for last in range(first + 1, min(first + 5, len(bounds))):
                if len(set(seps[first:last])) != 1:
                    break
                groups = [b - a for a, b in bounds[first:last + 1]]
                if not 13 <= sum(groups) <= 19 or not _card_shape(groups):
                    continue
                span = [i for a, b in bounds[first:last + 1] for i in range(a, b)]
                if _issuer(data[span[0]]) and luhn(bytes(data[i] for i in span)):
                    out = out if out is not None else bytearray(data)
                    _mask_span(out, span)
                    found += 1
    return (data if out is None else bytes(out)), found


def _mask_unbroken(buffer: np.ndarray, starts: np.ndarray) -> int:
    """Mask, in place, every run of 13 to 19 digits of ``buffer`` (the values of rows
    starting at ``starts``, side by side) that passes the Luhn check; how many. Vectorised:
    runs from the digit mask's edges, Luhn sums with ``np.add.reduceat``."""
    if not len(buffer):
        return 0
    digit = np.subtract(buffer, 48, dtype=np.uint8) < 10  # '0'..'9' (others wrap past)
    edges = np.diff(digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    run_start = np.flatnonzero(edges == 1)
    run_end = np.flatnonzero(edges == -1)
    # a run never spans two rows: split it where a row starts inside it
    inside = starts[(starts > 0) & (starts < len(buffer))]
    split = inside[digit[inside] & digit[inside - 1]]
    if len(split):
        run_start = np.sort(np.concatenate([run_start, split]))
        run_end = np.sort(np.concatenate([run_end, split]))
    length = run_end - run_start
    pick = (length >= 13) & (length <= 19)
    if not pick.any():
        return 0
    run_start, run_end, length = run_start[pick], run_end[pick], length[pick]
    first = np.cumsum(length) - length
    position = np.repeat(run_start, length) + (np.arange(length.sum()) - np.repeat(first, length))
    from_end = np.repeat(run_end - 1, length) - position
    value = buffer[position].astype(np.int64) - 48
    doubled = value * 2
    value = np.where(from_end % 2 == 1, np.where(doubled > 9, doubled - 9, doubled), value)
    leading = buffer[run_start]
    valid = (np.add.reduceat(value, first) % 10 == 0) & np.isin(
        leading, np.frombuffer(_ISSUER_DIGITS, np.uint8))
    if valid.any():  # a run with a hex letter beside it may lie in a hash: look closer
        before = buffer[np.maximum(run_start - 1, 0)] | 0x20
        after = buffer[np.minimum(run_end, len(buffer) - 1)] | 0x20
        near = valid & (((before >= 97) & (before <= 102) & (run_start > 0))
                        | ((after >= 97) & (after <= 102) & (run_end < len(buffer))))
        if near.any():
            valid[near] = ~_in_hex_words(buffer, starts, run_start[near], run_end[near])
    from_start = position - np.repeat(run_start, length)
    masked = np.repeat(valid, length) & (from_start >= 6) & (from_end >= 4)
    buffer[position[masked]] = MASK
    return int(valid.sum())


def _in_hex_words(buffer: np.ndarray, starts: np.ndarray, run_start: np.ndarray,
                  run_end: np.ndarray) -> np.ndarray:
    """Which digit runs lie in a hex word of ``HEX_WORD`` or more bytes of their own row:
    the hex bytes next to each run are counted in a window of ``HEX_WORD`` bytes on each
    side (the runs' neighbourhoods only, never the whole buffer)."""
    row = np.searchsorted(starts, run_start, side="right") - 1
    row_start = starts[row]
    row_end = np.append(starts, len(buffer))[row + 1]
    steps = np.arange(1, HEX_WORD, dtype=np.int64)

    def hex_run(at: np.ndarray, inside: np.ndarray) -> np.ndarray:
        # hex bytes in a row from each run's edge outwards (a cumulative product stops at
        # the first byte that is not hex or not in the run's row)
        byte = buffer[np.clip(at, 0, len(buffer) - 1)]
        folded = byte | 0x20
        hexa = ((byte >= 48) & (byte <= 57)) | ((folded >= 97) & (folded <= 102))
        return np.asarray(np.cumprod(hexa & inside, axis=1).sum(axis=1), np.int64)

    left = run_start[:, None] - steps[None, :]
    right = run_end[:, None] - 1 + steps[None, :]
    word = (hex_run(left, left >= row_start[:, None]) + (run_end - run_start)
            + hex_run(right, right < row_end[:, None]))
    return np.asarray(word >= HEX_WORD, bool)


def mask_pans(values: pa.Array) -> tuple[pa.Array, int]:
    """A binary (or string) array with the PANs in its values masked, and how many were.

    The rows the prefilter keeps are masked together: unbroken PANs with numpy over their
    concatenated bytes, grouped ones (rarer still: only rows with a grouped shape) in
    Python. Lengths and offsets never change."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return values, 0
    hits = np.flatnonzero(_matches(values, PREFILTER))
    if not len(hits):
        return values, 0
    everything = len(hits) * 2 > len(values)  # then mask them all: no gather, no scatter
    rows = values if everything else values.take(pa.array(hits))
    if not pa.types.is_binary(rows.type):
        rows = rows.cast(pa.binary())
    if rows.offset:
        rows = pa.concat_arrays([rows])
    offsets = np.frombuffer(rows.buffers()[1], np.int32, len(rows) + 1).astype(np.int64)
    data = rows.buffers()[2]
    buffer = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]].copy() if data else (
        np.zeros(0, np.uint8))
    found = _mask_unbroken(buffer, offsets[:-1] - offsets[0])
    masked = pa.Array.from_buffers(pa.binary(), len(rows), [
        rows.buffers()[0], pa.py_buffer((offsets - offsets[0]).astype(np.int32)),
        pa.py_buffer(buffer)], null_count=rows.null_count)
    grouped = np.flatnonzero(_matches(rows, GROUPED_PREFILTER))
    if len(grouped):  # Python on the rows with a grouped shape only
        redone = []
        pick = pa.array(grouped)
        for original, done in zip(rows.take(pick).to_pylist(), masked.take(pick).to_pylist(),
                                  strict=True):
            # windows are found on the original bytes (as mask_bytes does), then added to
            # what the numpy pass masked
            new, n = _mask_runs(original, unbroken=False)
            if n:
                added = np.frombuffer(new, np.uint8) != np.frombuffer(original, np.uint8)
                both = np.frombuffer(done, np.uint8).copy()
                both[added] = MASK
                done = both.tobytes()
            redone.append(done)
            found += n
        index = np.arange(len(masked), dtype=np.int64)
        index[grouped] = len(masked) + np.arange(len(grouped))
        masked = pa.concat_arrays([masked, pa.array(redone, pa.binary())]).take(
            pa.array(index))
    if not found:
        return values, 0
    if not pa.types.is_binary(values.type):
        masked = masked.cast(values.type)  # ASCII '*' for ASCII digits: still UTF-8
    if everything:
        return masked, found
    index = np.arange(len(values), dtype=np.int64)
    index[hits] = len(values) + np.arange(len(hits))
    return pa.concat_arrays([values, masked]).take(pa.array(index)), found


def _matches(values: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.match_substring_regex(values, pattern), False)
                      .to_numpy(zero_copy_only=False), bool)
