"""Evidence capture's records (synthetic) -> lake rows, and the option that turns it on.
No kernel needed."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.families import net, sched
from kprobe.capture_agent.layouts import EventKind
from kprobe.commands import _agent_options
from kprobe.errors import CommandError
from kprobe.lake.schema import spec

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=100, taken_at_ns=0)


def _slices() -> np.ndarray:
    b = np.zeros(2, sched.CPU_SLICE_EVENT)
    b["hdr"]["version"] = sched.SCHED_LAYOUT_VERSION
    b["hdr"]["kind"] = EventKind.CPU_SLICE
    b["hdr"]["cpu"] = [0, 1]
    b["hdr"]["ktime_ns"] = [20_000_000, 30_000_000]
    b["start_ns"] = [10_000_000, 20_000_000]
    b["nslots"] = [2, 1]
    slots = b["slots"]
    slots["tid"][0, :3] = [11, 12, 99]  # slot 2 of record 0 is stale: not in use
    slots["pid"][0, :3] = [10, 10, 99]
    slots["oncpu_ns"][0, :3] = [4_000_000, 5_000_000, 1]
    slots["runq_ns"][0, :2] = [300, 0]
    slots["switches"][0, :2] = [7, 3]
    slots["waits"][0, :2] = [2, 0]
    slots["comm"][0, :2] = [b"api", b"api-worker"]
    slots["tid"][1, 0], slots["pid"][1, 0], slots["comm"][1, 0] = 21, 20, b"batch"
    slots["oncpu_ns"][1, 0] = 10_000_000
    return b


def test_slice_records_become_one_row_per_used_slot() -> None:
    table = sched.cpu_slice_table(_slices(), CLOCK)
    assert table.schema == spec("cpu_slices").payload_schema
    rows = table.to_pylist()
    # THEN only the slots in use are rows (a stale slot past nslots is not)
    assert [(r["cpu"], r["tid"]) for r in rows] == [(0, 11), (0, 12), (1, 21)]
    first = rows[0]
    assert first["ts_ns"] == 1_700_000_000_010_000_000 and first["dur_ns"] == 10_000_000
    assert (first["pid"], first["comm"], first["oncpu_ns"], first["runq_ns"],
            first["switches"], first["waits"]) == (10, "api", 4_000_000, 300, 7, 2)
    assert rows[2]["comm"] == "batch" and rows[2]["dur_ns"] == 10_000_000


def test_slice_records_of_another_layout_are_refused() -> None:
    b = _slices()
    b["hdr"]["version"] = sched.SCHED_LAYOUT_VERSION + 1
    with pytest.raises(RingBufferError, match="layout version"):
        sched.cpu_slice_table(b, CLOCK)
    b = _slices()
    b["hdr"]["kind"] = EventKind.SCHED_SWITCH
    with pytest.raises(RingBufferError, match="unexpected record kinds"):
        sched.cpu_slice_table(b, CLOCK)


def test_open_slices_end_at_the_reading_and_index_the_cpu() -> None:
    accs = np.zeros(2, sched.CPU_ACC)
    accs["ev"] = _slices()
    table = sched.open_slices(accs, 25_000_000, CLOCK)
    assert [(r["cpu"], r["tid"], r["dur_ns"]) for r in table.to_pylist()] == [
        (0, 11, 15_000_000), (0, 12, 15_000_000), (1, 21, 5_000_000)]


def test_an_empty_batch_is_no_rows() -> None:
    assert sched.cpu_slice_table(np.zeros(0, sched.CPU_SLICE_EVENT), CLOCK).num_rows == 0
    assert net.net_slice_table(np.zeros(0, net.NET_SLICE_EVENT), CLOCK).num_rows == 0


def test_socket_sums_become_rows_with_their_tuple_and_owner() -> None:
    b = np.zeros(1, net.NET_SLICE_EVENT)
    b["hdr"]["version"] = net.NET_LAYOUT_VERSION
    b["hdr"]["kind"] = EventKind.NET_SLICE
    b["hdr"]["ktime_ns"] = 9_000_000
    b["first_ns"] = 1_000_000
    b["sock_id"] = 0xFFFF8880_12345678
    b["sends"], b["recvs"], b["sent_bytes"], b["recv_bytes"] = 3, 4, 300, 4096
    b["pid"], b["tid"], b["comm"] = 5, 6, b"ledger"
    b["family"], b["sport"], b["dport"] = 2, 5432, 40000
    b["saddr"][0, :4] = [127, 0, 0, 1]
    b["daddr"][0, :4] = [10, 0, 0, 7]
    table = net.net_slice_table(b, CLOCK)
    assert table.schema == spec("net_slices").payload_schema
    (row,) = table.to_pylist()
    assert row["ts_ns"] == 1_700_000_000_001_000_000 and row["dur_ns"] == 8_000_000
    assert (row["saddr"], row["sport"], row["daddr"], row["dport"]) == (
        "127.0.0.1", 5432, "10.0.0.7", 40000)
    assert (row["sends"], row["recvs"], row["sent_bytes"], row["recv_bytes"]) == (3, 4, 300, 4096)
    assert (row["pid"], row["tid"], row["comm"]) == (5, 6, "ledger")
    assert row["sock_id"] == np.uint64(0xFFFF8880_12345678).view(np.int64)


def test_evidence_configuration_reaches_the_kernel_side_and_bad_slices_are_refused() -> None:
    spec_ = sched.sensor_spec(sched.SchedConfig(evidence=True, slice_ns=5_000_000))
    assert spec_.config["evidence"] == 1 and spec_.config["slice_ns"] == 5_000_000
    # evidence capture keeps no wakeup rows: those programs do not even run
    assert {"on_sched_wakeup", "on_sched_wakeup_new"} <= spec_.disabled
    assert sched.sensor_spec(sched.SchedConfig()).config["evidence"] == 0
    assert "on_sched_wakeup_new" not in sched.sensor_spec(sched.SchedConfig()).disabled
    with pytest.raises(ValueError, match="slice"):
        sched.sensor_spec(sched.SchedConfig(evidence=True, slice_ns=0))
    assert net.sensor_spec(net.NetConfig(evidence=True)).config["evidence"] == 1


def test_capture_option_defaults_to_full_and_refuses_other_modes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        _agent_options.add_agent_options(parser, otlp_default=None, metrics_default=None)
        return parser.parse_args(list(argv))

    monkeypatch.delenv("KPROBE_CAPTURE", raising=False)
    assert parse().capture == "full"
    assert parse("--capture", "evidence").capture == "evidence"
    monkeypatch.setenv("KPROBE_CAPTURE", "evidence")
    assert parse().capture == "evidence"
    assert parse("--capture", "full").capture == "full"
    monkeypatch.setenv("KPROBE_CAPTURE", "everything")
    with pytest.raises(CommandError, match="expected full or evidence"):
        _agent_options._capture(parse().capture)
    with pytest.raises(CommandError, match="--slice-ms"):
        _agent_options._slice_ns(0.5)
    assert _agent_options._slice_ns(10) == 10_000_000
