"""Kernel symbolisation and wait-reason classification on a synthetic kallsyms. No kernel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kprobe.capture_agent.kallsyms import (
    MAX_SYMBOL_OFFSET,
    Kallsyms,
    KallsymsError,
    classify,
    fill_wait_reason,
    function_name,
)
from kprobe.lake.schema import spec

KALLSYMS_TEXT = b"""\
ffffffff81000000 T _stext
ffffffff81001000 t schedule
ffffffff81000800 T __schedule
ffffffff81002000 D some_data
ffffffff81003000 t anon_pipe_read
ffffffff81003400 T vfs_read
ffffffff81004000 W weak_function
ffffffffc0001000 t mod_helper\t[nf_conntrack]
ffffffffc0002000 T mod_entry\t[nf_conntrack]
ffffffffc0003000 T a line with too many fields
"""


@pytest.fixture
def symbols() -> Kallsyms:
    return Kallsyms.parse(KALLSYMS_TEXT)


def test_parse_keeps_text_symbols_sorted_with_their_modules(symbols: Kallsyms) -> None:
    # THEN data symbols are dropped, the rest sorted by address, module names unwrapped
    assert symbols.names.tolist() == ["_stext", "__schedule", "schedule", "anon_pipe_read",
                                      "vfs_read", "weak_function", "mod_helper", "mod_entry"]
    assert symbols.addresses[0] == 0xFFFFFFFF81000000
    assert np.all(symbols.addresses[1:] > symbols.addresses[:-1])
    assert symbols.modules.tolist()[-2:] == ["nf_conntrack", "nf_conntrack"]
    assert symbols.modules.tolist()[0] == ""


def test_addresses_symbolise_to_the_symbol_before_them(symbols: Kallsyms) -> None:
    # GIVEN a stack: innermost frame first, then return addresses
    stack = np.array([0xFFFFFFFF81000810, 0xFFFFFFFF81001023, 0xFFFFFFFF81003366,
                      0xFFFFFFFFC0001010, 0x1000], np.uint64)
    # WHEN symbolised THEN each frame names its function and offset; unknown stays hex
    assert symbols.symbolise(stack) == [
        "__schedule+0x10", "schedule+0x23", "anon_pipe_read+0x366",
        "mod_helper+0x10 [nf_conntrack]", "0x1000",
    ]


def test_a_return_address_just_past_a_function_names_the_caller(symbols: Kallsyms) -> None:
    # GIVEN a frame whose return address is the first byte of the next function (the
    # call was the last instruction of schedule())
    stack = np.array([0xFFFFFFFF81000810, 0xFFFFFFFF81003000], np.uint64)
    # THEN the call site (address - 1) is what names it
    assert symbols.symbolise(stack) == ["__schedule+0x10", "schedule+0x2000"]
    # and the innermost frame, an instruction address, is taken as is
    assert symbols.symbolise(np.array([0xFFFFFFFF81003000], np.uint64)) == ["anon_pipe_read+0x0"]


def test_an_address_far_past_every_symbol_is_unknown(symbols: Kallsyms) -> None:
    far = 0xFFFFFFFFC0002000 + MAX_SYMBOL_OFFSET + 5
    assert symbols.symbolise(np.array([far], np.uint64)) == [f"0x{far:x}"]


def test_hidden_addresses_are_refused() -> None:
    # GIVEN kallsyms as a non-root reader sees it (kptr_restrict): all zeros
    text = b"0000000000000000 T _stext\n0000000000000000 t schedule\n"
    with pytest.raises(KallsymsError, match="hidden"):
        Kallsyms.parse(text)
    with pytest.raises(KallsymsError):
        Kallsyms.parse(b"")


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (["__schedule+0x1", "schedule+0x2", "anon_pipe_read+0x366", "vfs_read+0x3"], "pipe"),
        (["schedule+0x2", "futex_do_wait+0x46", "__futex_wait+0x8a"], "futex"),
        (["schedule+0x2", "do_nanosleep+0x5e", "hrtimer_nanosleep+0x74"], "sleep"),
        (["schedule+0x2", "sk_wait_data+0x10", "tcp_recvmsg_locked+0x3"], "socket"),
        (["schedule+0x2", "schedule_hrtimeout_range+0x9", "do_epoll_wait+0x5"], "poll"),
        (["io_schedule+0x1", "folio_wait_bit_common+0x2", "filemap_read+0x3"], "disk"),
        (["schedule+0x1", "jbd2_log_wait_commit+0x2", "ext4_sync_file+0x3"], "disk"),
        # a fault waiting for its page's I/O is a page fault, not generic disk
        (["io_schedule+0x1", "folio_wait_bit_common+0x2", "filemap_fault+0x3",
          "__do_fault+0x4", "handle_mm_fault+0x5", "exc_page_fault+0x6"], "page_fault_io"),
        # reclaim inside a fault is reclaim: the more specific cause
        (["io_schedule+0x1", "shrink_folio_list+0x2", "try_to_free_mem_cgroup_pages+0x3",
          "try_charge_memcg+0x4", "do_anonymous_page+0x5", "handle_mm_fault+0x6"], "reclaim"),
        (["schedule+0x1", "__alloc_pages_slowpath.constprop.0+0x9"], "reclaim"),
        (["schedule+0x1", "rwsem_down_read_slowpath+0x2", "down_read+0x3"], "lock"),
        (["schedule+0x1", "worker_thread+0x2", "kthread+0x3"], "other"),
        ([], "other"),
    ],
)
def test_stacks_classify_by_their_most_specific_wait(frames: list[str], reason: str) -> None:
    assert classify(frames) == reason


def test_function_names_drop_offsets_modules_and_compiler_suffixes() -> None:
    assert function_name("mod_helper+0x10 [nf_conntrack]") == "mod_helper"
    assert function_name("__alloc_pages_slowpath.constprop.0+0x9") == "__alloc_pages_slowpath"
    assert function_name("0xffffffffc0026297") == "0xffffffffc0026297"


def test_wait_reasons_fill_offcpu_rows_by_stack_id() -> None:
    # GIVEN off-CPU rows with known, unknown and missing stack ids
    n = 4
    schema = spec("offcpu").payload_schema
    columns = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["ts_ns"] = pa.array([1, 2, 3, 4], pa.int64())
    columns["kstack_id"] = pa.array([7, 9, None, 7], pa.int64())
    offcpu = pa.table(columns, schema=schema)
    # WHEN filled from the id -> reason mapping
    filled = fill_wait_reason(offcpu, {7: "pipe", 8: "futex"})
    # THEN each row takes its stack's reason; the rest stay null; nothing else changes
    assert filled["wait_reason"].to_pylist() == ["pipe", None, None, "pipe"]
    assert filled.schema == schema
    assert filled["ts_ns"].to_pylist() == [1, 2, 3, 4]
    assert fill_wait_reason(offcpu, {})["wait_reason"].null_count == n
