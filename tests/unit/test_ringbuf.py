"""RingReader against a ring laid out by hand in a memfd, following the kernel ABI.

No BPF needed: the memfd holds the consumer page, the producer page and the data area,
so the reader maps it exactly as it maps a BPF ring buffer map. The kernel maps the data
area twice in a row; the reader maps it once (each mapped page is resident) and splits a
batch that wraps, so here the second copy holds garbage it must never read.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.layouts import record_dtype
from kprobe.capture_agent.ringbuf import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, RingReader

PAGE = mmap.PAGESIZE
SIZE = 4096  # 48-byte slots do not divide it: records straddle the end
RECORD = record_dtype([("a", "<u8"), ("b", "<u8"), ("c", "<u8")])  # 40 bytes
SLOT = 8 + RECORD.itemsize
_NOT_MAPPED = b"\xee" * SIZE  # where the kernel's second mapping would be


class FakeRing:
    """Plays the kernel's producer side on a memfd."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fake_ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.data = bytearray(SIZE)
        self.producer = 0

    def set_positions(self, pos: int) -> None:
        os.pwrite(self.fd, struct.pack("<Q", pos), 0)
        os.pwrite(self.fd, struct.pack("<Q", pos), PAGE)
        self.producer = pos

    @property
    def consumer(self) -> int:
        return int(struct.unpack("<Q", os.pread(self.fd, 8, 0))[0])

    def write(self, a: int, *, busy: bool = False, discard: bool = False,
              length: int = RECORD.itemsize) -> int:
        """Append one record at the producer position; returns that position."""
        rec = np.zeros(1, RECORD)
        rec["hdr"]["size"] = RECORD.itemsize
        rec["a"], rec["b"], rec["c"] = a, a + 1, a + 2
        flags = (BPF_RINGBUF_BUSY_BIT if busy else 0) | (BPF_RINGBUF_DISCARD_BIT if discard else 0)
        blob = struct.pack("<II", length | flags, 0) + rec.tobytes()
        pos = self.producer
        for i, byte in enumerate(blob):
            self.data[(pos + i) % SIZE] = byte
        os.pwrite(self.fd, bytes(self.data) + _NOT_MAPPED, 2 * PAGE)
        self.producer = pos + 8 + length
        os.pwrite(self.fd, struct.pack("<Q", self.producer), PAGE)
        return pos

    def commit(self, pos: int) -> None:
        """Clear the busy bit of the record at ``pos``."""
        off = pos % SIZE
        (word,) = struct.unpack_from("<I", self.data, off)
        struct.pack_into("<I", self.data, off, word & ~BPF_RINGBUF_BUSY_BIT)
        os.pwrite(self.fd, bytes(self.data) + _NOT_MAPPED, 2 * PAGE)


@pytest.fixture
def ring() -> Iterator[tuple[FakeRing, RingReader]]:
    fake = FakeRing()
    reader = RingReader(fake.fd, SIZE, RECORD, "fake")
    yield fake, reader
    reader.close()
    os.close(fake.fd)


def test_empty_ring_gives_an_empty_batch(ring: tuple[FakeRing, RingReader]) -> None:
    _, reader = ring
    batch = reader.drain()
    assert batch.dtype == RECORD and len(batch) == 0


def test_committed_records_come_out_in_order_and_free_their_space(
    ring: tuple[FakeRing, RingReader],
) -> None:
    fake, reader = ring
    for a in (10, 20, 30):
        fake.write(a)
    batch = reader.drain()
    assert batch["a"].tolist() == [10, 20, 30] and batch["c"].tolist() == [12, 22, 32]
    assert fake.consumer == 3 * SLOT
    assert len(reader.drain()) == 0


def test_a_batch_stops_at_a_record_still_being_written(
    ring: tuple[FakeRing, RingReader],
) -> None:
    # GIVEN a committed record, one still busy, and one committed after it
    fake, reader = ring
    fake.write(1)
    busy_at = fake.write(2, busy=True)
    fake.write(3)
    # WHEN drained THEN only the first comes out, and the consumer stops before the busy one
    assert reader.drain()["a"].tolist() == [1]
    assert fake.consumer == busy_at
    # and once committed, the rest follows
    fake.commit(busy_at)
    assert reader.drain()["a"].tolist() == [2, 3]


def test_discarded_records_are_skipped_but_consumed(ring: tuple[FakeRing, RingReader]) -> None:
    fake, reader = ring
    fake.write(1)
    fake.write(2, discard=True)
    fake.write(3)
    assert reader.drain()["a"].tolist() == [1, 3]
    assert fake.consumer == 3 * SLOT and reader.discarded == 1


def test_records_straddling_the_end_decode_through_the_double_mapping(
    ring: tuple[FakeRing, RingReader],
) -> None:
    # GIVEN positions just before the end of the ring (positions only grow)
    fake, reader = ring
    start = 5 * SIZE - SLOT // 2
    fake.set_positions(start)
    values = list(range(100, 100 + SIZE // SLOT - 1))
    for a in values:
        fake.write(a)
    # WHEN drained THEN every record is whole, the first one straddling the end
    batch = reader.drain()
    assert batch["a"].tolist() == values and batch["b"].tolist() == [v + 1 for v in values]
    assert fake.consumer == start + len(values) * SLOT


def test_max_records_bounds_a_batch(ring: tuple[FakeRing, RingReader]) -> None:
    fake, reader = ring
    for a in range(5):
        fake.write(a)
    assert reader.drain(max_records=2)["a"].tolist() == [0, 1]
    assert reader.drain()["a"].tolist() == [2, 3, 4]


def test_a_record_of_another_size_is_refused(ring: tuple[FakeRing, RingReader]) -> None:
    fake, reader = ring
    fake.write(1, length=RECORD.itemsize - 8)
    fake.write(2, length=RECORD.itemsize + 8)  # keeps the pending bytes a multiple of SLOT
    with pytest.raises(RingBufferError, match="32 bytes, reader expects 40"):
        reader.drain()
    assert fake.consumer == 0  # nothing consumed
