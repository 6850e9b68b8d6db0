"""Synthetic lake rows for the causal-engine tests, and the checks that they are coherent.

``Scenario`` describes what each CPU ran and when (in milliseconds from ``T0``), plus the
blocked intervals, wakeups, reclaim, allocations, block I/O, TCP and spans, and writes the
rows the capture agent would: ``sched`` switch rows are derived from the CPU occupancy
(prev = who leaves, with its state letter; next = who arrives; idle is tid 0), so the
per-CPU and per-thread views always agree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from kprobe.lake import LakeSettings, LakeWriter
from kprobe.lake.schema import spec

T0 = 1_767_276_000_000_000_000  # 2026-01-01T14:00:00Z: the 14:00 clearing cutoff
MS = 1_000_000
NODE = "n1"


def ns(ms: float) -> int:
    return T0 + round(ms * MS)


@dataclass
class _Run:
    cpu: int
    s: int
    e: int
    pid: int
    tid: int
    comm: str
    leave: str
    dated: bool = True  # its switch out says how long it ran (prev_run_ns)
    ran_ms: float | None = None  # what it says, when not the run's own length


class Scenario:
    def __init__(self, node: str = NODE) -> None:
        self.node = node
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.runs: list[_Run] = []
        self.comms: dict[int, str] = {}
        self.untraced: set[tuple[int, int]] = set()  # (cpu, ts_ns) switches the kernel hid

    # -- processes and CPUs -------------------------------------------------------------
    def process(self, pid: int, comm: str, *, cgroup_id: int | None = None,
                exe: str | None = None, argv: list[str] | None = None) -> Scenario:
        self.comms[pid] = comm
        self.rows["processes"].append({
            "ts_ns": T0 - 3600 * 1_000_000_000, "kind": "seen", "pid": pid, "tid": pid,
            "ppid": 1, "comm": comm, "exe": exe or f"/usr/bin/{comm}",
            "argv": argv or [comm], "cgroup": f"/kprobe/{cgroup_id}", "cgroup_id": cgroup_id})
        return self

    def run(self, cpu: int, pid: int, tid: int, start: float, end: float,
            leave: str = "S", dated: bool = True, ran_ms: float | None = None) -> Scenario:
        """Thread ``tid`` on ``cpu`` from ``start`` to ``end`` ms; leaves in state ``leave``.
        ``dated``: its switch out carries how long it ran (the kernel's prev_run_ns,
        ``ran_ms`` if given, as when the scheduler's clock lagged; not
        for a task outside the fair class)."""
        self.runs.append(_Run(cpu, ns(start), ns(end), pid, tid,
                              self.comms.get(pid, f"p{pid}"), leave, dated, ran_ms))
        return self

    def untraced_switch(self, cpu: int, at: float) -> Scenario:
        """The switch on ``cpu`` at ``at`` ms fires no sched_switch (as on this VM's 6.18
        kernel when one of PID 1's threads leaves a CPU): its row is not written."""
        self.untraced.add((cpu, ns(at)))
        return self

    def wake(self, at: float, wakee: tuple[int, int], waker: tuple[int, int],
             target_cpu: int = 0) -> Scenario:
        for kind, who in (("waking", waker), ("wakeup", (0, 0))):  # wakeup names idle
            self.rows["sched"].append({
                "ts_ns": ns(at), "cpu": target_cpu, "kind": kind, "waker_pid": who[0],
                "waker_tid": who[1], "wakee_pid": wakee[0], "wakee_tid": wakee[1],
                "target_cpu": target_cpu})
        return self

    def offcpu(self, pid: int, tid: int, start: float, end: float, reason: str,
               waker: tuple[int, int] | None = None, state: str = "S",
               ends_at_waking: bool = False) -> Scenario:
        self.rows["offcpu"].append({
            "ends_at_waking": ends_at_waking,
            "ts_ns": ns(start), "dur_ns": ns(end) - ns(start), "pid": pid, "tid": tid,
            "cpu": 0, "comm": self.comms.get(pid), "state": state, "wait_reason": reason,
            "waker_pid": waker[0] if waker else None, "waker_tid": waker[1] if waker else None,
            "waker_comm": self.comms.get(waker[0]) if waker else None})
        return self

    # -- kernel events ------------------------------------------------------------------
    def reclaim(self, pid: int, tid: int, start: float, end: float, memcg: int | None,
                kind: str = "memcg_reclaim", nr: int = 32) -> Scenario:
        self.rows["mem"].append({
            "ts_ns": ns(start), "dur_ns": ns(end) - ns(start), "pid": pid, "tid": tid,
            "comm": self.comms.get(pid), "kind": kind, "nr_reclaimed": nr, "memcg": memcg})
        return self

    def page_alloc(self, pid: int, at: float, pages: int, memcg: int | None,
                   kind: str = "page_alloc") -> Scenario:
        self.rows["mem"].append({
            "ts_ns": ns(at), "dur_ns": 0, "pid": pid, "tid": pid, "comm": self.comms.get(pid),
            "kind": kind, "count": pages, "memcg": memcg})
        return self

    def block_io(self, pid: int, tid: int, start: float, end: float, nbytes: int,
                 dev: str = "8:0", rwbs: str = "W") -> Scenario:
        self.rows["block_io"].append({
            "ts_ns": ns(start), "dur_ns": ns(end) - ns(start), "pid": pid, "tid": tid,
            "comm": self.comms.get(pid), "dev": dev, "sector": 0, "bytes": nbytes,
            "rwbs": rwbs})
        return self

    def net(self, kind: str, at: float, pid: int | None, tid: int | None,
            local: tuple[str, int], remote: tuple[str, int], nbytes: int = 0) -> Scenario:
        self.rows["net"].append({
            "ts_ns": ns(at), "pid": pid, "tid": tid, "comm": self.comms.get(pid or -1),
            "kind": kind, "family": 2, "saddr": local[0], "sport": local[1],
            "daddr": remote[0], "dport": remote[1], "bytes": nbytes})
        return self

    def span(self, trace: str, span: str, parent: str | None, service: str, name: str,
             start: float, end: float, *, pid: int | None = None, tid: int | None = None,
             status: str = "OK", message: str | None = None, kind: str = "INTERNAL",
             attrs: dict[str, Any] | None = None, client_port: int | None = None,
             server_port: int | None = None, server_address: str | None = None) -> Scenario:
        self.rows["spans"].append({
            "trace_id": trace.ljust(32, "0"), "span_id": span.ljust(16, "0"),
            "parent_span_id": parent.ljust(16, "0") if parent else None, "service": service,
            "name": name, "kind": kind, "start_ns": ns(start), "end_ns": ns(end),
            "dur_ns": ns(end) - ns(start), "status": status, "status_message": message,
            "pid": pid, "tid": tid, "client_port": client_port, "server_port": server_port,
            "server_address": server_address, "attributes": json.dumps(attrs or {}),
            "resource": "{}", "events": "[]"})
        return self

    # -- output -------------------------------------------------------------------------
    def sched_rows(self) -> list[dict[str, Any]]:
        rows = list(self.rows["sched"])
        by_cpu: dict[int, list[_Run]] = defaultdict(list)
        for r in self.runs:
            by_cpu[r.cpu].append(r)
        for cpu, runs in by_cpu.items():
            runs.sort(key=lambda r: r.s)
            prev: _Run | None = None
            for r in runs:
                if prev is not None and prev.e < r.s:  # prev leaves, CPU idles
                    rows.append(_switch(cpu, prev.e, prev, None))
                    prev = None
                rows.append(_switch(cpu, r.s, prev, r))
                prev = r
            if prev is not None:
                rows.append(_switch(cpu, prev.e, prev, None))
        return [r for r in rows
                if r["kind"] != "switch" or (r["cpu"], r["ts_ns"]) not in self.untraced]

    def write(self, lake_dir: Path) -> str:
        writer = LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node=self.node))
        tables = dict(self.rows)
        tables["sched"] = self.sched_rows()
        for table, rows in tables.items():
            if rows:
                schema = spec(table).payload_schema  # from_pylist alone infers from row 1
                writer.append(table, pa.Table.from_pylist(rows, schema=schema))
        writer.ensure_tables()
        return str(lake_dir)


# -- shared scenarios -------------------------------------------------------------------
# Window used by the tests: [13:59:30, 14:00:30), so every scenario fits in one window.
WINDOW_START = T0 - 30_000 * MS
WINDOW_END = T0 + 30_000 * MS


def payment_scenario(sc: Scenario | None = None, base: float = -750) -> Scenario:
    """Payment #98721 in payment-handler (pid 100, tid 101), deadline 750 ms, 800 ms long:
    memcg 7 reclaim on its own thread for 790 ms while batch-job (pid 4721) allocates
    1.2 GiB in the same memcg. Starts at ``base`` ms (default: 750 ms before 14:00)."""
    sc = sc or Scenario()
    sc.process(100, "payment-handler", cgroup_id=7)
    sc.process(4721, "batch-job", cgroup_id=7, exe="/opt/batch/batch-job")
    sc.process(555, "logger", cgroup_id=7)
    b = base
    sc.run(0, 100, 101, b + 0, b + 400, leave="D")
    sc.offcpu(100, 101, b + 400, b + 700, "reclaim", state="D")
    sc.wake(b + 700, (100, 101), (0, 0))
    sc.run(0, 100, 101, b + 700, b + 800, leave="S")
    sc.reclaim(100, 101, b + 10, b + 800, memcg=7)
    sc.reclaim(4721, 4721, b + 100, b + 600, memcg=7)
    sc.run(1, 4721, 4721, b - 100, b + 1000, leave="R")
    sc.page_alloc(4721, b + 500, 150_000, 7).page_alloc(4721, b + 1000, 164_572, 7)
    sc.page_alloc(555, b + 1000, 100, 7)
    pay = {"payment.id": 98721, "kprobe.deadline_ms": 750}
    sc.span("t1", "a", None, "payment-handler", "POST /payments", b + 0, b + 800, pid=100,
            tid=101, status="ERROR", message="deadline exceeded", kind="SERVER", attrs=pay)
    sc.span("t1", "b", "a", "payment-handler", "risk.check", b + 0.1, b + 0.4, pid=100,
            tid=101, attrs={"payment.id": 98721})
    sc.span("t1", "c", "a", "payment-handler", "settlement.write", b + 1.6, b + 800, pid=100,
            tid=101, attrs={"payment.id": 98721})
    return sc


def analyze(sc: Scenario, lake_dir: Path, **overrides: Any) -> Any:
    """Write the scenario and analyse the test window in-process (no graph published)."""
    from kprobe.compute.analysis import analyze_window
    from kprobe.compute.settings import ComputeSettings
    from kprobe.compute.window import Window
    from kprobe.lake import resolve

    sc.write(lake_dir)
    location = resolve(LakeSettings(lake=str(lake_dir)))
    return analyze_window(location, Window(WINDOW_START, WINDOW_END),
                          ComputeSettings(**overrides))


def key(span: str, trace: str = "t1") -> str:
    """The span key the engine uses (trace_id:span_id, as padded by ``Scenario.span``)."""
    return f"{trace.ljust(32, '0')}:{span.ljust(16, '0')}"


def span_row(analysis: Any, span: str, trace: str = "t1") -> dict[str, Any]:
    rows = [r for r in analysis.tables["Span"].to_pylist() if r["id"] == key(span, trace)]
    assert rows, f"no span {key(span, trace)}"
    return dict(rows[0])


def rels(analysis: Any, rel: str = "DELAYED_BY", src: str | None = None,
         kind: str | None = None) -> list[dict[str, Any]]:
    """Relationships of the analysis, evidence parsed; ``src`` is a span key or node id."""
    return [dict(row, evidence=json.loads(row["evidence"]) if row["evidence"] else {})
            for row in analysis.tables["rels"].to_pylist()
            if row["rel"] == rel and (src is None or row["src"] == src)
            and (kind is None or row["kind"] == kind)]


def _switch(cpu: int, ts: int, prev: _Run | None, nxt: _Run | None) -> dict[str, Any]:
    return {
        "ts_ns": ts, "cpu": cpu, "kind": "switch",
        "prev_pid": prev.pid if prev else 0, "prev_tid": prev.tid if prev else 0,
        "prev_comm": prev.comm if prev else "swapper/0",
        "prev_state": prev.leave if prev else "R",
        "next_pid": nxt.pid if nxt else 0, "next_tid": nxt.tid if nxt else 0,
        "next_comm": nxt.comm if nxt else "swapper/0",
        "prev_run_ns": (None if prev is None or not prev.dated else prev.e - prev.s
                        if prev.ran_ms is None else round(prev.ran_ms * MS))}


def test_sched_rows_follow_cpu_occupancy() -> None:
    # GIVEN thread 11 then 21 on CPU 0 back to back, then a gap, then 11 again
    sc = Scenario().process(10, "a").process(20, "b")
    sc.run(0, 10, 11, 0, 5, leave="R").run(0, 20, 21, 5, 8).run(0, 10, 11, 10, 12)
    # WHEN the switch rows are derived
    rows = sorted(sc.sched_rows(), key=lambda r: r["ts_ns"])
    # THEN each boundary is one switch naming who leaves (with state) and who arrives
    assert [(r["ts_ns"] - T0) // MS for r in rows] == [0, 5, 8, 10, 12]
    assert [(r["prev_tid"], r["prev_state"], r["next_tid"]) for r in rows] == [
        (0, "R", 11), (11, "R", 21), (21, "S", 0), (0, "R", 11), (11, "S", 0)]
