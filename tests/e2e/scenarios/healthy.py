"""Healthy control: the other scenarios' kinds of work, with no fault anywhere.

Each payment prices its risk (CPU), builds a small batch buffer (fresh memory), posts to
an in-memory ledger under its lock (never contended here) and to the ledger service over
loopback TCP (a child process, as in the network scenario, without the iptables rule). The
deadline is generous: nothing should fail, and nothing should be blamed on the kernel.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.trace import SpanKind

from tests.e2e.scenarios.cpu import price
from tests.e2e.scenarios.lock import Ledger
from tests.e2e.scenarios.memory import build_batch
from tests.e2e.scenarios.network import REQUEST, RESPONSE, _exactly
from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--paths", type=int, default=20_000)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("healthy", args.truth, "payment-service")
    ledger = Ledger(snapshot_mb=0, rounds=0)
    with socket.socket() as probe:  # a free loopback port for the ledger
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tests.e2e.scenarios.network", "--serve",
                               str(port)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        laddr, lport = sock.getsockname()[:2]
        for i in range(args.ops):
            started = time.monotonic()
            with service.operation(i, args.deadline_ms):
                with service.child("risk.check"):
                    price(args.paths, i)
                with service.child("ledger.batch.build"):
                    build_batch(1 << 20, i)
                with service.child("ledger.post"):
                    ledger.post(i, 1_000 + i)
                with service.child("ledger.remote.post", kind=SpanKind.CLIENT, **{
                        "server.address": "127.0.0.1", "server.port": port,
                        "client.address": laddr, "client.port": lport}):
                    sock.sendall(f"{i:08d}".encode().ljust(REQUEST, b" "))
                    _exactly(sock, RESPONSE)
            pace(args.interval_ms, started)
        sock.close()
    finally:
        server.kill()
        server.wait()
    service.finish()


if __name__ == "__main__":
    main()
