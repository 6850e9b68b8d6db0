"""The settlement service: ``POST /postings`` writes a payment's ledger entries (its
postings), durably.

    python -m kprobe.demo.settlement --port 8082 --ledger /path/ledger.db --ledger-pages-mb 96

For each payment it builds the settlement batch in memory, the ledger page images of the
payer's and payee's books with the new double entry applied and checksummed (``--ledger-pages-mb``
of fresh anonymous memory, freed when the write is done), then commits the two entries and
the settlement record to SQLite (WAL, ``synchronous=FULL``: fsync before the answer).

It is deployed in a memory cgroup with a limit, and locks its own memory (``mlockall``).
Building the batch charges every one of its pages to that cgroup: on a quiet host that is
a few tens of milliseconds of page allocation;
when another process in the cgroup holds it at its limit, every charge first makes the
kernel reclaim a page (swap one out) in this thread. Nothing here sleeps or waits on
purpose: any delay is the kernel's.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sqlite3
from datetime import time
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from kprobe.demo.service import (
    JsonHandler,
    base_parser,
    clearing_attributes,
    parse_cutoffs,
    payment_attributes,
    serve,
    tracer,
)

SERVICE = "settlement-service"
MCL_CURRENT, MCL_FUTURE = 1, 2  # <sys/mman.h>
PAGE_WORDS = 512  # int64 words in a 4 KiB ledger page image
# A ledger page as stored: header words, then entry slots (account, amount, balance...).
PAGE_TEMPLATE = (np.arange(PAGE_WORDS, dtype=np.int64) * 2_654_435_761) % 1_000_003


def open_ledger(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # every commit is fsynced, as a ledger must be
    db.executescript("""
        CREATE TABLE IF NOT EXISTS entries (
            id INTEGER PRIMARY KEY, payment_id TEXT NOT NULL, account TEXT NOT NULL,
            side TEXT NOT NULL CHECK (side IN ('debit', 'credit')), amount INTEGER NOT NULL,
            currency TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS settlements (
            payment_id TEXT PRIMARY KEY, amount INTEGER NOT NULL, currency TEXT NOT NULL,
            batch_digest INTEGER NOT NULL);
    """)
    return db


def build_batch(amount: int, size: int) -> tuple[int, mmap.mmap]:
    """The settlement batch: ``size`` bytes of ledger page images with the entry applied,
    in a fresh anonymous mapping (every page a new charge to the cgroup); (its checksum,
    the mapping). The caller frees the mapping once the write is answered."""
    # MAP_POPULATE: the kernel allocates (and charges) every page in the mmap call itself,
    # instead of one page-fault trap per page while the images are written.
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    try:
        pages = np.frombuffer(buf, dtype=np.int64).reshape(-1, PAGE_WORDS)
        pages[:] = PAGE_TEMPLATE  # writes every page
        pages[:, 0] = np.arange(len(pages))  # page number
        pages[:, 1] += amount  # running balance after the entry
        digest = int(pages[:, ::64].sum()) & 0x7FFF_FFFF_FFFF_FFFF
        del pages  # the mapping cannot close while a view of it exists
    except BaseException:
        buf.close()
        raise
    return digest, buf


def lock_memory() -> bool:
    """``mlockall``: this process's code and heap stay in RAM (as a latency-critical service
    is deployed), so the only memory a write waits for is the memory it newly charges."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0)


class Settlement(JsonHandler):
    tracer: trace.Tracer
    db: sqlite3.Connection
    batch_bytes: int
    cutoffs: list[time]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        payment = self.read_payment("/postings")
        if payment is None:
            return
        payment_id, amount = str(payment["payment_id"]), int(payment["amount"])
        batch: list[mmap.mmap] = []
        try:
            with self.tracer.start_as_current_span(
                    "settlement.write", kind=SpanKind.SERVER, context=self.trace_context(),
                    attributes={**payment_attributes(payment), **self.peer_attributes(),
                                **clearing_attributes(self.cutoffs),
                                "settlement.id": f"STL-{payment_id}", "db.system": "sqlite",
                                "settlement.batch_bytes": self.batch_bytes}) as span:
                answer = self.write(payment, payment_id, amount, batch)
                try:
                    self.send_json(200, answer)
                except (BrokenPipeError, ConnectionResetError):
                    # The caller gave up (its timeout): the entries are committed all the same.
                    span.add_event("caller gone before the answer")
                    span.set_attribute("settlement.caller_gone", True)
        finally:
            for buf in batch:  # freed after the answer: the caller does not wait for it
                buf.close()

    def write(self, payment: dict[str, Any], payment_id: str, amount: int,
              batch: list[mmap.mmap]) -> dict[str, Any]:
        digest, buf = build_batch(amount, self.batch_bytes)
        batch.append(buf)
        currency = str(payment.get("currency") or "INR")
        payer, payee = str(payment.get("payer", "?")), str(payment.get("payee", "?"))
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [db.execute("INSERT INTO entries (payment_id, account, side, amount, currency)"
                              " VALUES (?, ?, ?, ?, ?)",
                              (payment_id, account, side, amount, currency)).lastrowid
                   for account, side in ((payer, "debit"), (payee, "credit"))]
            db.execute("INSERT OR REPLACE INTO settlements VALUES (?, ?, ?, ?)",
                       (payment_id, amount, currency, digest))
            db.execute("COMMIT")  # WAL append + fsync
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"payment_id": payment_id, "status": "settled", "entries": ids,
                "batch_digest": digest}


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__)
    p.add_argument("--ledger", type=Path, required=True, help="SQLite ledger file")
    # (not "--batch-…": process roles name anything with "batch" in its argv a batch job)
    p.add_argument("--ledger-pages-mb", type=int, default=96,
                   help="MiB of ledger page images built per settlement (default 96)")
    args = p.parse_args(argv)
    Settlement.tracer, _ = tracer(SERVICE)
    Settlement.db = open_ledger(args.ledger)
    Settlement.batch_bytes = args.ledger_pages_mb << 20
    Settlement.cutoffs = parse_cutoffs(args.clearing_cutoffs)
    locked = lock_memory()
    build_batch(0, 1 << 20)[1].close()  # first touch of numpy's code paths
    print(f"{SERVICE} pid {os.getpid()} on 127.0.0.1:{args.port}"
          + ("" if locked else " (mlockall refused: its memory may be swapped)"), flush=True)
    serve(Settlement, args.port)


if __name__ == "__main__":
    main()
