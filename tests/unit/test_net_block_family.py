"""Net and block batches (synthetic records) -> lake rows. No kernel needed."""

from __future__ import annotations

import errno
import socket

import numpy as np
import pytest

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.families import FAMILIES, block, net
from kprobe.capture_agent.layouts import EventKind
from kprobe.lake.schema import spec

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=100, taken_at_ns=0)

SOCK = 0xFFFF_8880_1234_5678  # a kernel address: high bit set


def _net_batch() -> np.ndarray:
    """send (IPv4, owner), retransmit (from the map), state (IPv6, no owner), two resets."""
    b = np.zeros(5, net.NET_EVENT)
    hdr = b["hdr"]
    hdr["version"] = net.NET_LAYOUT_VERSION
    hdr["size"] = net.NET_EVENT.itemsize
    hdr["ktime_ns"] = [1_000, 2_000, 3_000, 4_000, 5_000]
    hdr["kind"] = [EventKind.NET_SEND, EventKind.NET_RETRANSMIT, EventKind.NET_STATE,
                   EventKind.NET_RESET, EventKind.NET_RESET]
    hdr["flags"] = [net.NET_FLAG_OWNER, net.NET_FLAG_OWNER | net.NET_FLAG_FROM_MAP, 0,
                    net.NET_FLAG_OWNER | net.NET_FLAG_FROM_MAP, net.NET_FLAG_NO_SOCK]
    b["sock_id"] = [SOCK, SOCK, SOCK + 64, SOCK, 0]
    b["pid"], b["tid"] = [10, 10, 0, 10, 0], [11, 11, 0, 11, 0]
    b["comm"] = [b"client", b"client", b"", b"client", b""]
    b["family"] = [socket.AF_INET, socket.AF_INET, socket.AF_INET6, socket.AF_INET,
                   socket.AF_INET]
    b["saddr"][:, :4] = [10, 0, 0, 1]
    b["daddr"][:, :4] = [10, 0, 0, 2]
    b["saddr"][2], b["daddr"][2] = 0, 0
    b["saddr"][2][15] = 1  # ::1
    b["daddr"][2][:2] = [0xFE, 0x80]  # fe80::
    b["sport"], b["dport"] = [40000, 40000, 443, 40000, 9], [443, 443, 50000, 443, 40001]
    b["bytes"] = [1500, 1448, 0, 0, 0]
    b["srtt_us"] = [120, 130, 0, 140, 0]
    b["state"] = [1, 1, 1, 2, 0]  # ESTABLISHED, ..., SYN_SENT, none
    b["old_state"] = [0, 0, 3, 0, 0]  # state: SYN_RECV -> ESTABLISHED
    return b


def test_net_rows_follow_the_lake_schema() -> None:
    table = net.net_table(_net_batch(), CLOCK)
    assert table.schema == spec("net").payload_schema
    send, retransmit, state, reset, reset_no_sock = table.to_pylist()
    assert send == {
        "ts_ns": CLOCK.mono_to_epoch_ns + 1_000, "pid": 10, "tid": 11, "comm": "client",
        "kind": "send", "family": socket.AF_INET, "saddr": "10.0.0.1", "sport": 40000,
        "daddr": "10.0.0.2", "dport": 443, "bytes": 1500, "state": None, "old_state": None,
        "srtt_us": 120, "sock_id": np.uint64(SOCK).view(np.int64).item(),
    }
    assert (retransmit["kind"], retransmit["pid"], retransmit["bytes"], retransmit["state"]) == (
        "retransmit", 10, 1448, "ESTABLISHED")
    assert retransmit["old_state"] is None
    # state change without a known owner: no pid, no bytes; IPv6 text
    assert (state["kind"], state["old_state"], state["state"]) == (
        "state", "SYN_RECV", "ESTABLISHED")
    assert state["pid"] is None and state["comm"] is None and state["bytes"] is None
    assert (state["saddr"], state["daddr"], state["family"]) == ("::1", "fe80::",
                                                                 socket.AF_INET6)
    assert state["srtt_us"] is None  # 0 = no RTT sample
    assert (reset["kind"], reset["state"], reset["bytes"]) == ("reset", "SYN_SENT", None)
    # a reset for a packet without a socket: tuple only
    assert reset_no_sock["sock_id"] is None and reset_no_sock["state"] is None
    assert (reset_no_sock["sport"], reset_no_sock["dport"]) == (9, 40001)


def test_sock_id_is_the_pointer_bits_as_int64() -> None:
    table = net.net_table(_net_batch(), CLOCK)
    ids = table["sock_id"].to_pylist()
    assert ids[0] < 0 and ids[0] & ((1 << 64) - 1) == SOCK
    assert ids[0] == ids[1] == ids[3] != ids[2]


def test_addresses_are_formatted_once_per_distinct_value_and_unknown_families_are_null(
) -> None:
    family = np.array([socket.AF_INET, 0, socket.AF_INET6, socket.AF_INET], dtype="<u2")
    addrs = np.zeros((4, 16), np.uint8)
    addrs[0, :4] = addrs[3, :4] = [192, 168, 1, 7]
    addrs[2] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "2001:db8::5"), np.uint8)
    text = net.address_strings(family, addrs).to_pylist()
    assert text == ["192.168.1.7", None, "2001:db8::5", "192.168.1.7"]
    assert net.address_strings(family[:0], addrs[:0]).to_pylist() == []


def test_net_records_of_another_layout_version_or_kind_are_refused() -> None:
    b = _net_batch()
    b["hdr"]["version"][2] = net.NET_LAYOUT_VERSION + 1
    with pytest.raises(RingBufferError, match="layout version"):
        net.net_table(b, CLOCK)
    b = _net_batch()
    b["hdr"]["kind"][0] = EventKind.BLOCK_RQ
    with pytest.raises(RingBufferError, match="kinds"):
        net.net_table(b, CLOCK)


def test_net_config_becomes_the_sensor_spec() -> None:
    s = net.sensor_spec(net.NetConfig(targets_only=True, record_recv=False,
                                      ring_bytes=1 << 22, sockets=1024))
    assert s.config["net_targets_only"] == 1 and s.config["record_recv"] == 0
    assert s.ring_bytes == {"net_events": 1 << 22, "net_slice_events": 4096}
    assert s.map_entries["sock_owners"] == 1024
    assert net.sensor_spec().config["net_targets_only"] == 0  # system-wide by default


def _block_batch() -> np.ndarray:
    """A write with its task, a read without (created before the sensor), a flush, a
    failed partial request."""
    b = np.zeros(4, block.BLOCK_EVENT)
    hdr = b["hdr"]
    hdr["version"] = block.BLOCK_LAYOUT_VERSION
    hdr["kind"] = EventKind.BLOCK_RQ
    hdr["size"] = block.BLOCK_EVENT.itemsize
    hdr["ktime_ns"] = [5_000_000, 7_000, 9_000, 20_000]
    hdr["flags"] = [block.BLOCK_FLAG_TASK, 0, 0,
                    block.BLOCK_FLAG_TASK | block.BLOCK_FLAG_PARTIAL]
    b["issue_ns"] = [1_000_000, 6_000, 8_500, 10_000]
    b["sector"] = [2048, 4096, block.NO_SECTOR, 8]
    b["bytes"] = [262_144, 4096, 0, 512]
    b["dev"] = [(8 << 20) | 1, (8 << 20) | 1, 8 << 20, (259 << 20) | 3]
    b["pid"], b["tid"] = [42, 0, 0, 43], [44, 0, 0, 43]
    b["comm"] = [b"postgres", b"", b"", b"fio"]
    b["rwbs"] = [b"WS", b"RA", b"FWFS", b"FDEFASMU"]  # the last: all 8 letters, no NUL
    b["status"] = [0, 0, 0, 10]  # BLK_STS_IOERR
    return b


def test_block_rows_follow_the_lake_schema() -> None:
    table = block.block_io_table(_block_batch(), CLOCK)
    assert table.schema == spec("block_io").payload_schema
    write, read, flush, failed = table.to_pylist()
    assert write == {
        "ts_ns": CLOCK.mono_to_epoch_ns + 1_000_000, "dur_ns": 4_000_000, "pid": 42,
        "tid": 44, "comm": "postgres", "dev": "8:1", "sector": 2048, "bytes": 262_144,
        "rwbs": "WS", "error": 0,
    }
    assert (read["pid"], read["tid"], read["comm"], read["rwbs"]) == (None, None, None, "RA")
    assert (flush["dev"], flush["sector"], flush["bytes"], flush["rwbs"]) == (
        "8:0", None, 0, "FWFS")
    assert (failed["dev"], failed["rwbs"], failed["error"]) == ("259:3", "FDEFASMU",
                                                                -errno.EIO)


def test_block_status_codes_become_negative_errnos() -> None:
    codes = np.array([0, 1, 2, 3, 10, 13, 17, 18, 200], dtype=np.uint8)
    assert block.status_errno(codes).tolist() == [
        0, -errno.EOPNOTSUPP, -errno.ETIMEDOUT, -errno.ENOSPC, -errno.EIO, -errno.EBUSY,
        -errno.ETIME, -errno.EIO, -errno.EIO]


def test_block_records_of_another_layout_version_are_refused() -> None:
    b = _block_batch()
    b["hdr"]["version"][0] = block.BLOCK_LAYOUT_VERSION + 1
    with pytest.raises(RingBufferError, match="layout version"):
        block.block_io_table(b, CLOCK)


def test_empty_batches_give_empty_tables() -> None:
    assert net.net_table(np.zeros(0, net.NET_EVENT), CLOCK).num_rows == 0
    assert block.block_io_table(np.zeros(0, block.BLOCK_EVENT), CLOCK).num_rows == 0


def test_both_families_are_registered_with_their_rings() -> None:
    assert FAMILIES["net"] is net.FAMILY and FAMILIES["block"] is block.FAMILY
    assert net.RING_TABLES["net_events"] == ("net", net.net_table)
    assert block.RING_TABLES["block_events"] == ("block_io", block.block_io_table)
    for family, rings in ((net.FAMILY, net.RING_TABLES), (block.FAMILY, block.RING_TABLES)):
        assert set(family.rings) == set(rings)
