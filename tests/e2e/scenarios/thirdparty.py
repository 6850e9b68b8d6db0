"""Payments through real third-party servers nobody instrumented (Debian's redis-server,
postgres, nginx), reached over TCP; the fault is inside the server or behind it.

    python -m tests.e2e.scenarios.thirdparty --truth T --server redis --port P
    python -m tests.e2e.scenarios.thirdparty --truth T --server postgres --port P
    python -m tests.e2e.scenarios.thirdparty --truth T --server nginx --port P

redis     each payment stores its settlement batch (``--value-mb``) under its key and
          deletes the previous one. This service sets no ``thread.id`` on its spans and is
          single-threaded (spans are exported between payments, from the main thread): the
          payment span maps to its thread as the process's only thread, the redis CLIENT
          spans by their socket 4-tuple.
postgres  each payment credits the settlement account (``UPDATE accounts ... WHERE id = 1``,
          autocommit); a batch session elsewhere holds that row's lock while its client
          computes (the fault behind postgres: backend -> backend -> the batch's client).
nginx     each payment POSTs to a reverse proxy in front of an uninstrumented upstream that
          prices it (CPU); the upstream's CPU is shared with hog threads. The upstream's
          answer carries its own run-queue wait (schedstat), kept as ground truth.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time

from opentelemetry.trace import SpanKind

from tests.e2e.scenarios.servers import Postgres, Redis
from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser, pin_to_cpu


def _client_attrs(sock_name: tuple[str, int], port: int) -> dict[str, object]:
    return {"server.address": "127.0.0.1", "server.port": port,
            "client.address": sock_name[0], "client.port": sock_name[1]}


def run_redis(service: Service, port: int, args: argparse.Namespace) -> None:
    value_mb: int = args.value_mb
    redis = Redis(port)
    attrs = _client_attrs(redis.sock.getsockname()[:2], port)
    value = os.urandom(1 << 16) * ((value_mb << 20) >> 16)
    redis.call("SET", "settlement:warm", value)
    redis.call("DEL", "settlement:warm")
    service.flush()
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, args.deadline_ms):
            with service.child("redis SET", SpanKind.CLIENT, **attrs):
                redis.call("SET", f"settlement:{i}", value)
            with service.child("redis DEL", SpanKind.CLIENT, **attrs):
                redis.call("DEL", f"settlement:{i - 1}")
        service.flush()
        pace(args.interval_ms, started)
    redis.close()


def run_postgres(service: Service, port: int, args: argparse.Namespace) -> None:
    db = Postgres(port)
    attrs = {**_client_attrs(db.sock.getsockname()[:2], port), "db.system": "postgresql"}
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, args.deadline_ms), \
                service.child("UPDATE accounts", SpanKind.CLIENT, **attrs):
            db.query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        pace(args.interval_ms, started)
    db.close()


def run_nginx(service: Service, port: int, args: argparse.Namespace) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    attrs = _client_attrs(conn.sock.getsockname()[:2], port)
    upstream: dict[str, dict[str, int]] = {}
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, args.deadline_ms), \
                service.child("POST /price", SpanKind.CLIENT, **attrs):
            conn.request("POST", "/price", body=f"{i}".encode())
            body = conn.getresponse().read()
        upstream[service.truth.operations[-1].payment_id] = json.loads(body)
        pace(args.interval_ms, started)
    service.truth.facts["upstream"] = upstream
    conn.close()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--server", choices=("redis", "postgres", "nginx"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--value-mb", type=int, default=16)
    p.add_argument("--cpu", type=int, default=None)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    pin_to_cpu(args.cpu)
    if args.server == "redis":
        service = Service("redis", args.truth, "settlement-cache-client", thread_ids=False,
                          single_thread=True)
        run_redis(service, args.port, args)
    elif args.server == "postgres":
        service = Service("postgres", args.truth, "ledger-client")
        run_postgres(service, args.port, args)
    else:
        service = Service("nginx", args.truth, "pricing-client")
        run_nginx(service, args.port, args)
    service.finish()


if __name__ == "__main__":
    main()
