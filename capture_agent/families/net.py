"""Net family: mirror of bpf/net.h, sensor configuration, and batches -> lake tables.

Rings (one record size each):
  net_events        struct net_event        TCP send / recv / retransmit / state / reset
                                            (lake `net`)
  net_slice_events  struct net_slice_event  evidence capture: a socket's sends and receives
                                            by non-targets within one slice (`net_slices`)

Every row names the socket's owner, not the task that happened to be running: events in
softirq take the owner from a socket map kept in the kernel (see bpf/net.bpf.c).
``sock_id`` is the kernel's ``struct sock`` pointer (as int64): it links the rows of one
connection; the pointer is reused after the socket is freed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import BpfMapError
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array, lookup_strings
from kprobe.capture_agent.families.base import ProbeFamily
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

NET_LAYOUT_VERSION = 2
TASK_COMM_LEN = 16
NET_ADDR_LEN = 16

NET_FLAG_OWNER = 0x1
NET_FLAG_FROM_MAP = 0x2
NET_FLAG_LISTENER = 0x4
NET_FLAG_NO_SOCK = 0x8

NET_EVENT = record_dtype(
    [
        ("sock_id", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("saddr", "u1", (NET_ADDR_LEN,)),
        ("daddr", "u1", (NET_ADDR_LEN,)),
        ("bytes", "<u4"),
        ("srtt_us", "<u4"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("family", "<u2"),
        ("state", "u1"),
        ("old_state", "u1"),
    ]
)

NET_SLICE_EVENT = record_dtype(
    [
        ("sock_id", "<u8"),
        ("first_ns", "<u8"),
        ("sent_bytes", "<u8"),
        ("recv_bytes", "<u8"),
        ("sends", "<u4"),
        ("recvs", "<u4"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("saddr", "u1", (NET_ADDR_LEN,)),
        ("daddr", "u1", (NET_ADDR_LEN,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("family", "<u2"),
        ("__pad", "<u2"),
    ]
)

# struct sock_owner (the kernel's socket -> owner map; its sums read once at stop)
NET_ACC = np.dtype(
    [
        ("slice", "<u8"),
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("sent_bytes", "<u8"),
        ("recv_bytes", "<u8"),
        ("sends", "<u4"),
        ("recvs", "<u4"),
        ("saddr", "u1", (NET_ADDR_LEN,)),
        ("daddr", "u1", (NET_ADDR_LEN,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("family", "<u2"),
        ("__pad", "<u2"),
    ]
)
SOCK_OWNER = np.dtype(
    [
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("flags", "u1"),
        ("__pad", "u1", (7,)),
        ("acc", NET_ACC),
    ]
)

NET_KINDS = (
    EventKind.NET_SEND,
    EventKind.NET_RECV,
    EventKind.NET_RETRANSMIT,
    EventKind.NET_STATE,
    EventKind.NET_RESET,
)
# lake `net.kind` per kind, indexed by kind - NET_SEND
_KIND_NAMES = ["send", "recv", "retransmit", "state", "reset"]

# The kernel's TCP_* state numbers (uapi-stable: /proc/net/tcp, BPF_TCP_*), by value.
TCP_STATES = (
    "", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
    "BOUND_INACTIVE",
)

FAMILY = Family(
    name="net",
    object_file="net.bpf.o",
    structs=MappingProxyType({"net_event": NET_EVENT, "net_slice_event": NET_SLICE_EVENT,
                              "sock_owner": SOCK_OWNER}),
    enums=MappingProxyType(
        {
            "net_constants": {
                "NET_LAYOUT_VERSION": NET_LAYOUT_VERSION,
                "NET_FLAG_OWNER": NET_FLAG_OWNER,
                "NET_FLAG_FROM_MAP": NET_FLAG_FROM_MAP,
                "NET_FLAG_LISTENER": NET_FLAG_LISTENER,
                "NET_FLAG_NO_SOCK": NET_FLAG_NO_SOCK,
                "NET_ADDR_LEN": NET_ADDR_LEN,
            },
        }
    ),
    rings=MappingProxyType({"net_events": NET_EVENT, "net_slice_events": NET_SLICE_EVENT}),
    layout_version=NET_LAYOUT_VERSION,
    # sock_send_length / sock_recv_length are Linux >= 6.3; before, fexit on TCP's own
    fallbacks=MappingProxyType({"on_tcp_sendmsg_exit": "on_sock_send_length",
                                "on_tcp_recvmsg_exit": "on_sock_recv_length"}),
)


@dataclass(frozen=True)
class NetConfig:
    """What the net sensor records. Sizes are bytes (ring: power of two pages).

    send/recv make one record per TCP send/recv call of every process: on a busy host,
    ``targets_only`` limits them to targeted processes. Retransmits, resets and state
    changes are rare and always system-wide; socket owners are tracked for every socket.
    """

    record_send: bool = True
    record_recv: bool = True
    targets_only: bool = False
    target_all: bool = False  # every process is a target
    wakeup_fill_pct: int = 50
    ring_bytes: int = 16 << 20  # a TCP send/recv of every process each: see SchedConfig
    sockets: int = 65536  # sockets whose owner is remembered (LRU)
    listeners: int = 4096  # listening sockets (owners of not yet accepted connections)
    # evidence capture: send/recv rows for targets only; for the others, per-socket sums of
    # slice_ns (a net_slice_event when the socket's next send/recv falls in a later slice,
    # at close, and the rest read at stop)
    evidence: bool = False
    slice_ns: int = 10_000_000
    slice_ring_bytes: int = 1 << 20  # 120-byte records (+8 header): 8.2k (see SchedConfig)


def sensor_spec(config: NetConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or NetConfig()
    return SensorSpec(
        family=FAMILY,
        config={
            "record_send": int(c.record_send),
            "record_recv": int(c.record_recv),
            "net_targets_only": int(c.targets_only),
            "evidence": int(c.evidence),
            "slice_ns": c.slice_ns,
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
        },
        ring_bytes={"net_events": c.ring_bytes,
                    "net_slice_events": c.slice_ring_bytes if c.evidence else 4096},
        map_entries={"sock_owners": c.sockets, "listeners": c.listeners},
        shared_maps=shared_maps or {},
    )


def _format_address(key: bytes) -> str | None:
    """One distinct (family, 16 address bytes) key -> text; None for an unknown family."""
    family = int.from_bytes(key[:2], "little")
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(key[2:6]))
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(key[2:18]))
    return None


def address_strings(family: np.ndarray, addrs: np.ndarray) -> pa.Array:
    """Addresses (n x 16 bytes, network order) of ``family`` -> text, formatting each
    distinct (family, address) once: a batch has few distinct addresses."""
    n = len(family)
    if n == 0:
        return pa.array([], type=pa.string())
    keys = np.empty((n, 2 + NET_ADDR_LEN), dtype=np.uint8)
    keys[:, :2] = family.astype("<u2").view(np.uint8).reshape(n, 2)
    keys[:, 2:] = addrs
    distinct, inverse = np.unique(keys.view(f"V{2 + NET_ADDR_LEN}").ravel(),
                                  return_inverse=True)
    texts = pa.array([_format_address(bytes(k)) for k in distinct], type=pa.string())
    return pc.take(texts, pa.array(inverse.ravel().astype(np.int32)))


def net_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``NET_EVENT`` -> rows of lake table ``net`` (vectorised)."""
    check_header(batch, FAMILY, _KINDS)
    hdr = batch["hdr"]
    kind = hdr["kind"].astype(np.int32)
    flags = hdr["flags"]
    no_owner = (flags & NET_FLAG_OWNER) == 0
    is_state = kind == EventKind.NET_STATE
    moves_bytes = kind <= EventKind.NET_RETRANSMIT  # send, recv, retransmit
    is_data = kind <= EventKind.NET_RECV  # send, recv: state of no interest
    columns = {
        "ts_ns": pa.array(clock.to_epoch(hdr["ktime_ns"])),
        "pid": int_array(batch["pid"], null=no_owner),
        "tid": int_array(batch["tid"], null=no_owner),
        "comm": comm_array(batch["comm"], null=no_owner),
        "kind": lookup_strings(_KIND_NAMES, kind - int(EventKind.NET_SEND)),
        "family": int_array(batch["family"]),
        "saddr": address_strings(batch["family"], batch["saddr"]),
        "sport": int_array(batch["sport"]),
        "daddr": address_strings(batch["family"], batch["daddr"]),
        "dport": int_array(batch["dport"]),
        "bytes": int_array(batch["bytes"], null=~moves_bytes, arrow_type=pa.int64()),
        "state": lookup_strings(TCP_STATES, batch["state"],
                                null=is_data | (batch["state"] == 0)),
        "old_state": lookup_strings(TCP_STATES, batch["old_state"],
                                    null=~is_state | (batch["old_state"] == 0)),
        "srtt_us": int_array(batch["srtt_us"], null=batch["srtt_us"] == 0,
                             arrow_type=pa.int64()),
        # a kernel pointer as int64: same bits, negative (kernel addresses are high)
        "sock_id": pa.array(batch["sock_id"].view(np.int64), type=pa.int64(),
                            mask=(flags & NET_FLAG_NO_SOCK) != 0),
    }
    return pa.table(columns, schema=table_spec("net").payload_schema)


_KINDS = tuple(int(k) for k in NET_KINDS)
_SLICE_KINDS = (int(EventKind.NET_SLICE),)


def slice_rows(sock_ids: np.ndarray, first: np.ndarray, last: np.ndarray, owners: np.ndarray,
               sums: np.ndarray, clock: ClockSample) -> pa.Table:
    """Per-socket sums (``sums``: fields of NET_ACC / NET_SLICE_EVENT; ``owners``: pid,
    tid, comm) -> ``net_slices`` rows (vectorised)."""
    start = first.astype(np.int64)
    columns = {
        "ts_ns": pa.array(clock.to_epoch(start)),
        "dur_ns": pa.array(last.astype(np.int64) - start),
        "pid": int_array(owners["pid"]),
        "tid": int_array(owners["tid"]),
        "comm": comm_array(owners["comm"]),
        "family": int_array(sums["family"]),
        "saddr": address_strings(sums["family"], sums["saddr"]),
        "sport": int_array(sums["sport"]),
        "daddr": address_strings(sums["family"], sums["daddr"]),
        "dport": int_array(sums["dport"]),
        "sends": int_array(sums["sends"], arrow_type=pa.int64()),
        "recvs": int_array(sums["recvs"], arrow_type=pa.int64()),
        "sent_bytes": int_array(sums["sent_bytes"], arrow_type=pa.int64()),
        "recv_bytes": int_array(sums["recv_bytes"], arrow_type=pa.int64()),
        "sock_id": pa.array(sock_ids.view(np.int64), type=pa.int64()),
    }
    return pa.table(columns, schema=table_spec("net_slices").payload_schema)


def net_slice_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``NET_SLICE_EVENT`` -> rows of lake table ``net_slices``."""
    check_header(batch, FAMILY, _SLICE_KINDS)
    return slice_rows(batch["sock_id"], batch["first_ns"], batch["hdr"]["ktime_ns"], batch,
                      batch, clock)


def open_socket_slices(fd: int, clock: ClockSample) -> pa.Table:
    """The sums the kernel still held per socket (``sock_owners``), read and cleared once
    when the agent stops, after the programs are detached."""
    try:
        info = libbpf.map_info(fd)
        if info.key_size != 8 or info.value_size != SOCK_OWNER.itemsize:
            raise BpfMapError(f"map sock_owners: key/value sizes {info.key_size}/"
                              f"{info.value_size}, reader expects 8/{SOCK_OWNER.itemsize}")
        keys, values, count = libbpf.map_lookup_and_delete_batch(
            fd, 8, SOCK_OWNER.itemsize, info.max_entries)
    except OSError as e:
        raise BpfMapError(f"map sock_owners: read and clear: {e.strerror}",
                          e.errno or 0) from None
    ids = np.frombuffer(keys, "<u8", count=count)
    owners = np.frombuffer(values, SOCK_OWNER, count=count)
    acc = owners["acc"]
    some = (acc["sends"] > 0) | (acc["recvs"] > 0)
    acc, owners = acc[some], owners[some]
    return slice_rows(ids[some], acc["first_ns"], acc["last_ns"], owners, acc, clock)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "net_events": ("net", net_table),
    "net_slice_events": ("net_slices", net_slice_table),
}


class NetFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        return sensor_spec(NetConfig(target_all=self.options.target_all,
                                     evidence=self.options.capture == "evidence",
                                     slice_ns=self.options.slice_ns),
                           shared_maps=shared_maps)

    def tails(self, sensor: Sensor, clock: ClockSample) -> dict[str, pa.Table]:
        """Evidence capture: the sums the kernel still held per socket."""
        if self.options.capture != "evidence":
            return {}
        return {"net_slices": open_socket_slices(sensor.map_fd("sock_owners"), clock)}

__all__ = [
    "NetFamily",
    "FAMILY",
    "NET_EVENT",
    "NET_SLICE_EVENT",
    "SOCK_OWNER",
    "RING_TABLES",
    "TCP_STATES",
    "NetConfig",
    "address_strings",
    "net_slice_table",
    "net_table",
    "open_socket_slices",
    "slice_rows",
    "sensor_spec",
]
