"""What the other end of a recorded connection sent: the bytes a what-if replay can serve
when the replayed program now waits for data it gave up on in production.

In production the gateway's settlement call timed out after 750 ms and the gateway closed
the socket; the settlement service answered at 800 ms, into a closed connection. Replayed
with a 1500 ms timeout, the gateway waits on: what arrives, and when, is what the peer
sent, and when. The peer is found through the lake alone, for any recorded peer process:

  the replayed process's connect (its sockaddr payload: the peer's address)
    -> its local port: the first TCP send of that thread to that address (`net`)
    -> the peer's accept of that port (its sockaddr payload: our address)
    -> the peer's send family on the accepted descriptor until it closed it, with their
       payloads; a send that failed (EPIPE after our close) keeps the bytes it offered.

Only peers recorded with payloads (``--payloads``) can be served; a connection whose peer
is unknown keeps the recorded behaviour.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kprobe.lake import scan

_CONNECT, _ACCEPT, _ACCEPT4, _CLOSE = 42, 43, 288, 3
_SENDS = (1, 18, 20, 44, 46)  # write, pwrite64, writev, sendto, sendmsg
_HOUR_NS = 3600 * 10**9
_AFTER_NS = 600 * 10**9  # how long after our connect the peer may still answer
_AF_INET, _AF_INET6 = 2, 10


@dataclass
class PeerStream:
    """The bytes one peer sent on one connection, in order, with the time of each send."""

    peer_pid: int
    peer_comm: str
    address: str  # the peer's address, e.g. 127.0.0.1:8601
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (ts_ns, bytes)
    offered_after_failure: int = 0  # bytes of sends that failed (never delivered for real)


@dataclass
class PeerCursor:
    """How far the replayed program has read a peer's stream."""

    stream: PeerStream
    offset: int = 0  # bytes consumed, through recorded reads or served ones

    def consume(self, n: int) -> None:
        self.offset += max(0, n)

    def next_ts(self) -> int | None:
        """When the first byte not read yet was sent (None: nothing more)."""
        seen = 0
        for ts, data in self.stream.chunks:
            if seen + len(data) > self.offset:
                return ts
            seen += len(data)
        return None

    def take(self, limit: int, until_ns: int) -> bytes:
        """Up to ``limit`` unread bytes sent at or before ``until_ns`` (recorded time)."""
        out = bytearray()
        seen = 0
        for ts, data in self.stream.chunks:
            end = seen + len(data)
            if end > self.offset and ts <= until_ns and len(out) < limit:
                start = max(self.offset, seen) - seen
                piece = data[start:start + limit - len(out)]
                out += piece
                self.offset += len(piece)
            seen = end
        return bytes(out)


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(address, port) of an AF_INET/AF_INET6 sockaddr, else None."""
    if len(raw) < 8:
        return None
    family = struct.unpack_from("<H", raw)[0]
    port = struct.unpack_from(">H", raw, 2)[0]
    if family == _AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == _AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        return str(mapped if mapped is not None else address), port
    return None


def _rows(con: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return list(con.execute(sql, params).fetchall())


def load_peer_streams(con: Any, node: str, pid: int, start_ns: int,
                      end_ns: int | None) -> dict[tuple[int, int], PeerStream]:
    """Peer streams of ``pid``'s connections, keyed by the (tid, seq) of its connect."""
    last = (end_ns or start_ns + 24 * _HOUR_NS) + _AFTER_NS
    own = scan("syscalls", [node], start_ns, end_ns if end_ns is not None else last)
    calls = scan("syscalls", [node], start_ns, last)
    connects = _rows(con, f"""
        SELECT s.tid, s.seq, s.ts_ns, d.data FROM {own} s JOIN syscall_data d
          ON d.node = s.node AND d.hour = s.hour AND d.pid = s.pid AND d.tid = s.tid
             AND d.seq = s.seq AND d.arg_index = 1
        WHERE s.pid = ? AND s.nr = {_CONNECT}
        ORDER BY s.ts_ns""", [pid])
    targets = {(tid, seq): (ts, dest) for tid, seq, ts, data in connects
               if (dest := parse_sockaddr(bytes(data))) is not None}
    if not targets:
        return {}
    # our local port: the first send of that thread to that address after the connect
    sends = defaultdict(list)
    for tid, ts, saddr, sport, daddr, dport in _rows(con, f"""
            SELECT tid, ts_ns, saddr, sport, daddr, dport
            FROM {scan("net", [node], start_ns, last)}
            WHERE pid = ? AND kind = 'send' ORDER BY ts_ns""", [pid]):
        sends[(tid, daddr, dport)].append((ts, saddr, sport))
    local: dict[tuple[int, int], tuple[str, int]] = {}
    for key, (ts, (addr, port)) in targets.items():
        first = next((s for s in sends.get((key[0], addr, port), []) if s[0] >= ts), None)
        if first is not None:
            local[key] = (first[1], first[2])
    if not local:
        return {}
    # the accepts of those ports, in any other process of the node
    accepts: dict[tuple[str, int], list[tuple[int, int, int, str]]] = defaultdict(list)
    for apid, ts, fd, comm, data in _rows(con, f"""
            SELECT s.pid, s.ts_ns, s.ret, s.comm, d.data FROM {calls} s JOIN syscall_data d
              ON d.node = s.node AND d.hour = s.hour AND d.pid = s.pid AND d.tid = s.tid
                 AND d.seq = s.seq AND d.arg_index = 1
            WHERE s.nr IN ({_ACCEPT}, {_ACCEPT4}) AND s.ret >= 0 AND s.pid <> ?""",
                                             [pid]):
        client = parse_sockaddr(bytes(data))
        if client is not None:
            accepts[client].append((ts, apid, fd, comm))
    matched: dict[tuple[int, int], tuple[int, int, int, str, str]] = {}
    for key, ours in local.items():
        connect_ts, (addr, port) = targets[key]
        found = [a for a in accepts.get(ours, []) if a[0] >= connect_ts - 10**9]
        if found:
            ts, apid, fd, comm = min(found)
            matched[key] = (ts, apid, fd, comm, f"{addr}:{port}")
    if not matched:
        return {}
    # what each peer sent on the accepted descriptor until it closed it
    peer_pids = sorted({m[1] for m in matched.values()})
    by_fd: dict[tuple[int, int], list[tuple[int, int, int, bytes | None]]] = defaultdict(list)
    for apid, fd, ts, nr, ret, data in _rows(con, f"""
            SELECT s.pid, s.fd, s.ts_ns, s.nr, s.ret,
                   (SELECT list(d.data ORDER BY d."offset") FROM syscall_data d
                    WHERE d.node = s.node AND d.hour = s.hour AND d.pid = s.pid
                      AND d.tid = s.tid AND d.seq = s.seq AND d.arg_index = 1)
            FROM {calls} s
            WHERE s.pid IN ({', '.join('?' * len(peer_pids))})
              AND s.nr IN ({', '.join(str(n) for n in (*_SENDS, _CLOSE))})
            ORDER BY s.ts_ns""", peer_pids):
        blob = b"".join(bytes(p) for p in data if p is not None) if data else None
        by_fd[(apid, fd)].append((ts, nr, ret, blob))
    streams: dict[tuple[int, int], PeerStream] = {}
    for key, (accept_ts, apid, fd, comm, address) in matched.items():
        stream = PeerStream(apid, comm, address)
        for ts, nr, ret, blob in by_fd.get((apid, fd), []):
            if ts <= accept_ts:
                continue
            if nr == _CLOSE:
                break
            if blob is None:
                continue
            if ret >= 0:
                stream.chunks.append((ts, blob[:ret]))
            else:
                stream.chunks.append((ts, blob))
                stream.offered_after_failure += len(blob)
        streams[key] = stream
    return streams
