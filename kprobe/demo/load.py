"""The load driver: a steady stream of payments to the gateway, one at a time.

    python -m kprobe.demo.load --gateway 127.0.0.1:8080 --interval-ms 250 --run 42

It posts a payment every ``--interval-ms`` (or as soon as the previous one is answered, if
that took longer), with everyday amounts, and prints one JSON line per payment:
``{"payment_id", "amount", "status", "ms", "start_ns", "end_ns", "answer"}``. Commands on
stdin, one per line, steer it:

    pause          stop sending after the payment in flight
    send AMOUNT    send a payment of AMOUNT INR next (and resume the stream)
    stop           exit after the payment in flight (so does end of input)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from http.client import HTTPConnection
from itertools import cycle
from typing import Any

from kprobe.demo.service import parse_address

EVERYDAY_INR = (1_250, 8_400, 2_999, 15_000, 640, 4_500, 22_750, 999, 7_200, 3_333)
ACCOUNTS = 12


def post_payment(gateway: tuple[str, int], payment: dict[str, Any],
                 timeout_s: float) -> dict[str, Any]:
    """POST one payment; the outcome as the client saw it."""
    start_ns, started = time.time_ns(), time.monotonic()
    conn = HTTPConnection(gateway[0], gateway[1], timeout=timeout_s)
    try:
        conn.request("POST", "/payments", body=json.dumps(payment).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, body = response.status, response.read()
        answer = json.loads(body) if body else {}
    except (OSError, ValueError) as err:
        status, answer = 0, {"error": f"{type(err).__name__}: {err}"}
    finally:
        conn.close()
    return {"payment_id": payment["payment_id"], "amount": payment["amount"],
            "status": status, "ms": round((time.monotonic() - started) * 1000, 1),
            "start_ns": start_ns, "end_ns": time.time_ns(), "answer": answer}


class Commands:
    """Lines on stdin, read without blocking the stream."""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False

    def wait(self, timeout_s: float | None) -> list[str]:
        """Commands that arrive within ``timeout_s`` (None: until one does)."""
        if self.closed:
            if timeout_s:
                time.sleep(timeout_s)
            return []
        ready, _, _ = select.select([0], [], [], timeout_s)
        if not ready:
            return []
        chunk = os.read(0, 4096)
        if not chunk:
            self.closed = True
            return ["stop"]
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode().strip() for line in lines if line.strip()]


def run(gateway: tuple[str, int], interval_s: float, run_id: int, timeout_s: float) -> None:
    amounts = cycle(EVERYDAY_INR)
    commands = Commands()
    queued: list[int] = []
    paused = False
    seq = 0
    next_at = time.monotonic()
    while True:
        idle = paused and not queued
        for command in commands.wait(None if idle else max(0.0, next_at - time.monotonic())):
            word, _, arg = command.partition(" ")
            if word == "stop":
                return
            if word == "pause":
                paused = True
            elif word == "send":
                queued.append(int(arg))
                paused = False
        if (paused and not queued) or (not queued and time.monotonic() < next_at):
            continue
        seq += 1
        amount = queued.pop(0) if queued else next(amounts)
        payment = {"payment_id": f"PAY-{run_id:06d}-{seq:05d}", "amount": amount,
                   "currency": "INR", "payer": f"ACC-{1000 + seq % ACCOUNTS}",
                   "payee": f"ACC-{2000 + (seq * 7) % ACCOUNTS}"}
        print(json.dumps(post_payment(gateway, payment, timeout_s)), flush=True)
        next_at = max(next_at + interval_s, time.monotonic())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", type=parse_address, required=True, metavar="HOST:PORT")
    p.add_argument("--interval-ms", type=float, default=250.0)
    p.add_argument("--run", type=int, default=1, help="run number, part of payment ids")
    p.add_argument("--timeout-s", type=float, default=10.0)
    args = p.parse_args(argv)
    try:
        run(args.gateway, args.interval_ms / 1000, args.run, args.timeout_s)
    except (KeyboardInterrupt, BrokenPipeError):
        pass


if __name__ == "__main__":
    main()
    sys.exit(0)
