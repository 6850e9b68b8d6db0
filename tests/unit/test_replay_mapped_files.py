"""Which files a recording maps and what its fstat saw (replay_sandbox/recording.py), and
the note naming one changed since (replay_sandbox/mapped_files.py), on synthetic rows; the
real program: tests/integration/test_replay_programs.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from kprobe.replay_sandbox.mapped_files import changed_notes
from kprobe.replay_sandbox.recording import AT_EMPTY_PATH, Row, _mapped_stats


def _stat(size: int, mtime_ns: int) -> bytes:
    buf = bytearray(144)
    struct.pack_into("<q", buf, 48, size)
    struct.pack_into("<qq", buf, 88, mtime_ns // 10**9, mtime_ns % 10**9)
    return bytes(buf)


def _open(fd: int, path: str, mapped: bool) -> Row:
    row = Row(1, 0, 0, 0, 257, fd, (0xFFFF_FF9C, 0, 0, 0, 0, 0), -1, path=path)
    row.open_for_real = mapped
    return row


def _fstatat(fd: int, flags: int, stat: bytes) -> Row:
    return Row(1, 0, 0, 0, 262, 0, (fd, 0, 0, flags, 0, 0), fd, outs=[(2, 0, stat)])


def test_only_the_first_fstat_of_a_mapped_descriptor_counts() -> None:
    rows = [
        _open(3, "/lib/libz.so.1", mapped=True),
        _fstatat(3, 0, _stat(999, 1)),  # a path relative to fd 3: not fd 3 itself
        _fstatat(3, AT_EMPTY_PATH, _stat(120_000, 5 * 10**9 + 7)),
        _fstatat(3, AT_EMPTY_PATH, _stat(1, 1)),  # later ones: the first is kept
        Row(1, 0, 0, 0, 3, 0, (3, 0, 0, 0, 0, 0), 3),  # close
        _open(3, "/srv/ledger.csv", mapped=False),  # read, not mapped: its bytes are served
        _fstatat(3, AT_EMPTY_PATH, _stat(50, 1)),
    ]
    assert _mapped_stats(rows) == {"/lib/libz.so.1": (120_000, 5 * 10**9 + 7)}


def test_a_changed_or_missing_file_is_named_and_an_unchanged_one_is_not(tmp_path: Path) -> None:
    same, changed = tmp_path / "same", tmp_path / "changed"
    same.write_bytes(b"x" * 10)
    changed.write_bytes(b"y" * 20)
    now = same.stat()
    notes = changed_notes({str(same): (10, now.st_mtime_ns),
                           str(changed): (10, now.st_mtime_ns),
                           str(tmp_path / "gone"): (1, 0)})
    assert len(notes) == 2, notes
    assert notes[0].startswith(f"{changed}, which the program maps, changed") and \
        "10 bytes modified" in notes[0] and "now 20 bytes" in notes[0]
    assert notes[1].startswith(f"{tmp_path / 'gone'}, which the program mapped, cannot be read")
    os.utime(same, ns=(now.st_atime_ns, now.st_mtime_ns + 1))  # same size, touched
    assert len(changed_notes({str(same): (10, now.st_mtime_ns)})) == 1
