"""The one grammar for instants and durations, for every command option and API parameter.

Instants (``parse_instant``), all to Unix-epoch nanoseconds (UTC):

    now                         the moment of parsing
    -15m, now-2h, -1h30m        relative to now (a duration, below)
    2026-12-06T02:47:00Z        RFC 3339 / ISO 8601 with a zone (Z or +05:30), fractions to
    2026-12-06T02:47:00.123+05:30   the nanosecond; a zone is required (a naive time is
                                ambiguous: refused)
    1796550608s, ...ms, ...us, ...ns   epoch with its unit
    1796550608                  a bare epoch number by its magnitude: 10 digits (or fewer,
                                or with a fraction) are seconds, 13 milliseconds, 16
                                microseconds, 19 nanoseconds; any other length is refused

Durations (``parse_duration``), to nanoseconds: a number and a unit, or several
(``1h30m``): ``ns``, ``us`` (or ``µs``), ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``;
fractions allowed (``0.5s``). Bad input raises ``TimeSpecError`` (a ``ValueError``) with a
one-line reason naming the accepted forms.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

__all__ = ["TimeSpecError", "format_instant", "parse_duration", "parse_instant"]

from kprobe.lake.errors import TimeSpecError

NS = 1_000_000_000
DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS,
                  "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS, "w": 7 * 86400 * NS}
INSTANT_FORMS = ("now, -15m (relative), RFC 3339 with a zone (2026-12-06T02:47:00Z), or "
                 "epoch with a unit (1796550608s, ...ms, ...us, ...ns)")
DURATION_FORMS = "a number and a unit (ns, us, ms, s, m, h, d, w), e.g. 750ms, 15m, 1h30m"

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d|w)")
_EPOCH = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)?")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?\s*([Zz]|[+-]\d{2}:?\d{2})?")
_MAGNITUDE_UNIT = {19: "ns", 16: "us", 13: "ms"}  # digits of a bare epoch number -> unit


def parse_duration(text: str, *, allow_zero: bool = False) -> int:
    """``750ms``, ``15m``, ``1h30m``, ``0.5s`` -> nanoseconds."""
    value = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match[1]) * DURATION_UNITS[match[2]]
        pos = match.end()
    if pos != len(value) or not value:
        raise TimeSpecError(f"not a duration: {text[:60]!r} (use {DURATION_FORMS})")
    ns = round(total)
    if ns <= 0 and not (allow_zero and ns == 0):
        raise TimeSpecError(f"duration {text[:60]!r} must be positive")
    return ns


def parse_instant(text: str, now_ns: int | None = None) -> int:
    """An instant of the grammar above, as epoch nanoseconds."""
    value = text.strip()
    lowered = value.lower()
    now = time.time_ns() if now_ns is None else now_ns
    if lowered == "now":
        return now
    if lowered.startswith(("now-", "now+", "-", "+")):
        rest = lowered.removeprefix("now")
        sign = -1 if rest.startswith("-") else 1
        try:
            return now + sign * parse_duration(rest[1:])
        except TimeSpecError:
            raise TimeSpecError(f"not a time: {text[:60]!r} (use {INSTANT_FORMS})") from None
    epoch = _EPOCH.fullmatch(lowered)
    if epoch:
        return _epoch(epoch[1], epoch[2], text)
    stamp = _RFC3339.fullmatch(value)
    if stamp:
        return _rfc3339(stamp, text)
    raise TimeSpecError(f"not a time: {text[:60]!r} (use {INSTANT_FORMS})")


def _epoch(number: str, unit: str | None, text: str) -> int:
    if unit is None:
        digits = len(number.split(".")[0])
        if "." in number or digits <= 10:
            unit = "s"
        elif digits in _MAGNITUDE_UNIT:
            unit = _MAGNITUDE_UNIT[digits]
        else:
            raise TimeSpecError(
                f"ambiguous epoch {text[:60]!r}: {digits} digits are neither seconds (10), "
                f"ms (13), us (16) nor ns (19); add the unit (e.g. {number}ms)")
    whole, _, fraction = number.partition(".")
    scale = DURATION_UNITS[unit]
    ns = int(whole) * scale + (int(fraction.ljust(9, "0")[:9]) * scale // NS if fraction
                               else 0)
    if not 0 <= ns < 2**63:
        raise TimeSpecError(f"time {text[:60]!r} is out of range")
    return ns


def _rfc3339(stamp: re.Match[str], text: str) -> int:
    day, clock, fraction, zone = stamp[1], stamp[2], stamp[3], stamp[4]
    if zone is None:
        raise TimeSpecError(f"time {text[:60]!r} has no zone: add Z (UTC) or an offset "
                            "like +05:30")
    if len(clock) == 5:
        clock += ":00"
    zone = "+00:00" if zone in ("Z", "z") else zone
    if ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError:
        raise TimeSpecError(f"not a time: {text[:60]!r} (use {INSTANT_FORMS})") from None
    ns = int(moment.timestamp()) * NS + int((fraction or "").ljust(9, "0") or 0)
    if not 0 <= ns < 2**63:
        raise TimeSpecError(f"time {text[:60]!r} is out of range")
    return ns


def format_instant(ns: int) -> str:
    """Epoch ns as RFC 3339 UTC with microseconds (for text output; JSON keeps ns)."""
    seconds, rest = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"
