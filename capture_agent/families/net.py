"""Net family: mirror of bpf/net.h, sensor configuration, and batches -> lake table `net`.

Ring (one record size):
  net_events  struct net_event  TCP send / recv / retransmit / state / reset

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

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array, lookup_strings
from kprobe.capture_agent.families.base import ProbeFamily
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import SensorSpec
from kprobe.lake.schema import spec as table_spec

NET_LAYOUT_VERSION = 1
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
    structs=MappingProxyType({"net_event": NET_EVENT}),
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
    rings=MappingProxyType({"net_events": NET_EVENT}),
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
    ring_bytes: int = 4 << 20
    sockets: int = 65536  # sockets whose owner is remembered (LRU)
    listeners: int = 4096  # listening sockets (owners of not yet accepted connections)


def sensor_spec(config: NetConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or NetConfig()
    return SensorSpec(
        family=FAMILY,
        config={
            "record_send": int(c.record_send),
            "record_recv": int(c.record_recv),
            "net_targets_only": int(c.targets_only),
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
        },
        ring_bytes={"net_events": c.ring_bytes},
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


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "net_events": ("net", net_table),
}


class NetFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        return sensor_spec(NetConfig(target_all=self.options.target_all),
                           shared_maps=shared_maps)

__all__ = [
    "NetFamily",
    "FAMILY",
    "NET_EVENT",
    "RING_TABLES",
    "TCP_STATES",
    "NetConfig",
    "address_strings",
    "net_table",
    "sensor_spec",
]
