"""Drain a BPF ring buffer of fixed-size records into numpy, with no Python call per event.

Kernel ABI (kernel/bpf/ringbuf.c): the map fd mmaps as
  offset 0:          the consumer page (read-write): consumer_pos at byte 0
  offset PAGE_SIZE:  the producer page (read-only): producer_pos at byte 0,
                     then the data pages, mapped twice in a row, so a record that wraps
                     past the end of the ring is contiguous in memory.
Each record is an 8-byte header (u32 len with BUSY and DISCARD bits, u32 page offset)
then the payload, rounded up to 8 bytes. Producer and consumer positions only grow; the
offset in the ring is ``pos & (size - 1)``.

Every ring of this project carries one record size (a convention of the BPF side), so the
bytes between the consumer and producer positions are an array of equal slots. The reader
maps the data pages once, not twice: the kernel maps every page of a ring into the process
at mmap time, so the double mapping would count each ring twice in the agent's RSS. A batch
that wraps past the end is copied out in two pieces (headers are 8-byte aligned and never
straddle the end; a record may). A batch
ends at the first record still being written (BUSY); discarded records are dropped; the
consumer position is advanced after the records were copied out. x86-64 only: its loads
are not reordered with other loads and stores are not reordered with older loads, which
gives the acquire/release pairing the kernel expects without explicit fences.
"""

from __future__ import annotations

import mmap
import select

import numpy as np

from kprobe.capture_agent.errors import RingBufferError

BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
_LEN_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF


def slot_dtype(record: np.dtype) -> np.dtype:
    """One ring slot: the kernel's record header, then the record (8-byte aligned size)."""
    if record.itemsize % 8:
        raise ValueError(f"record size {record.itemsize} must be a multiple of 8")
    return np.dtype([("len", "<u4"), ("pg_off", "<u4"), ("rec", record)])


class RingReader:
    """Reads one ring buffer map whose records all have the dtype ``record``."""

    def __init__(self, map_fd: int, ring_size: int, record: np.dtype, name: str = "ring") -> None:
        if ring_size <= 0 or ring_size & (ring_size - 1):
            raise ValueError(f"ring {name}: size {ring_size} is not a power of two")
        self.name = name
        self.record = record
        self.size = ring_size
        self._mask = ring_size - 1
        self._slot = slot_dtype(record)
        self._page = mmap.PAGESIZE
        self._fd = map_fd
        self._consumer_map = mmap.mmap(
            map_fd, self._page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._data_map = mmap.mmap(
            map_fd, self._page + ring_size, mmap.MAP_SHARED, mmap.PROT_READ,
            offset=self._page,
        )
        self._consumer_pos = np.frombuffer(self._consumer_map, dtype="<u8", count=1)
        self._producer_pos = np.frombuffer(self._data_map, dtype="<u8", count=1)
        self._bytes = np.frombuffer(self._data_map, dtype=np.uint8, count=ring_size,
                                    offset=self._page)
        self._words = self._bytes.view("<u4")  # record headers: len at each slot start
        self._epoll: select.epoll | None = None
        self.records_read = 0
        self.discarded = 0

    # -- positions --------------------------------------------------------------------------

    def pending_bytes(self) -> int:
        """Bytes written (or being written) and not yet consumed."""
        return int(self._producer_pos[0]) - int(self._consumer_pos[0])

    def fill(self) -> float:
        """Fraction of the ring in use, 0..1 (for metrics)."""
        return self.pending_bytes() / self.size

    # -- draining ---------------------------------------------------------------------------

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Copy out every committed record (up to ``max_records``) and free their space.

        Returns a structured array of ``record``: a view into a private copy of the ring
        bytes (strided by the 8-byte record header), owned by the caller.
        """
        return self.drain_slots(max_records)["rec"]

    def drain_slots(self, max_records: int | None = None) -> np.ndarray:
        """As ``drain``, but the contiguous slots (header + record): batches of slots
        concatenate at memcpy speed, where strided records copy field by field."""
        consumer = int(self._consumer_pos[0])
        producer = int(self._producer_pos[0])  # acquire: headers up to here are written
        pending = producer - consumer
        slot_size = self._slot.itemsize
        if pending <= 0:
            return np.empty(0, dtype=self._slot)
        if pending % slot_size:
            raise RingBufferError(
                f"ring {self.name}: {pending} pending bytes are not whole {slot_size}-byte"
                " records (a record of another size was written)"
            )
        count = pending // slot_size
        if max_records is not None:
            count = min(count, max_records)
        off = consumer & self._mask
        # read the headers once, before the payloads
        if off + count * slot_size <= self.size:  # the usual case: no wrap in this batch
            lengths = self._words[off // 4:(off + count * slot_size) // 4:slot_size // 4].copy()
        else:
            heads = (off + np.arange(count, dtype=np.int64) * slot_size) & self._mask
            lengths = self._words[heads // 4]
        busy = (lengths & BPF_RINGBUF_BUSY_BIT) != 0
        committed = int(np.argmax(busy)) if busy.any() else count
        if committed == 0:
            return np.empty(0, dtype=self._slot)
        lengths = lengths[:committed]
        if np.any((lengths & _LEN_MASK) != self.record.itemsize):
            bad = int(lengths[(lengths & _LEN_MASK) != self.record.itemsize][0] & _LEN_MASK)
            raise RingBufferError(
                f"ring {self.name}: record of {bad} bytes, reader expects"
                f" {self.record.itemsize}"
            )
        # One contiguous byte copy (two at the wrap), memcpy speed; the records are a view
        # inside it, strided by the slot size.
        nbytes = committed * slot_size
        first = min(nbytes, self.size - off)
        raw = np.empty(nbytes, dtype=np.uint8)
        raw[:first] = self._bytes[off:off + first]
        if first < nbytes:
            raw[first:] = self._bytes[:nbytes - first]
        slots = raw.view(self._slot)
        keep = (lengths & BPF_RINGBUF_DISCARD_BIT) == 0
        out = slots if keep.all() else slots[keep]
        # release: the copies above are done before the kernel may reuse the space
        self._consumer_pos[0] = consumer + nbytes
        self.records_read += len(out)
        self.discarded += committed - len(out)
        return out

    def fileno(self) -> int:
        """The ring map's fd: poll it for the kernel's wakeups."""
        return self._fd

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the kernel wakes the ring (fill over its threshold) or the timeout.

        Edge-triggered: records submitted with BPF_RB_NO_WAKEUP do not end the sleep, so a
        loop of ``wait(period); drain()`` drains every period, sooner under load.
        """
        if self._epoll is None:
            self._epoll = select.epoll()
            self._epoll.register(self._fd, select.EPOLLIN | select.EPOLLET)
        return bool(self._epoll.poll(timeout_s))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        # drop the numpy views first: an mmap with live exports cannot close
        self._consumer_pos = np.empty(1, dtype="<u8")
        self._producer_pos = np.empty(1, dtype="<u8")
        self._bytes = np.empty(0, dtype=np.uint8)
        self._words = self._bytes.view("<u4")
        self._consumer_map.close()
        self._data_map.close()
