"""Sched batches (synthetic records) -> lake rows, and the clock offset. No kernel needed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kprobe.capture_agent.clock import ClockSample, sample_offset
from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.families import sched
from kprobe.capture_agent.families.base import AgentOptions
from kprobe.capture_agent.layouts import EventKind
from kprobe.lake.schema import spec

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=100, taken_at_ns=0)


def _sched_batch() -> np.ndarray:
    b = np.zeros(3, sched.SCHED_EVENT)
    b["hdr"]["version"] = sched.SCHED_LAYOUT_VERSION
    b["hdr"]["size"] = sched.SCHED_EVENT.itemsize
    b["hdr"]["ktime_ns"] = [1_000, 2_000, 3_000]
    b["hdr"]["cpu"] = [0, 1, 1]
    b["hdr"]["kind"] = [EventKind.SCHED_SWITCH, EventKind.SCHED_WAKING, EventKind.SCHED_WAKEUP]
    b["prev_pid"], b["prev_tid"] = [10, 20, 0], [11, 21, 0]
    b["next_pid"], b["next_tid"] = [30, 40, 40], [31, 41, 41]
    b["prev_comm"] = [b"db", b"writer", b"swapper/1"]
    b["next_comm"] = [b"app", b"reader", b"reader"]
    b["prev_state"] = [2, 0, 0]  # D
    b["target_cpu"] = [-1, 1, 1]
    b["prev_run_ns"] = [7_000, 0, 0]
    return b


def test_sched_rows_follow_the_lake_schema_and_record_kinds() -> None:
    table = sched.sched_table(_sched_batch(), CLOCK)
    assert table.schema == spec("sched").payload_schema
    rows = table.to_pylist()
    switch, waking, wakeup = rows
    assert switch["ts_ns"] == 1_700_000_000_000_001_000
    assert (switch["kind"], switch["prev_tid"], switch["prev_state"], switch["next_comm"]) == (
        "switch", 11, "D", "app")
    assert switch["waker_tid"] is None and switch["target_cpu"] is None
    assert switch["prev_run_ns"] == 7_000 and waking["prev_run_ns"] is None
    assert (waking["kind"], waking["waker_pid"], waking["waker_tid"], waking["wakee_tid"]) == (
        "waking", 20, 21, 41)
    assert waking["prev_tid"] is None and waking["prev_state"] is None
    assert (wakeup["kind"], wakeup["target_cpu"]) == ("wakeup", 1)


def test_offcpu_rows_carry_duration_state_and_optional_waker() -> None:
    b = np.zeros(2, sched.OFFCPU_EVENT)
    b["hdr"]["version"] = sched.SCHED_LAYOUT_VERSION
    b["hdr"]["kind"] = EventKind.OFFCPU
    b["hdr"]["ktime_ns"] = [60_000_000, 9_000]
    b["hdr"]["flags"] = [sched.OFFCPU_FLAG_WAKER, 0]
    b["start_ns"] = [10_000_000, 4_000]
    b["pid"], b["tid"], b["cpu_out"] = 7, [8, 9], 1
    b["state"] = [1, 0]  # S, R
    b["kstack_id"] = [42, -17]
    b["waker_pid"], b["waker_tid"] = [7, 0], [10, 0]
    b["comm"], b["waker_comm"] = b"svc", [b"svc", b""]
    table = sched.offcpu_table(b, CLOCK)
    assert table.schema == spec("offcpu").payload_schema
    woken, preempted = table.to_pylist()
    assert (woken["dur_ns"], woken["state"], woken["waker_tid"], woken["kstack_id"]) == (
        50_000_000, "S", 10, 42)
    assert woken["ts_ns"] == CLOCK.mono_to_epoch_ns + 10_000_000
    assert (preempted["state"], preempted["waker_tid"], preempted["waker_comm"]) == (
        "R", None, None)
    assert preempted["kstack_id"] is None  # a negative id is the kernel's errno


def test_an_interval_whose_stack_the_kernel_could_not_give_is_counted_by_its_error() -> None:
    # GIVEN intervals: a sleep with its stack, a preemption (never walked: -ENOENT), two
    # sleeps whose stack id was refused (-EEXIST: its bucket held another stack) and one
    # whose walk failed (-EFAULT)
    b = np.zeros(5, sched.OFFCPU_EVENT)
    b["hdr"]["version"] = sched.SCHED_LAYOUT_VERSION
    b["hdr"]["size"] = sched.OFFCPU_EVENT.itemsize
    b["hdr"]["kind"] = EventKind.OFFCPU
    b["hdr"]["ktime_ns"] = 9_000
    b["start_ns"] = 4_000
    b["state"] = [1, 0, 1, 2, 1]  # S, R, S, D, S
    b["kstack_id"] = [42, -2, -17, -17, -14]
    family = sched.SchedFamily(AgentOptions())
    # WHEN the agent converts them
    rows = family.convert("offcpu_events", b, CLOCK)["offcpu"]
    # THEN every row is kept, and the lost stacks are counted by error, once
    assert rows.num_rows == 5
    assert family.take_losses() == {("offcpu", "kernel_stack_EEXIST"): 2,
                                     ("offcpu", "kernel_stack_EFAULT"): 1}
    assert family.take_losses() == {}


def test_a_comm_that_is_not_utf8_is_kept_with_replacement_characters() -> None:
    b = _sched_batch()
    b["prev_comm"][0] = b"bad\xff\xfe"
    assert sched.sched_table(b, CLOCK)["prev_comm"][0].as_py() == "bad\ufffd\ufffd"


def test_records_of_another_layout_version_are_refused() -> None:
    b = _sched_batch()
    b["hdr"]["version"][1] = sched.SCHED_LAYOUT_VERSION + 1
    with pytest.raises(RingBufferError, match="layout version"):
        sched.sched_table(b, CLOCK)


def test_clock_offset_maps_monotonic_to_now() -> None:
    sample = sample_offset()
    mono = np.array([time.clock_gettime_ns(time.CLOCK_MONOTONIC)], dtype=np.uint64)
    assert abs(int(sample.to_epoch(mono)[0]) - time.time_ns()) < 50_000_000
    assert 0 <= sample.bracket_ns < 10_000_000
