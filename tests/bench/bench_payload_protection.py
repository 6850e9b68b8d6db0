"""What protecting payloads costs the agent and the readers (run by hand; prints figures,
asserts none).

    .venv/bin/python -m tests.bench.bench_payload_protection [--rows 100000] [--repeat 5]

Synthetic ``syscall_data`` batches shaped like an HTTP/JSON payment service's payloads
(rows of 16 B to 4 KiB: stat structs, small reads, JSON bodies), with a card number in
none, 1 % or every row (and Luhn-invalid 16-digit decoys in 5 %), then per batch:

- card masking (capture_agent/cards.py): the RE2 prefilter alone, and the whole masker;
  ns per row and ms per MB of payload;
- the agent's whole stage (capture_agent/protection.py) on that batch;
- sealing (lake/sealing.py: one X25519 agreement, one AES-256-GCM call, the rows' identity
  digest) and opening a whole segment, ms per MB;
- environment redaction of 1,000 exec rows with 40 variables each (processes.env).

Median of ``--repeat`` runs after one warm-up. The figures depend on this VM's CPU (AES-NI
makes GCM ~GB/s; the regex and the Python on candidate rows dominate the masker).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from kprobe.capture_agent.cards import PREFILTER, mask_pans
from kprobe.capture_agent.protection import PayloadProtection
from kprobe.capture_agent.redaction import RedactionRules
from kprobe.lake import payload_keys
from kprobe.lake._batches import conform
from kprobe.lake.schema import spec
from kprobe.lake.sealing import SegmentOpener, seal_table

PAN = b"4111111111111111"
DECOY = b"4111111111111112"


def _payloads(rows: int, pan_share: float, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([16, 64, 144, 300, 900, 4096], size=rows, p=[.2, .2, .2, .2, .1, .1])
    body = (b'{"payment_id":"PAY-000123","amount":"50000.00","currency":"INR",'
            b'"merchant":"m-77","status":"pending","note":"' + b"x" * 4096)
    values = []
    for size in sizes:
        value = bytearray(body[:size])
        roll = rng.random()
        if size >= 64 and roll < pan_share:
            value[30:30 + len(PAN)] = PAN
        elif size >= 64 and roll < pan_share + 0.05:
            value[30:30 + len(DECOY)] = DECOY
        values.append(bytes(value))
    n = rows
    return pa.table({"ts_ns": np.arange(n, dtype=np.int64), "pid": np.full(n, 7, np.int32),
                     "tid": np.full(n, 7, np.int32), "seq": np.arange(n),
                     "nr": np.zeros(n, np.int32), "arg_index": np.ones(n, np.int32),
                     "offset": np.zeros(n), "data": pa.array(values, pa.binary()),
                     "total_len": sizes.astype(np.int64), "truncated": np.zeros(n, bool),
                     "blob": pa.nulls(n, pa.string()), "blob_offset": pa.nulls(n, pa.int64())},
                    schema=spec("syscall_data").payload_schema)


def _median(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _line(what: str, seconds: float, rows: int, megabytes: float) -> None:
    print(f"  {what:<34} {seconds * 1e3:8.1f} ms  {seconds / rows * 1e9:7.0f} ns/row  "
          f"{seconds * 1e3 / megabytes:7.2f} ms/MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import pyarrow.compute as pc

    for share in (0.0, 0.01, 1.0):
        table = _payloads(args.rows, share)
        data = table.column("data").combine_chunks()
        mb = data.buffers()[2].size / 1e6
        print(f"{args.rows} rows, {mb:.1f} MB of payload, card numbers in {share:.0%} of rows "
              f"(+5 % decoys):")
        stage = PayloadProtection()
        _line("prefilter (RE2 over the batch)",
              _median(lambda d=data: pc.match_substring_regex(d, PREFILTER), args.repeat),
              args.rows, mb)
        _line("mask_pans", _median(lambda d=data: mask_pans(d), args.repeat), args.rows, mb)
        _line("agent stage (PayloadProtection)",
              _median(lambda s=stage, t=table: s.apply("syscall_data", t), args.repeat),
              args.rows, mb)

    table = _payloads(args.rows, 0.01)
    mb = table.column("data").combine_chunks().buffers()[2].size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        readers, agents = Path(tmp) / "readers.json", Path(tmp) / "agents.json"
        payload_keys.new_key(readers, agents)
        batch = conform(spec("syscall_data"), table, node="n", batch_id="w-1")
        public = payload_keys.load(agents)
        print(f"sealing at rest, {args.rows} rows, {mb:.1f} MB:")
        _line("seal_table (writer)", _median(lambda: seal_table(batch, public), args.repeat),
              args.rows, mb)
        sealed = seal_table(batch, public)
        keys = payload_keys.load(readers)

        def open_all() -> None:
            SegmentOpener(keys, lambda b: sealed).open(
                sealed.column("data"), sealed.column("seal"), sealed.column("seal_pos"),
                sealed.column("batch_id"))

        _line("open every row (reader, uncached)", _median(open_all, args.repeat),
              args.rows, mb)

    env = [f"VAR_{i}=value-{i}-{'y' * 30}" for i in range(36)] + [
        "API_KEY=sk_live_abc", "DB_PASSWORD=pw", "DATABASE_URL=postgres://u:p@h/db",
        "HOME=/root"]
    execs = 1000
    envs = pa.array([env] * execs, pa.list_(pa.string()))
    rules = RedactionRules()
    from kprobe.capture_agent.redaction import flatten_lists

    values, _, _ = flatten_lists(envs)
    seconds = _median(lambda: rules.environment(values), args.repeat)
    print(f"environment redaction: {execs} execs x {len(env)} variables: "
          f"{seconds * 1e3:.1f} ms ({seconds / execs * 1e6:.1f} us per exec)")


if __name__ == "__main__":
    main()
