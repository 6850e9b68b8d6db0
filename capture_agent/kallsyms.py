"""Kernel stacks: symbolise stack-map ids against /proc/kallsyms and say why a thread waited.

    symbols = Kallsyms.load()                         # once: /proc/kallsyms, sorted
    stacks = KernelStacks(symbols, sensor.map_fd("offcpu_stacks"))
    kstacks_rows = stacks.resolve(offcpu["kstack_id"], ts_ns)   # new ids only
    offcpu = stacks.fill_wait_reason(offcpu)          # vectorised id -> reason
    stacks.clear()                                    # free the kernel map's entries

Addresses are symbolised with one ``numpy.searchsorted`` over the sorted text symbols.
A stack is read from the kernel map once per id (a few hundred distinct stacks, not one
per event), classified once, and remembered; per-row work is vectorised.

Wait reasons, first match wins (a thread in reclaim inside a page fault is "reclaim": the
more specific cause):
  reclaim        memcg or direct reclaim, compaction, reclaim throttling
  page_fault_io  blocked inside a page fault (file read-in, swap-in)
  disk           block I/O, writeback and fsync waits, journal commits
  futex          futex waits (user-space locks, condition variables)
  socket         socket receive/send/accept/connect waits
  pipe           pipe and FIFO reads and writes
  poll           epoll / poll / select
  sleep          nanosleep and friends
  lock           kernel mutexes and rw-semaphores
  other          anything else
A stack that could not be captured (negative id) has no reason (null).

Stack ids are a hash of the stack's addresses (the sched programs walk a blocked thread's
stack once its wait is long enough to be written: capture_agent/bpf/sched.bpf.c); a
different stack with the same id is not stored (its interval has the errno EEXIST). Once
cleared, an id may be given to a different stack later; ``resolve`` then emits a new
``kstacks`` row (readers take the latest row at or before an interval's time).

Frame 0 of a stack is the scheduler function the thread called to sleep (``schedule``,
``mutex_lock``, ``io_schedule``...): the kernel leaves .sched.text out of another task's
stack, so the BPF program reads it from the call instruction before frame 1. It is an
address, not a return address, and is symbolised as such.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.errors import BpfMapError, CaptureAgentError
from kprobe.lake.schema import spec as table_spec

KALLSYMS = Path("/proc/kallsyms")
# No kernel function is this long: an address farther from the symbol before it lies in
# code kallsyms did not list when read (a BPF program loaded since, a new module).
MAX_SYMBOL_OFFSET = 1 << 20
_TEXT_TYPES = frozenset("tTwW")

WAIT_REASONS = ("reclaim", "page_fault_io", "disk", "futex", "socket", "pipe", "poll",
                "sleep", "lock", "other")

# reason -> function-name pattern (anchored at the start of the name); order = priority
_RULES: tuple[tuple[str, str], ...] = (
    ("reclaim", r"try_to_free_mem_cgroup_pages|try_to_free_pages|do_try_to_free_pages"
                r"|mem_cgroup_handle_over_high|__mem_cgroup_handle_over_high|reclaim_high"
                r"|try_charge_memcg|__alloc_pages_slowpath"
                r"|__alloc_pages_direct_reclaim|__alloc_pages_direct_compact|__perform_reclaim"
                r"|throttle_direct_reclaim|reclaim_throttle|shrink_|lru_gen_shrink"
                r"|balance_pgdat|try_to_compact_pages|compact_zone"),
    ("page_fault_io", r"filemap_fault|do_swap_page|swap_readpage|swap_read_folio"
                      r"|swapin_readahead|swap_cluster_readahead|__do_fault|do_read_fault"
                      r"|do_fault$|do_user_addr_fault|exc_page_fault|asm_exc_page_fault"
                      r"|handle_mm_fault|__handle_mm_fault"),
    ("disk", r"blk_|bio_|submit_bio|io_schedule|bit_wait_io|folio_wait|__folio_lock"
             r"|wait_on_page_bit|__wait_on_buffer|__bread|file_write_and_wait_range"
             r"|filemap_write_and_wait|__filemap_fdatawait|filemap_fdatawait|jbd2_"
             r"|ext4_sync_file|xfs_file_fsync|xfs_log_force|btrfs_sync_file|do_fsync"
             r"|vfs_fsync|blkdev_|wait_for_completion_io|balance_dirty_pages|iomap_dio"
             r"|__iomap_dio_rw|filemap_read|filemap_get_pages"),
    ("futex", r"futex_wait|__futex_wait|futex_lock_pi|futex_wait_requeue_pi"),
    ("socket", r"sk_wait_data|sk_wait_event|sk_stream_wait|inet_csk_accept"
               r"|inet_csk_wait_for_connect|inet_wait_for_connect|tcp_recvmsg|tcp_sendmsg"
               r"|unix_stream_read|unix_stream_recvmsg|unix_dgram_recvmsg|unix_wait_for_peer"
               r"|unix_stream_sendmsg|__skb_wait_for_more_packets|__skb_recv|skb_recv"
               r"|udp_recvmsg|udpv6_recvmsg|sock_|__sys_recv|__sys_send|__sys_accept"
               r"|__sys_connect|do_accept"),
    ("pipe", r"anon_pipe_read|anon_pipe_write|fifo_pipe_read|fifo_pipe_write|pipe_read"
             r"|pipe_write|pipe_wait|wait_for_partner|fifo_open"),
    ("poll", r"do_epoll_wait|ep_poll|do_sys_poll|do_poll|do_select|core_sys_select"
             r"|do_pselect|__x64_sys_epoll|__x64_sys_poll|__x64_sys_ppoll|__x64_sys_select"
             r"|__x64_sys_pselect"),
    ("sleep", r"hrtimer_nanosleep|do_nanosleep|common_nsleep|__x64_sys_nanosleep"
              r"|__x64_sys_clock_nanosleep|msleep|usleep_range"),
    ("lock", r"__mutex_lock|mutex_lock|rwsem_down_|down_read|down_write|rt_mutex"
             r"|__down_common|percpu_down_write|percpu_rwsem_wait"),
)
_COMPILED = tuple((reason, re.compile(pattern)) for reason, pattern in _RULES)


class KallsymsError(CaptureAgentError):
    """/proc/kallsyms is unreadable or hides its addresses (not root, kptr_restrict)."""


def _hex_to_u64(hex_digits: np.ndarray) -> np.ndarray:
    """(N, 16) ASCII hex digits -> N uint64, without a Python loop."""
    lut = np.full(256, 255, np.uint8)
    lut[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
    lut[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
    lut[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
    nibbles = lut[hex_digits]
    if np.any(nibbles == 255):
        raise KallsymsError("kallsyms: an address is not hexadecimal")
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    values: np.ndarray = np.bitwise_or.reduce(nibbles.astype(np.uint64) << shifts, axis=1)
    return values


@dataclass(frozen=True)
class Kallsyms:
    """Text symbols sorted by address: ``addresses[i]`` starts ``names[i]``."""

    addresses: np.ndarray  # uint64, ascending
    names: np.ndarray  # object (str)
    modules: np.ndarray  # object (str, "" for the kernel image)

    @classmethod
    def parse(cls, text: bytes) -> Kallsyms:
        """Parse kallsyms text: ``ADDRESS TYPE NAME[\\t[MODULE]]`` per line."""
        if not text.strip():
            raise KallsymsError("kallsyms is empty")
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=["address", "type", "name"]),
            # a malformed line is one symbol less, not a failed agent
            parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False,
                                             invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={"address": pa.binary(), "type": pa.string(), "name": pa.string()}),
        )
        text_syms = table.filter(pc.is_in(table["type"], pa.array(sorted(_TEXT_TYPES))))
        raw = text_syms["address"].combine_chunks()
        lengths = pc.binary_length(raw).to_numpy(zero_copy_only=False)
        if len(raw) == 0:
            raise KallsymsError("kallsyms has no text symbols")
        if np.any(lengths != 16):
            raise KallsymsError("kallsyms: addresses are not 64-bit (16 hex digits)")
        # all values 16 bytes: they lie back to back from the first value's offset
        start = int(np.frombuffer(raw.buffers()[1], np.int32)[raw.offset])
        digits = np.frombuffer(raw.buffers()[2], np.uint8)[
            start: start + 16 * len(raw)].reshape(-1, 16)
        addresses = _hex_to_u64(digits)
        if not addresses.any():
            raise KallsymsError("kallsyms addresses are hidden (run as root, or lower "
                                "kernel.kptr_restrict)")
        # "name" or "name\t[module]"
        fields = pc.extract_regex(text_syms["name"].combine_chunks(),
                                  pattern=r"^(?P<name>[^\t]*)(?:\t\[(?P<module>[^\]]*)\])?")
        names, modules = fields.field("name"), fields.field("module")
        order = np.argsort(addresses, kind="stable")
        return cls(addresses[order],
                   np.asarray(names.to_numpy(zero_copy_only=False), object)[order],
                   np.asarray(modules.to_numpy(zero_copy_only=False), object)[order])

    @classmethod
    def load(cls, path: Path = KALLSYMS) -> Kallsyms:
        try:
            return cls.parse(path.read_bytes())
        except OSError as e:
            raise KallsymsError(f"cannot read {path}: {e.strerror}") from None

    def lookup(self, addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(symbol index, offset) per address; index -1 when no symbol covers it (below
        the first, or over MAX_SYMBOL_OFFSET past the nearest)."""
        addrs = np.asarray(addresses, np.uint64)
        index = np.searchsorted(self.addresses, addrs, side="right").astype(np.int64) - 1
        base = self.addresses[np.maximum(index, 0)]
        offset = np.where(index >= 0, addrs - base, 0).astype(np.uint64)
        index[offset >= MAX_SYMBOL_OFFSET] = -1
        return index, offset

    def symbolise(self, addresses: np.ndarray) -> list[str]:
        """``name+0xoff`` (``name+0xoff [module]`` in a module); unknown: ``0xaddress``.

        Frames after the first are return addresses: the call is the byte before, which
        is what is looked up (a call that ends a function would else name the next one).
        """
        addrs = np.asarray(addresses, np.uint64)
        if not len(addrs):
            return []
        call_sites = addrs - (np.arange(len(addrs)) > 0).astype(np.uint64)
        index, _ = self.lookup(call_sites)
        offsets = addrs - self.addresses[np.maximum(index, 0)]
        out: list[str] = []
        for i, addr, off in zip(index.tolist(), addrs.tolist(), offsets.tolist()):
            if i < 0:
                out.append(f"0x{addr:x}")
                continue
            module = self.modules[i]
            out.append(f"{self.names[i]}+0x{off:x}" + (f" [{module}]" if module else ""))
        return out


def function_name(frame: str) -> str:
    """``name.constprop.0+0x1a [module]`` -> ``name`` (compiler suffixes dropped; a call
    into a function's padding, ``__pfx_name``, as kernels with call thunks make, is
    ``name``)."""
    name = frame.split("+", 1)[0].split(" ", 1)[0].split(".", 1)[0]
    return name.removeprefix("__pfx_")


def classify(frames: Iterable[str]) -> str:
    """The wait reason of a symbolised stack (see the module docstring)."""
    names = [function_name(f) for f in frames]
    for reason, pattern in _COMPILED:
        if any(pattern.match(name) for name in names):
            return reason
    return "other"


def fill_wait_reason(offcpu: pa.Table, reasons: Mapping[int, str]) -> pa.Table:
    """``offcpu`` with ``wait_reason`` set from its ``kstack_id`` (vectorised); ids not in
    ``reasons`` (or null) leave the reason null."""
    ids = np.fromiter(reasons.keys(), np.int64, len(reasons))
    values = pa.array(list(reasons.values()), pa.string())
    position = pc.index_in(offcpu["kstack_id"], value_set=pa.array(ids, pa.int64()))
    reason = pc.take(values, position) if len(ids) else pa.nulls(offcpu.num_rows, pa.string())
    if isinstance(reason, pa.ChunkedArray):
        reason = reason.combine_chunks()
    index = offcpu.schema.get_field_index("wait_reason")
    return offcpu.set_column(index, offcpu.schema.field(index), reason)


@dataclass(frozen=True)
class SymbolisedStack:
    addresses: bytes  # the raw frames, to notice an id given to another stack
    frames: list[str]
    reason: str


class KernelStacks:
    """The stacks of one BPF_MAP_TYPE_STACK_TRACE map, symbolised and remembered."""

    def __init__(self, symbols: Kallsyms, stack_map_fd: int) -> None:
        try:
            info = libbpf.map_info(stack_map_fd)
        except OSError as e:
            raise BpfMapError(f"stack map: {e.strerror}", e.errno or 0) from None
        self.symbols = symbols
        self._fd = stack_map_fd
        self._value_size = info.value_size
        self._known: dict[int, SymbolisedStack] = {}
        self._in_map: set[int] = set()  # ids read from the map and not yet cleared

    def _read(self, stack_id: int) -> bytes | None:
        try:
            raw = libbpf.map_lookup(self._fd, int(stack_id).to_bytes(4, "little"),
                                    self._value_size)
        except OSError as e:
            raise BpfMapError(f"stack map: read id {stack_id}: {e.strerror}",
                              e.errno or 0) from None
        if raw is None:
            return None
        frames = np.frombuffer(raw, np.uint64)
        ends = np.flatnonzero(frames == 0)  # the kernel zero-fills after the last frame
        depth = int(ends[0]) if len(ends) else len(frames)
        return raw[: depth * 8]

    def resolve(self, stack_ids: pa.Array | pa.ChunkedArray | np.ndarray,
                ts_ns: int) -> pa.Table:
        """Symbolise the ids not seen before (or given to another stack since); returns
        their ``kstacks`` rows stamped ``ts_ns``. Ids gone from the map keep what was
        learnt before."""
        ids = _distinct_ids(stack_ids)
        new_ids: list[int] = []
        new_frames: list[list[str]] = []
        for stack_id in ids.tolist():  # distinct stacks, not events
            raw = self._read(stack_id)
            if raw is None:
                continue
            self._in_map.add(stack_id)
            known = self._known.get(stack_id)
            if known is not None and known.addresses == raw:
                continue
            frames = self.symbols.symbolise(np.frombuffer(raw, np.uint64))
            self._known[stack_id] = SymbolisedStack(raw, frames, classify(frames))
            new_ids.append(stack_id)
            new_frames.append(frames)
        return pa.table(
            {
                "ts_ns": pa.array([ts_ns] * len(new_ids), pa.int64()),
                "stack_id": pa.array(new_ids, pa.int64()),
                "frames": pa.array(new_frames, pa.list_(pa.string())),
            },
            schema=table_spec("kstacks").payload_schema,
        )

    def reasons(self) -> dict[int, str]:
        return {stack_id: s.reason for stack_id, s in self._known.items()}

    def frames(self, stack_id: int) -> list[str] | None:
        known = self._known.get(stack_id)
        return None if known is None else known.frames

    def fill_wait_reason(self, offcpu: pa.Table) -> pa.Table:
        return fill_wait_reason(offcpu, self.reasons())

    def clear(self) -> int:
        """Delete from the kernel map every id read since the last clear, so it does not
        fill up; what was learnt is kept for intervals that still name those ids."""
        cleared = 0
        for stack_id in sorted(self._in_map):
            try:
                cleared += libbpf.map_delete(self._fd, stack_id.to_bytes(4, "little"))
            except OSError as e:
                raise BpfMapError(f"stack map: clear id {stack_id}: {e.strerror}",
                                  e.errno or 0) from None
        self._in_map.clear()
        return cleared


def _distinct_ids(stack_ids: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    if isinstance(stack_ids, np.ndarray):
        values = stack_ids.astype(np.int64)
    else:
        values = np.asarray(pc.drop_null(stack_ids).to_numpy(zero_copy_only=False), np.int64)
    return np.unique(values[values >= 0])


__all__ = [
    "KALLSYMS",
    "WAIT_REASONS",
    "Kallsyms",
    "KallsymsError",
    "KernelStacks",
    "SymbolisedStack",
    "classify",
    "fill_wait_reason",
    "function_name",
]
