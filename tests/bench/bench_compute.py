"""Causal-engine throughput and latency on a synthetic lake (run by hand; prints, asserts none).

    .venv/bin/python -m tests.bench.bench_compute [--events 10000000] [--windows 10]
                                                  [--no-ray] [--keep DIR [--reuse]] [--stages]
                                                  [--duckdb-threads N]

Writes a lake of about ``--events`` kernel rows for one node with 4 CPUs over ``--windows``
minutes, generated with numpy (no Python loop per row): a coherent schedule (each thread
lives on one CPU, so no thread runs twice at once) with ``switch`` rows and a ``waking`` row
before every switch-in that follows a sleep; off-CPU rows with reasons and wakers for the
16 service threads (the agent's targets); memcg reclaim, page allocations, block requests,
TCP send/recv and a few retransmits; a payment span (deadline 100 ms, about 4% late) with a
child span every ~100 ms on each service thread. Then measures:

- analysis throughput: every 60 s window analysed in-process (``analyze_window``), in
  events per second and per core (DuckDB uses every core of the machine);
- graph load time per window: building and publishing its LadybugDB snapshot, and opening
  a published snapshot read-only;
- explain latency for late payments (goal <= 1 s): across every window, and with the
  window named;
- Ray: the same windows as Ray tasks on a local 2-CPU cluster (cluster start timed apart),
  against the in-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from kprobe import lake
from kprobe.compute.analysis import analyze_window, write_edges
from kprobe.compute.domain import load_rules
from kprobe.compute.explain import explain
from kprobe.compute.graph import store
from kprobe.compute.ray_driver import analyze_windows
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import split

NS = 1_000_000_000
MS = 1_000_000
T0 = 1_767_276_000_000_000_000 + 60 * NS  # 2026-01-01T14:01:00Z: all in one hour partition
NODE = "bench"
CPUS = 4
SERVICE_PID = 100
SERVICE_TIDS = np.arange(101, 117)  # 16 service threads (the targets)
BATCH_PIDS = np.arange(2000, 2100)  # 100 background processes, 4 threads each
REASONS = np.array(["futex", "socket", "disk", "reclaim", "sleep", "pipe"])
REASON_P = [0.35, 0.3, 0.15, 0.05, 0.1, 0.05]


def _threads() -> tuple[np.ndarray, np.ndarray]:
    bg_tids = (BATCH_PIDS[:, None] * 10 + np.arange(4)[None, :]).ravel()
    bg_pids = np.repeat(BATCH_PIDS, 4)
    tids = np.concatenate([SERVICE_TIDS, bg_tids])
    pids = np.concatenate([np.full(len(SERVICE_TIDS), SERVICE_PID), bg_pids])
    return tids.astype(np.int64), pids.astype(np.int64)


def _schedule(rng: np.random.Generator, switches: int, duration_ns: int
              ) -> dict[str, np.ndarray]:
    """Run segments per CPU: (cpu, start, end, tid, pid, leave state)."""
    tids, pids = _threads()
    cpu_of = tids % CPUS
    parts = []
    per_cpu = switches // CPUS
    for cpu in range(CPUS):
        mine = np.flatnonzero(cpu_of == cpu)
        service = mine[tids[mine] < 1000]
        # service threads run a third of the segments of their CPU
        weights = np.where(tids[mine] < 1000, 0.33 / max(len(service), 1),
                           0.67 / max(len(mine) - len(service), 1))
        pick = rng.choice(mine, size=per_cpu, p=weights / weights.sum())
        # no thread follows itself: shift repeats to the next thread of the CPU
        same = np.flatnonzero(pick[1:] == pick[:-1]) + 1
        pick[same] = mine[(np.searchsorted(mine, pick[same]) + 1) % len(mine)]
        gaps = rng.exponential(1.0, per_cpu)
        start = np.cumsum(gaps / gaps.sum() * duration_ns).astype(np.int64) + T0
        end = np.append(start[1:], T0 + duration_ns)
        parts.append({"cpu": np.full(per_cpu, cpu, np.int32), "s": start, "e": end,
                      "tid": tids[pick], "pid": pids[pick],
                      "leave": np.where(rng.random(per_cpu) < 0.45, "R", "S")})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _comm(pids: np.ndarray) -> pa.Array:
    return pa.array(np.where(pids == SERVICE_PID, "payment-svc", "batch-etl"))


def generate(rng: np.random.Generator, events: int, minutes: int) -> dict[str, pa.Table]:
    duration = minutes * 60 * NS
    seg = _schedule(rng, int(events * 0.55), duration)
    n = len(seg["s"])
    # switch rows: at each segment start, prev = the previous segment on that CPU
    prev_idx = np.arange(n) - 1
    first = np.r_[True, seg["cpu"][1:] != seg["cpu"][:-1]]
    prev_tid = np.where(first, 0, seg["tid"][prev_idx])
    prev_pid = np.where(first, 0, seg["pid"][prev_idx])
    prev_state = np.where(first, "R", seg["leave"][prev_idx])
    sched = {
        "ts_ns": seg["s"], "cpu": seg["cpu"], "kind": np.full(n, "switch"),
        "prev_pid": prev_pid, "prev_tid": prev_tid, "prev_comm": _comm(prev_pid),
        "prev_state": prev_state, "next_pid": seg["pid"], "next_tid": seg["tid"],
        "next_comm": _comm(seg["pid"])}
    # each thread's next segment: who slept gets a `waking` row shortly before it
    order = np.lexsort((seg["s"], seg["tid"]))
    nxt = np.full(n, -1)
    same_thread = seg["tid"][order][1:] == seg["tid"][order][:-1]
    nxt[order[:-1][same_thread]] = order[1:][same_thread]
    slept = np.flatnonzero((seg["leave"] == "S") & (nxt >= 0))
    wake_at = np.maximum(seg["s"][nxt[slept]] - rng.integers(1_000, 200_000, len(slept)),
                         seg["e"][slept])
    waker = rng.integers(0, n, len(slept))  # whoever was running somewhere: a thread
    waking = {
        "ts_ns": wake_at, "cpu": seg["cpu"][slept], "kind": np.full(len(slept), "waking"),
        "waker_pid": seg["pid"][waker], "waker_tid": seg["tid"][waker],
        "wakee_pid": seg["pid"][slept], "wakee_tid": seg["tid"][slept],
        "target_cpu": seg["cpu"][slept]}
    tables = {"sched": pa.concat_tables([pa.table(sched), pa.table(waking)],
                                        promote_options="default")}
    # off-CPU intervals of the service threads (the targets), >= 1 ms
    svc = slept[(seg["pid"][slept] == SERVICE_PID)]
    blocked = seg["s"][nxt[svc]] - seg["e"][svc]
    keep = blocked >= MS
    svc, blocked = svc[keep], blocked[keep]
    svc_waker = waker[np.searchsorted(slept, svc)]
    tables["offcpu"] = pa.table({
        "ts_ns": seg["e"][svc], "dur_ns": blocked, "pid": seg["pid"][svc],
        "tid": seg["tid"][svc], "cpu": seg["cpu"][svc], "comm": _comm(seg["pid"][svc]),
        "state": np.full(len(svc), "S"),
        "wait_reason": rng.choice(REASONS, len(svc), p=REASON_P),
        "waker_pid": seg["pid"][svc_waker], "waker_tid": seg["tid"][svc_waker]})
    tables.update(_other_kernel_rows(rng, events, duration))
    tables["spans"] = _spans(rng, duration)
    return tables


def _other_kernel_rows(rng: np.random.Generator, events: int, duration: int
                       ) -> dict[str, pa.Table]:
    tids, pids = _threads()
    out: dict[str, pa.Table] = {}
    k = int(events * 0.01)  # memcg reclaim: short, everywhere, one memcg
    who = rng.integers(0, len(tids), k)
    reclaim = pa.table({
        "ts_ns": T0 + rng.integers(0, duration, k), "dur_ns": rng.integers(20_000, 3 * MS, k),
        "pid": pids[who], "tid": tids[who], "comm": _comm(pids[who]),
        "kind": np.full(k, "memcg_reclaim"), "nr_reclaimed": np.full(k, 32),
        "memcg": np.full(k, 7)})
    seconds = duration // NS
    alloc_pids = np.tile(np.r_[SERVICE_PID, BATCH_PIDS], seconds)
    alloc_ts = np.repeat(T0 + np.arange(seconds) * NS, len(BATCH_PIDS) + 1)
    allocs = pa.table({
        "ts_ns": alloc_ts, "dur_ns": np.zeros(len(alloc_ts), np.int64), "pid": alloc_pids,
        "tid": alloc_pids, "comm": _comm(alloc_pids), "kind": np.full(len(alloc_ts),
                                                                   "page_alloc"),
        "count": rng.integers(10, 5_000, len(alloc_ts)), "memcg": np.full(len(alloc_ts), 7)})
    out["mem"] = pa.concat_tables([reclaim, allocs], promote_options="default")
    k = int(events * 0.03)  # block requests on one device
    who = rng.integers(0, len(tids), k)
    out["block_io"] = pa.table({
        "ts_ns": T0 + rng.integers(0, duration, k), "dur_ns": rng.integers(50_000, 8 * MS, k),
        "pid": pids[who], "tid": tids[who], "comm": _comm(pids[who]),
        "dev": np.full(k, "254:0"), "sector": rng.integers(0, 1 << 30, k),
        "bytes": rng.choice([4096, 65536, 1 << 20], k), "rwbs": rng.choice(["W", "R", "WS"], k)})
    k = int(events * 0.04)  # TCP: each service thread talks to a ledger on port 5432
    t = rng.integers(0, len(SERVICE_TIDS), k)
    send = rng.random(k) < 0.5
    lport = 40_000 + t
    kind = np.where(send, "send", "recv")
    kind[rng.random(k) < 0.002] = "retransmit"
    out["net"] = pa.table({
        "ts_ns": T0 + rng.integers(0, duration, k), "pid": np.full(k, SERVICE_PID),
        "tid": SERVICE_TIDS[t], "comm": np.full(k, "payment-svc"), "kind": kind,
        "family": np.full(k, 2), "saddr": np.full(k, "10.0.0.1"), "sport": lport,
        "daddr": np.full(k, "10.0.0.2"), "dport": np.full(k, 5432),
        "bytes": rng.integers(64, 4096, k)})
    procs = np.r_[SERVICE_PID, BATCH_PIDS]
    out["processes"] = pa.table({
        "ts_ns": np.full(len(procs), T0 - NS), "kind": np.full(len(procs), "seen"),
        "pid": procs, "tid": procs, "ppid": np.ones(len(procs), np.int64),
        "comm": _comm(procs), "exe": np.where(procs == SERVICE_PID, "/srv/payment-svc",
                                              "/opt/batch/etl"),
        "cgroup": np.full(len(procs), "/kprobe/7"), "cgroup_id": np.full(len(procs), 7)})
    return out


def _spans(rng: np.random.Generator, duration: int) -> pa.Table:
    """A payment every ~100 ms per service thread, with a child; ~4% beyond 100 ms."""
    per = duration // (100 * MS)
    tid = np.repeat(SERVICE_TIDS, per)
    start = (T0 + np.tile(np.arange(per) * 100 * MS, len(SERVICE_TIDS))
             + rng.integers(0, 5 * MS, len(tid)))
    dur = np.where(rng.random(len(tid)) < 0.04, rng.integers(120 * MS, 400 * MS, len(tid)),
                   rng.integers(1 * MS, 40 * MS, len(tid)))
    dur = np.minimum(dur, T0 + duration - start - 1)
    n = len(tid)
    trace = np.char.add(np.char.zfill(np.arange(n).astype(str), 24), "a" * 8)
    root = np.char.zfill(np.arange(n).astype(str), 16)
    child = np.char.add(np.char.zfill(np.arange(n).astype(str), 15), "c")
    pay_ids = np.char.add("PAY-", np.arange(n).astype(str))
    attrs = np.char.add(np.char.add('{"payment.id":"', pay_ids),
                        np.char.add('","kprobe.deadline_ms":100,"thread.id":',
                                    np.char.add(tid.astype(str), "}")))
    common = {"service": np.full(n, "payment-svc"), "status": np.full(n, "OK"),
              "pid": np.full(n, SERVICE_PID), "tid": tid, "resource": np.full(n, "{}"),
              "events": np.full(n, "[]")}
    roots = pa.table({"trace_id": trace, "span_id": root, "name": np.full(n, "POST /payments"),
                      "kind": np.full(n, "SERVER"), "start_ns": start, "end_ns": start + dur,
                      "dur_ns": dur, "attributes": attrs, **common})
    cdur = dur * 9 // 10
    children = pa.table({"trace_id": trace, "span_id": child, "parent_span_id": root,
                         "name": np.full(n, "settlement.write"), "kind": np.full(n, "CLIENT"),
                         "start_ns": start + dur // 20, "end_ns": start + dur // 20 + cdur,
                         "dur_ns": cdur, "attributes": np.full(n, "{}"), **common})
    return pa.concat_tables([roots, children], promote_options="default")


def write_lake(root: Path, tables: dict[str, pa.Table], minutes: int) -> int:
    """Write the tables as an agent's lake looks after compaction: rows in time order,
    one commit (file) per 30 s of events per table, so a window reads its own files (the
    agent flushes a file per second; ``kprobe lake compact`` merges them in that order)."""
    writer = lake.LakeWriter.from_settings(lake.LakeSettings(lake=str(root), node=NODE))
    writer.ensure_tables()
    rows = 0
    step = 30 * NS
    for name, table in tables.items():
        column = "start_ns" if name == "spans" else "ts_ns"
        table = table.sort_by(column)
        times = table[column].to_numpy()
        bounds = np.searchsorted(times, T0 + np.arange(0, minutes * 60 * NS + step, step))
        bounds = np.unique(np.r_[0, bounds, table.num_rows])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi > lo:
                writer.append(name, table.slice(int(lo), int(hi - lo)))
        if name != "spans":
            rows += table.num_rows
    return rows


def _time_stages() -> dict[str, float]:
    """Wrap the stages ``analyze_window`` calls so each adds its CPU time (all threads of
    this process) to the returned dict, by stage name (a stage's own callees included)."""
    from kprobe.compute import (
        analysis,
        assemble,
        causes,
        decompose,
        domain,
        rootcause,
        spanmap,
        timeline,
    )
    from kprobe.compute.causes import cpu, disk, memory, network, remote, wait

    totals: dict[str, float] = {}
    stages = [(analysis, "load"), (timeline, "names"), (timeline, "relevant"),
              (timeline, "build"), (spanmap, "build"), (causes, "prepare"), (domain, "build"),
              (decompose, "build"), (memory, "attribute"), (cpu, "attribute"),
              (disk, "attribute"), (network, "attribute"), (remote, "attribute_children"),
              (wait, "attribute"), (rootcause, "build"), (assemble, "structural_rels"),
              (assemble, "graph_tables"), (assemble, "causal_edge_rows")]
    for module, name in stages:
        label = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"
        original = getattr(module, name)

        def timed(*args: object, _f: object = original, _label: str = label,
                  **kwargs: object) -> object:
            started = time.process_time()
            try:
                return _f(*args, **kwargs)  # type: ignore[operator]
            finally:
                totals[_label] = totals.get(_label, 0.0) + time.process_time() - started

        setattr(module, name, timed)
    return totals


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--windows", type=int, default=10, help="60 s windows (minutes)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="build the lake here, keep it")
    parser.add_argument("--stages", action="store_true",
                        help="also print the CPU time of each stage of the analysis")
    parser.add_argument("--duckdb-threads", type=int, default=None,
                        help="DuckDB threads of the in-process analysis (default: every "
                             "core; a Ray task uses one)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: analyse the lake already there (no generation)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = args.keep or Path(tempfile.mkdtemp(prefix="kprobe-bench-compute-"))
    root = work / "lake"
    try:
        if args.reuse and args.keep and (root / "v1").is_dir():
            location = lake.resolve(lake.LakeSettings(lake=str(root)))
            shutil.rmtree(root / "graphs", ignore_errors=True)
            con = lake.connect(location, ["sched", "offcpu", "mem", "block_io", "net"])
            # the events of the analysed windows only (--windows may be fewer than built)
            end = T0 + args.windows * 60 * NS
            events = sum(con.execute(f"SELECT count(*) FROM {t} WHERE ts_ns >= {T0}"
                                     f" AND ts_ns < {end}").fetchone()[0]
                         for t in ("sched", "offcpu", "mem", "block_io", "net"))
            con.close()
            print(f"lake: {events:,} kernel events (reused {root}), {cores} cores here")
        else:
            rng = np.random.default_rng(7)
            started = time.perf_counter()
            tables = generate(rng, args.events, args.windows)
            generated = time.perf_counter() - started
            events = write_lake(root, tables, args.windows)
            print(f"lake: {events:,} kernel events + {tables['spans'].num_rows:,} spans, "
                  f"{args.windows} x 60 s, {CPUS} synthetic CPUs; generated in "
                  f"{generated:.1f} s, written in {time.perf_counter() - started - generated:.1f}"
                  f" s ({cores} cores here)")
            print("  " + ", ".join(f"{k} {v.num_rows:,}" for k, v in tables.items()))
            del tables

        location = lake.resolve(lake.LakeSettings(lake=str(root)))
        # a window's graph (~30 k spans, ~300 k relationships) outgrows the default pool
        settings = ComputeSettings(graph_cache_dir=work / "graph-cache",
                                   graph_buffer_pool_mb=2048,
                                   duckdb_threads=args.duckdb_threads)
        rules = load_rules()
        windows = split(T0, T0 + args.windows * 60 * NS, 60 * NS)

        # -- in-process analysis and graph publication, window by window ----------------
        analysis_s, analysis_cpu_s, publish_s, outputs = [], [], [], []
        failures = 0
        from kprobe.compute.analysis import WindowOutput

        stage_cpu = _time_stages() if args.stages else {}
        for window in windows:
            t, cpu = time.perf_counter(), time.process_time()
            result = analyze_window(location, window, settings, rules)
            analysis_s.append(time.perf_counter() - t)
            analysis_cpu_s.append(time.process_time() - cpu)
            t = time.perf_counter()
            uri = store.publish(location, window, result.tables, settings)
            publish_s.append(time.perf_counter() - t)
            failures += int(result.summary["failures"])
            outputs.append(WindowOutput(window, result.edges, result.summary, uri))
        t = time.perf_counter()
        edges = write_edges(location, outputs)
        edges_s = time.perf_counter() - t
        total = sum(analysis_s)
        print(f"analysis in-process: {total:.1f} s for {len(windows)} windows "
              f"(median {statistics.median(analysis_s):.2f} s, max {max(analysis_s):.2f} s "
              f"per window); {events / total / 1e6:.2f} M events/s, "
              f"{events / total / cores / 1e6:.2f} M events/s per core; "
              f"{failures} failed operations")
        # on a shared machine the wall clock counts the neighbours' time too: the CPU time
        # this process used (all DuckDB threads) is what a core did for the analysis
        cpu_total = sum(analysis_cpu_s)
        print(f"analysis CPU time: {cpu_total:.1f} s of all cores (median "
              f"{statistics.median(analysis_cpu_s):.2f} s per window); "
              f"{events / cpu_total / 1e6:.3f} M events/s per core by CPU time")
        if stage_cpu:
            print("analysis CPU time by stage (all windows): " + ", ".join(
                f"{name} {seconds:.1f} s" for name, seconds in
                sorted(stage_cpu.items(), key=lambda kv: -kv[1]) if seconds >= 0.05))
        print(f"graph load per window (build + publish the LadybugDB snapshot): median "
              f"{statistics.median(publish_s):.2f} s, max {max(publish_s):.2f} s; "
              f"causal_edges: {edges:,} rows in {edges_s:.2f} s")
        snaps = store.list_snapshots(location)
        opens = []
        for info in snaps:
            t = time.perf_counter()
            with store.open_snapshot(location, info, settings) as reader:
                reader.rows("MATCH (s:Span) RETURN count(s) AS n")
            opens.append(time.perf_counter() - t)
        print(f"graph open read-only + one query: median {statistics.median(opens) * 1e3:.0f}"
              f" ms, max {max(opens) * 1e3:.0f} ms")

        # -- explain latency -----------------------------------------------------------
        con = lake.connect(location, ["spans"])
        late = con.execute(
            "SELECT json_extract_string(attributes, '$.\"payment.id\"'), start_ns FROM spans "
            "WHERE name = 'POST /payments' AND dur_ns > 100000000 "
            f"AND start_ns < {T0 + args.windows * 60 * NS} ORDER BY hash(span_id) "
            "LIMIT 20").fetchall()
        everywhere, named = [], []
        lines = 0
        for payment_id, start_ns in late:
            t = time.perf_counter()
            (result,) = explain(location, payment_id, settings)
            everywhere.append(time.perf_counter() - t)
            lines += len(result.steps)
            window_id = next(w.id for w in windows if w.contains(start_ns))
            t = time.perf_counter()
            explain(location, payment_id, settings, window_ids=[window_id])
            named.append(time.perf_counter() - t)
        print(f"explain (late payment, {lines / max(len(late), 1):.0f} lines): across all "
              f"{len(snaps)} windows median {statistics.median(everywhere) * 1e3:.0f} ms, "
              f"p90 {_pct(everywhere, 90) * 1e3:.0f} ms; window named: median "
              f"{statistics.median(named) * 1e3:.0f} ms, p90 {_pct(named, 90) * 1e3:.0f} ms "
              f"(goal <= 1 s)")

        # -- Ray: the same windows as tasks on a local 2-CPU cluster ---------------------
        if not args.no_ray:
            import ray

            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
                     _temp_dir=str(work / "ray"), log_to_driver=False,
                     configure_logging=False)
            init_s = time.perf_counter() - t
            try:
                t = time.perf_counter()
                ray_outputs, _ = analyze_windows(location, windows, settings, rules=rules,
                                                 executor="ray")
                ray_s = time.perf_counter() - t
            finally:
                ray.shutdown()
            local_s = total + sum(publish_s) + edges_s
            same = [o.summary["failures"] for o in ray_outputs] == \
                [o.summary["failures"] for o in outputs]
            print(f"Ray, 2 workers: {ray_s:.1f} s for {len(windows)} windows (+ {init_s:.1f} s"
                  f" cluster start) vs {local_s:.1f} s in-process: speed-up "
                  f"{local_s / ray_s:.2f}x ({local_s / (ray_s + init_s):.2f}x with the start);"
                  f" same failures per window: {same}")
        print(json.dumps({"events": events, "windows": len(windows),
                          "analysis_s": round(total, 2), "analysis_cpu_s": round(cpu_total, 2),
                          "events_per_s_per_core_cpu": round(events / cpu_total)}))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
