"""The net sensor on the real kernel: TCP on loopback with exactly known byte counts.

Root only. tests/programs/tcp_peer.c: a server and a client process exchange REQ bytes
one way and RESP bytes back over one connection. Retransmits are provoked with an
iptables rule that drops a share of the packets *arriving* on lo for the test's port
(ARCHITECTURE.md, Measured facts: DROP on INPUT gives real losses; on OUTPUT the send just
fails locally).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent import kernel_btf
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import net
from kprobe.capture_agent.layouts import EventKind
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.support import free_port, require, require_binary, require_root

RING_BYTES = 32 << 20  # system-wide: room for whatever else the host does meanwhile


def require_root_and_objects() -> None:
    require_root()
    path = object_path(net.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


@dataclass
class Pair:
    port: int
    server_pid: int
    client_pid: int
    client_port: int


def run_pair(binary: Path, port: int, req: int, resp: int, timeout: float = 60) -> Pair:
    """One tcp_peer server and client exchanging req / resp bytes; both exit 0."""
    server = subprocess.Popen([str(binary), "server", str(port), str(req), str(resp)],
                              stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout is not None
        word, server_pid = server.stdout.readline().split()
        assert word == "ready"
        client = subprocess.Popen([str(binary), "client", str(port), str(req), str(resp)],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        word, client_pid, client_port = client.stdout.readline().split()
        assert word == "connected"
        assert client.wait(timeout=timeout) == 0
        assert server.wait(timeout=timeout) == 0
        return Pair(port, int(server_pid), int(client_pid), int(client_port))
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def of_port(rows: pa.Table, port: int) -> pa.Table:
    return rows.filter(pc.or_(pc.equal(rows["sport"], port), pc.equal(rows["dport"], port)))


def where(rows: pa.Table, **equal: object) -> pa.Table:
    for column, value in equal.items():
        rows = rows.filter(pc.equal(rows[column], value))
    return rows


def add_drop_rule(port: int) -> list[str]:
    """`iptables -A INPUT -i lo ... --dport port ... -j DROP`; returns the delete command."""
    iptables = require_binary("iptables")
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "statistic",
            "--mode", "random", "--probability", "0.3", "-j", "DROP"]
    subprocess.run([iptables, "-A", *rule], check=True)
    return [iptables, "-D", *rule]


def test_send_and_recv_bytes_on_both_sides_with_the_4tuple_and_owners(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN the net sensor, system-wide
    port, req, resp = free_port(), 300_000, 123_457
    t0 = time.time_ns()
    with Sensor(net.sensor_spec(net.NetConfig(ring_bytes=RING_BYTES))) as sensor:
        # WHEN a client sends req bytes to a server, which answers resp bytes
        pair = run_pair(programs / "tcp_peer", port, req, resp)
        batch = sensor.ring("net_events").drain()
        drops = sensor.drops()
    t1 = time.time_ns()
    assert batch.dtype == net.NET_EVENT
    assert set(batch["hdr"]["size"].tolist()) == {net.NET_EVENT.itemsize}
    assert drops == {}
    rows = of_port(net.net_table(batch, sample_offset()), port)
    assert all(t0 - 1_000_000 <= ts <= t1 + 1_000_000 for ts in rows["ts_ns"].to_pylist())

    # THEN each side's sends and receives add up, with its own 4-tuple and pid
    client_tuple = {"saddr": "127.0.0.1", "sport": pair.client_port,
                    "daddr": "127.0.0.1", "dport": port, "family": socket.AF_INET}
    server_tuple = {"saddr": "127.0.0.1", "sport": port,
                    "daddr": "127.0.0.1", "dport": pair.client_port, "family": socket.AF_INET}
    expected = [
        ("send", client_tuple, pair.client_pid, req),
        ("recv", client_tuple, pair.client_pid, resp),
        ("recv", server_tuple, pair.server_pid, req),
        ("send", server_tuple, pair.server_pid, resp),
    ]
    sock_ids = {}
    for kind, tuple_, pid, total in expected:
        mine = where(rows, kind=kind, **tuple_)
        assert len(mine) > 0, (kind, tuple_)
        assert sum(mine["bytes"].to_pylist()) == total, (kind, tuple_)
        assert set(mine["pid"].to_pylist()) == {pid}
        assert set(mine["tid"].to_pylist()) == {pid}
        assert set(mine["comm"].to_pylist()) == {"tcp_peer"}
        assert None not in mine["srtt_us"].to_pylist()
        assert len(set(mine["sock_id"].to_pylist())) == 1
        sock_ids[(kind, pid)] = mine["sock_id"][0].as_py()
    client_sock = sock_ids[("send", pair.client_pid)]
    server_sock = sock_ids[("send", pair.server_pid)]
    assert client_sock == sock_ids[("recv", pair.client_pid)] != server_sock
    assert server_sock == sock_ids[("recv", pair.server_pid)]

    # and the connection's state changes belong to the socket's owner: the client's
    # connect, and the server's accepted socket, established in softirq before accept()
    states = rows.filter(pc.equal(rows["kind"], "state"))
    client_states = where(states, sock_id=client_sock)
    assert ("CLOSE", "SYN_SENT") in zip(client_states["old_state"].to_pylist(),
                                       client_states["state"].to_pylist(), strict=True)
    assert set(client_states["pid"].to_pylist()) == {pair.client_pid}
    server_established = where(states, sock_id=server_sock, state="ESTABLISHED")
    assert server_established["old_state"].to_pylist() == ["SYN_RECV"]
    assert server_established["pid"].to_pylist() == [pair.server_pid]
    listener = where(states, state="LISTEN", sport=port)
    assert listener["pid"].to_pylist() == [pair.server_pid]


def test_retransmits_are_attributed_to_the_sender_through_the_socket_map(
        programs: Path) -> None:
    require_root_and_objects()
    # GIVEN 30% of the packets arriving at the server's port dropped
    port = free_port()
    delete_rule = add_drop_rule(port)
    try:
        with Sensor(net.sensor_spec(net.NetConfig(ring_bytes=RING_BYTES))) as sensor:
            # WHEN the client sends 2 MiB to the server through the lossy path
            pair = run_pair(programs / "tcp_peer", port, 2 << 20, 1000, timeout=120)
            batch = sensor.ring("net_events").drain()
    finally:
        subprocess.run(delete_rule, check=True)
    rows = of_port(net.net_table(batch, sample_offset()), port)
    client_sock = where(rows, kind="send", pid=pair.client_pid)["sock_id"][0].as_py()

    # THEN the client's socket retransmitted, and every retransmit names the client
    retransmits = where(rows, kind="retransmit", sock_id=client_sock)
    assert len(retransmits) > 0
    assert set(retransmits["pid"].to_pylist()) == {pair.client_pid}
    assert set(retransmits["comm"].to_pylist()) == {"tcp_peer"}
    assert (retransmits["sport"].to_pylist()[0], retransmits["dport"].to_pylist()[0]) == (
        pair.client_port, port)
    # (data segments carry their payload; a SYN or FIN carries none)
    assert all(b > 0 for b in where(retransmits, state="ESTABLISHED")["bytes"].to_pylist())
    # and some fired where the current task was not the client (timer or the server's
    # softirq), so their owner came from the socket map
    raw = batch[(batch["hdr"]["kind"] == EventKind.NET_RETRANSMIT)
                & (batch["sock_id"].view(np.int64) == client_sock)]
    assert np.any(raw["hdr"]["flags"] & net.NET_FLAG_FROM_MAP)
    # and any retransmit of the server's own socket (its SYN-ACK or FIN, when the client's
    # ACK to it was among the dropped packets) names the server: by socket, both ways
    others = where(rows, kind="retransmit")
    others = others.filter(pc.not_equal(others["sock_id"], client_sock))
    assert set(others["pid"].to_pylist()) <= {pair.server_pid}


def test_connecting_to_a_closed_port_shows_the_reset_and_the_close() -> None:
    require_root_and_objects()
    # GIVEN a port nobody listens on
    port = free_port()
    with Sensor(net.sensor_spec(net.NetConfig(ring_bytes=RING_BYTES))) as sensor:
        # WHEN this process connects to it
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        batch = sensor.ring("net_events").drain()
    rows = of_port(net.net_table(batch, sample_offset()), port)

    # THEN the reset received by the connecting socket names this process
    received = where(rows, kind="reset", dport=port, pid=os.getpid())
    assert len(received) == 1
    row = received.to_pylist()[0]
    assert (row["state"], row["daddr"], row["family"]) == ("SYN_SENT", "127.0.0.1",
                                                           socket.AF_INET)
    # and so does its SYN_SENT -> CLOSE
    closed = where(rows, kind="state", sock_id=row["sock_id"], state="CLOSE")
    assert closed["old_state"].to_pylist() == ["SYN_SENT"]
    assert closed["pid"].to_pylist() == [os.getpid()]
    # and the kernel's reset for the port without a socket has the tuple, and no owner
    # (where the kernel traces it: Linux 6.10 made tcp_send_reset fire without a socket,
    # in the release that gave it its `reason` argument; 6.1 sends the reset untraced)
    sent = where(rows, kind="reset", sport=port).to_pylist()
    if (kernel_btf.tracepoint_args("tcp_send_reset") or 0) < 3:
        assert sent == []
        return
    assert len(sent) == 1
    assert (sent[0]["saddr"], sent[0]["daddr"]) == ("127.0.0.1", "127.0.0.1")
    assert sent[0]["pid"] is None and sent[0]["sock_id"] is None


def test_ipv6_addresses_are_formatted() -> None:
    require_root_and_objects()
    require(socket.has_ipv6, "IPv6")
    with socket.socket(socket.AF_INET6) as server:
        try:
            server.bind(("::1", 0))
        except OSError as e:
            require(e.errno != errno.EADDRNOTAVAIL, "an IPv6 loopback address")
            raise
        server.listen()
        port = server.getsockname()[1]
        # GIVEN the sensor WHEN 1234 bytes go over ::1
        with Sensor(net.sensor_spec(net.NetConfig(ring_bytes=RING_BYTES))) as sensor:
            with socket.create_connection(("::1", port)) as client:
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"6" * 1234)
                    got = 0
                    while got < 1234:
                        got += len(conn.recv(4096))
            batch = sensor.ring("net_events").drain()
    rows = of_port(net.net_table(batch, sample_offset()), port)
    # THEN the rows carry IPv6 text addresses and family AF_INET6
    sends = where(rows, kind="send", pid=os.getpid())
    assert sum(sends["bytes"].to_pylist()) == 1234
    assert set(sends["saddr"].to_pylist()) == {"::1"} == set(sends["daddr"].to_pylist())
    assert set(sends["family"].to_pylist()) == {socket.AF_INET6}


def test_targets_only_keeps_send_recv_of_targets_but_state_changes_of_all(
        programs: Path) -> None:
    require_root_and_objects()
    # GIVEN send/recv records for targets only, and no target
    port = free_port()
    config = net.NetConfig(ring_bytes=RING_BYTES, targets_only=True)
    with Sensor(net.sensor_spec(config)) as sensor:
        # WHEN an untargeted pair talks
        pair = run_pair(programs / "tcp_peer", port, 10_000, 10_000)
        batch = sensor.ring("net_events").drain()
    rows = of_port(net.net_table(batch, sample_offset()), port)
    # THEN no send/recv rows, but its state changes, owned by the right processes
    assert set(rows["kind"].to_pylist()) == {"state"}
    assert {pair.client_pid, pair.server_pid} <= set(rows["pid"].to_pylist())
