"""The one time grammar (lake/timespec.py): every accepted form, and the refusals."""

from __future__ import annotations

import pytest

from kprobe.lake.timespec import TimeSpecError, format_instant, parse_duration, parse_instant

NOW = 1_796_550_608_123_456_789  # 2026-12-06T...Z, ns
SEC = 1_796_550_608


@pytest.mark.parametrize(("text", "ns"), [
    ("750ms", 750_000_000), ("15m", 900 * 10**9), ("1h30m", 5400 * 10**9),
    ("0.5s", 500_000_000), ("250us", 250_000), ("250µs", 250_000), ("10ns", 10),
    ("7d", 7 * 86400 * 10**9), ("2w", 14 * 86400 * 10**9), (" 90 s ", 90 * 10**9),
])
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "15", "m", "1x", "1h30", "-5m", "0s", "1h 30x", "5 mins"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(TimeSpecError, match="duration"):
        parse_duration(text)


def test_zero_duration_only_when_allowed() -> None:
    assert parse_duration("0s", allow_zero=True) == 0


@pytest.mark.parametrize(("text", "ns"), [
    ("now", NOW), ("NOW", NOW), ("-15m", NOW - 900 * 10**9), ("now-2h", NOW - 7200 * 10**9),
    ("+1s", NOW + 10**9), ("-1h30m", NOW - 5400 * 10**9),
    (f"{SEC}s", SEC * 10**9), (f"{SEC}000ms", SEC * 10**9), (f"{SEC}000000us", SEC * 10**9),
    (f"{SEC}123456789ns", SEC * 10**9 + 123456789),
    # bare numbers by magnitude: 10 digits s, 13 ms, 16 us, 19 ns; a fraction is seconds
    (str(SEC), SEC * 10**9), (f"{SEC}123", SEC * 10**9 + 123_000_000),
    (f"{SEC}123456", SEC * 10**9 + 123_456_000), (f"{SEC}123456789", SEC * 10**9 + 123456789),
    (f"{SEC}.5", SEC * 10**9 + 500_000_000), ("0", 0),
    ("2026-12-06T02:47:00Z", 1796525220 * 10**9),
    ("2026-12-06T08:17:00+05:30", 1796525220 * 10**9),
    ("2026-12-06T02:47:00.000000001Z", 1796525220 * 10**9 + 1),
    ("2026-12-06 02:47Z", 1796525220 * 10**9),
])
def test_instants(text: str, ns: int) -> None:
    assert parse_instant(text, now_ns=NOW) == ns


@pytest.mark.parametrize(("text", "why"), [
    ("2026-12-06T02:47:00", "no zone"),          # naive: ambiguous
    ("17965506081234", "ambiguous epoch"),       # 14 digits: neither ms nor us
    ("yesterday", "not a time"), ("-15", "not a time"), ("2026-13-40T00:00:00Z", "not a time"),
    ("99999999999999999999ns", "out of range"),
])
def test_bad_instants_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(TimeSpecError, match=why):
        parse_instant(text, now_ns=NOW)


def test_epoch_milliseconds_are_not_read_as_nanoseconds() -> None:
    # the bug this grammar replaces: 1733468820000 (ms) read as ns landed in 1970
    assert parse_instant("1733468820000") == 1733468820 * 10**9


def test_format_is_rfc3339_utc_and_parses_back() -> None:
    text = format_instant(1796525220 * 10**9 + 123_456_000)
    assert text == "2026-12-06T02:47:00.123456Z"
    assert parse_instant(text) == 1796525220 * 10**9 + 123_456_000
