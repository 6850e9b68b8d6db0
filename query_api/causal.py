"""The causal side of the API over the windows' graph snapshots (read-only).

- ``list_transactions``: root operations of traces, newest analysis of each window, paged by
  an opaque cursor (start_ns, trace_id). A window owns the spans that start in it, so walking
  the windows in time order and their owned roots in (start_ns, trace_id) order is one total
  order: a page never repeats or skips a transaction.
- ``trace_graph``: a trace's spans, the kernel episodes, threads and processes that delayed
  it, and the edges between them, shaped for a D3 force layout, colour-coded by delay.
- ``run_cypher``: a user statement that passed ``cypher_guard`` on each selected snapshot,
  in a confined worker (``cypher_worker``), with time, row and byte limits.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from kprobe.compute.errors import GraphNotFound
from kprobe.compute.graph import queries, store
from kprobe.compute.graph.store import SnapshotInfo
from kprobe.compute.settings import ComputeSettings
from kprobe.lake.storage import LakeLocation
from kprobe.query_api.cypher_worker import (
    CypherJob,
    CypherPool,
    CypherResult,
    run_job,
    snapshot_files,
)
from kprobe.query_api.errors import BadRequest, ServiceUnavailable

MS = 1_000_000
# Delay colour scale (upper bound exclusive, colour, label): also returned as the legend.
DELAY_SCALE: tuple[tuple[int | None, str, str], ...] = (
    (1 * MS, "#2e7d32", "< 1 ms"),
    (10 * MS, "#f9a825", "1-10 ms"),
    (100 * MS, "#ef6c00", "10-100 ms"),
    (None, "#c62828", ">= 100 ms"),
)
NO_DELAY = "#9e9e9e"

Status = Literal["all", "failed", "ok"]
Order = Literal["asc", "desc"]


class Slots:
    """Bounds how many graph reads run at once in this process
    (``ApiSettings.graph_max_open``). A request waits up to ``wait_s`` for a slot, then
    gets a 503 with Retry-After. (SQL statements go through ``query_api.admission``.)"""

    def __init__(self, what: str, slots: int, wait_s: float) -> None:
        self.what = what
        self._semaphore = threading.BoundedSemaphore(slots)
        self.wait_s = wait_s

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.wait_s):
            raise ServiceUnavailable(f"every {self.what} slot of this replica stayed busy "
                                     f"for {self.wait_s:g} s; retry", {"Retry-After": "1"})
        try:
            yield
        finally:
            self._semaphore.release()


def delay_colour(delay_ns: int | None) -> str:
    if not delay_ns or delay_ns <= 0:
        return NO_DELAY
    for bound, colour, _ in DELAY_SCALE:
        if bound is None or delay_ns < bound:
            return colour
    return DELAY_SCALE[-1][1]


def legend() -> list[dict[str, Any]]:
    return [{"label": "no delay", "colour": NO_DELAY, "max_ns": 0}] + [
        {"label": label, "colour": colour, "max_ns": bound} for bound, colour, label in
        DELAY_SCALE]


def select(location: LakeLocation, window_ids: list[str] | None, start_ns: int | None,
           end_ns: int | None) -> list[SnapshotInfo]:
    return store.select_snapshots(location, window_ids=window_ids or None, start_ns=start_ns,
                                  end_ns=end_ns)


# -- transactions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    start_ns: int
    trace_id: str
    descending: bool = False  # a page of order=desc (newest first)

    def encode(self) -> str:
        raw = f"{'d:' if self.descending else ''}{self.start_ns}:{self.trace_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            descending = raw.startswith("d:")
            start, _, trace = raw.removeprefix("d:").partition(":")
            return cls(int(start), trace, descending)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise BadRequest("cursor is not one this service returned") from None


_ROOTS = """
    MATCH (s:Span)
    WHERE s.origin = 'otel' AND s.owned AND s.start_ns >= $lo AND s.start_ns < $hi
      AND {after_cursor}
      AND NOT EXISTS { MATCH (s)-[:CHILD_OF]->(:Span) } {trace_filter}
    RETURN s.trace_id AS trace_id, s.id AS span, s.txn_id AS txn_id,
           s.business_id AS business_id, s.concept AS concept, s.service AS service,
           s.name AS name, s.start_ns AS start_ns, s.end_ns AS end_ns, s.dur_ns AS dur_ns,
           s.status AS status, s.failed AS root_failed
    ORDER BY {order}
    LIMIT $n"""
_AFTER = {"asc": "(s.start_ns > $cs OR (s.start_ns = $cs AND s.trace_id > $ct))",
          "desc": "(s.start_ns < $cs OR (s.start_ns = $cs AND s.trace_id < $ct))"}
_ORDER = {"asc": "s.start_ns, s.trace_id", "desc": "s.start_ns DESC, s.trace_id DESC"}
# traces with a span of one service (the service filter of the transaction list)
_SERVICE_TRACES = """
    MATCH (x:Span) WHERE x.service = $service RETURN DISTINCT x.trace_id AS trace_id"""
_FAILED = """
    MATCH (t:Span) WHERE t.failed AND t.origin = 'otel'
    RETURN t.trace_id AS trace_id, t.id AS span, t.parent_id AS parent_id,
           t.service AS service, t.name AS name, t.failure_kind AS failure_kind,
           t.status_message AS status_message, t.over_ns AS over_ns,
           t.deadline_ns AS deadline_ns, t.root_cause_kind AS root_cause_kind,
           t.root_cause_label AS root_cause_label, t.root_cause_target AS root_cause_target,
           t.root_cause_delay_ns AS root_cause_delay_ns, t.start_ns AS start_ns
    ORDER BY t.start_ns"""
# who a page's root causes point at: an episode's top-ranked driver, or a thread's process
_CULPRITS = """
    MATCH (e:KernelEpisode)-[c:CAUSED_BY]->(p:Process) WHERE e.id IN $targets
    RETURN e.id AS target, 'process' AS via, p.pid AS pid, CAST(NULL AS INT64) AS tid,
           p.comm AS comm, p.role AS role, c.rank AS rank
    UNION ALL
    MATCH (t:Thread) WHERE t.id IN $targets
    OPTIONAL MATCH (t)-[:PART_OF]->(p:Process)
    RETURN t.id AS target, 'thread' AS via, t.pid AS pid, t.tid AS tid,
           coalesce(p.comm, t.comm) AS comm, p.role AS role, 0 AS rank"""


def list_transactions(location: LakeLocation, settings: ComputeSettings, *, status: Status,
                      start_ns: int | None, end_ns: int | None, limit: int,
                      cursor: Cursor | None, window_ids: list[str] | None = None,
                      service: str | None = None, order: Order = "asc",
                      kind: str | None = None,
                      ) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Root operations, oldest first (``order="desc"``: newest first); ``service`` keeps
    the transactions with a span of that service; ``kind`` (with ``status="failed"``) those
    whose failure's root cause is of that kind (memory_pressure...) or whose failure is
    (timeout, error). Also what ``kprobe failures`` lists."""
    if kind is not None and status != "failed":
        raise BadRequest("kind filters failed transactions: use it with status=failed")
    descending = order == "desc"
    if cursor is not None and cursor.descending != descending:
        raise BadRequest(f"cursor belongs to a page of the other order than {order!r}")
    try:
        snapshots = select(location, window_ids, start_ns, end_ns)
    except GraphNotFound:
        if window_ids:
            raise
        return [], None
    lo = max(start_ns or 0, 0)
    hi = end_ns if end_ns is not None else 2**63 - 1
    if cursor is not None:  # a window owns the roots that start in it
        snapshots = [s for s in snapshots if (s.window.start_ns <= cursor.start_ns
                                              if descending
                                              else s.window.end_ns > cursor.start_ns)]
    if descending:
        snapshots = snapshots[::-1]
    cs, ct = (cursor.start_ns, cursor.trace_id) if cursor else (
        (2**63 - 1, "") if descending else (-1, ""))
    roots = _ROOTS.replace("{after_cursor}", _AFTER[order]).replace("{order}", _ORDER[order])
    items: list[dict[str, Any]] = []
    for info in snapshots:
        want = limit + 1 - len(items)
        if want <= 0:
            break
        with store.open_snapshot(location, info, settings) as reader:
            failures: dict[str, dict[str, Any]] = {}
            for row in reader.rows(_FAILED):
                failures.setdefault(row["trace_id"], row)  # the first failed span
            if kind is not None:
                failures = {trace: row for trace, row in failures.items()
                            if kind in (row["root_cause_kind"], row["failure_kind"])}
            params: dict[str, Any] = {"lo": lo, "hi": hi, "cs": cs, "ct": ct, "n": want}
            trace_filter = ""
            if status != "all" and failures:
                params["traces"] = sorted(failures)
                trace_filter = ("AND s.trace_id IN $traces" if status == "failed"
                                else "AND NOT s.trace_id IN $traces")
            elif status == "failed":
                continue
            if service is not None:
                params["service_traces"] = sorted(
                    row["trace_id"] for row in reader.rows(_SERVICE_TRACES,
                                                           {"service": service}))
                if not params["service_traces"]:
                    continue
                trace_filter += " AND s.trace_id IN $service_traces"
            rows = reader.rows(roots.replace("{trace_filter}", trace_filter), params)
            targets = sorted({f["root_cause_target"] for r in rows
                              if (f := failures.get(r["trace_id"])) and f["root_cause_target"]})
            culprits: dict[str, dict[str, Any]] = {}
            for found in sorted(reader.rows(_CULPRITS, {"targets": targets}) if targets else [],
                                key=lambda c: c["rank"] or 0):
                culprits.setdefault(found["target"], found)
        for row in rows:
            failure = failures.get(row["trace_id"])
            culprit = culprits.get(failure["root_cause_target"]) if failure else None
            items.append(_transaction(row, failure, info.window_id, culprit))
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        last = items[-1]
        next_cursor = Cursor(last["start_ns"], last["trace_id"], descending)
    return items, next_cursor


def _transaction(row: dict[str, Any], failure: dict[str, Any] | None,
                 window: str, culprit: dict[str, Any] | None = None) -> dict[str, Any]:
    failed = bool(row["root_failed"]) or failure is not None
    out = {k: row[k] for k in ("trace_id", "txn_id", "business_id", "concept", "service",
                               "name", "start_ns", "end_ns", "dur_ns", "status")}
    out.update({"root_span": row["span"], "failed": failed, "window": window,
                "failure": None})
    if failure is not None:
        out["failure"] = {k: failure[k] for k in (
            "span", "service", "name", "failure_kind", "status_message", "over_ns",
            "deadline_ns", "root_cause_kind", "root_cause_label", "root_cause_target",
            "root_cause_delay_ns")}
        out["failure"]["culprit"] = culprit and {
            k: culprit[k] for k in ("via", "pid", "tid", "comm", "role")}
    return out


# -- trace graph ---------------------------------------------------------------------------
_PRESENCE = """
    MATCH (s:Span) WHERE s.trace_id = $trace
    RETURN count(s) AS spans, min(s.start_ns) AS first,
           sum(CASE WHEN s.owned AND s.origin = 'otel' THEN 1 ELSE 0 END) AS owned"""


def trace_graph(location: LakeLocation, settings: ComputeSettings, trace_id: str, *,
                window_ids: list[str] | None = None, start_ns: int | None = None,
                end_ns: int | None = None) -> dict[str, Any]:
    """Nodes and links of one trace's causal graph, from the window that owns it."""
    best: tuple[tuple[int, int], SnapshotInfo] | None = None
    for info in select(location, window_ids, start_ns, end_ns):
        with store.open_snapshot(location, info, settings) as reader:
            [row] = reader.rows(_PRESENCE, {"trace": trace_id})
        if row["spans"]:
            rank = (int(row["owned"] or 0), int(row["spans"]))
            if best is None or rank > best[0]:
                best = (rank, info)
    if best is None:
        raise _not_found(trace_id)
    info = best[1]
    with store.open_snapshot(location, info, settings) as reader:
        data = queries.trace_data(reader, trace_id)
    graph = build_graph(data)
    graph.update({"trace_id": trace_id, "window": info.window_id, "legend": legend()})
    return graph


def _not_found(trace_id: str) -> Exception:
    from kprobe.compute.errors import NotFound

    return NotFound(f"no trace {trace_id!r} in the analysed windows")


def build_graph(data: dict[str, Any]) -> dict[str, Any]:
    """D3-ready ``nodes`` (id, group, label, delay_ns, colour) and ``links`` (source,
    target, rel, kind, delay_ns, colour) from ``queries.trace_data``."""
    nodes: dict[str, dict[str, Any]] = {}
    links: list[dict[str, Any]] = []
    suffered: dict[str, int] = {}  # delay a span suffered (its DELAYED_BY edges)
    caused: dict[str, int] = {}  # delay an episode / thread / process caused
    for edge in data["edges"]:
        delay = int(edge.get("delay_ns") or 0)
        if edge["rel"] == "DELAYED_BY":
            suffered[edge["src"]] = suffered.get(edge["src"], 0) + delay
        caused[edge["dst"]] = max(caused.get(edge["dst"], 0), delay)
    for driver in data["drivers"]:
        caused[driver["process"]] = max(caused.get(driver["process"], 0),
                                        int(driver.get("delay_ns") or 0))

    for span in [*data["spans"], *data["holders"]]:
        # a span's delay: its time off the CPU (run queue + blocked), or what its cause
        # edges add up to when the decomposition is missing
        off_cpu = int(span.get("runqueue_ns") or 0) + int(span.get("blocked_ns") or 0)
        delay = max(off_cpu, suffered.get(span["id"], 0)) or caused.get(span["id"], 0)
        nodes[span["id"]] = {
            "id": span["id"], "group": "span", "origin": span.get("origin"),
            "label": f"{span.get('service') or '?'}: {span.get('name') or '?'}",
            "service": span.get("service"), "name": span.get("name"),
            "concept": span.get("concept"), "business_id": span.get("business_id"),
            "start_ns": span.get("start_ns"), "dur_ns": span.get("dur_ns"),
            "failed": bool(span.get("failed")), "failure_kind": span.get("failure_kind"),
            "on_cpu_ns": span.get("on_cpu_ns"), "runqueue_ns": span.get("runqueue_ns"),
            "blocked_ns": span.get("blocked_ns"), "delay_ns": delay,
            "colour": delay_colour(delay)}
    for episode in data["episodes"]:
        delay = caused.get(episode["id"], 0)
        what = episode.get("subkind") or episode.get("kind")
        nodes[episode["id"]] = {
            "id": episode["id"], "group": "kernel_episode", "kind": episode.get("kind"),
            "subkind": episode.get("subkind"), "label": f"KERNEL: {what}",
            "start_ns": episode.get("start_ns"), "dur_ns": episode.get("dur_ns"),
            "delay_ns": delay, "colour": delay_colour(delay)}
    for thread in data["threads"]:
        delay = caused.get(thread["id"], 0)
        nodes[thread["id"]] = {
            "id": thread["id"], "group": "thread", "pid": thread.get("pid"),
            "tid": thread.get("tid"),
            "label": f"{thread.get('role') or thread.get('comm') or 'thread'} "
                     f"TID {thread.get('tid')}",
            "delay_ns": delay, "colour": delay_colour(delay)}
    for driver in data["drivers"]:
        pid = driver["process"]
        if pid not in nodes:
            delay = caused.get(pid, 0)
            nodes[pid] = {"id": pid, "group": "process", "pid": driver.get("pid"),
                          "label": f"{driver.get('role') or driver.get('comm') or 'process'}"
                                   f" PID {driver.get('pid')}",
                          "cgroup": driver.get("cgroup"), "delay_ns": delay,
                          "colour": delay_colour(delay)}
        links.append(_link(driver["episode"], pid, "CAUSED_BY", driver.get("kind"),
                           driver.get("delay_ns"), rank=driver.get("rank"),
                           bytes_=driver.get("bytes")))

    for span in data["spans"]:
        parent = span.get("parent_id")
        if parent and parent in nodes:
            links.append(_link(span["id"], parent, "CHILD_OF", None, None))
    for edge in data["edges"]:
        if edge["dst"] not in nodes:
            nodes[edge["dst"]] = {"id": edge["dst"], "group": _group(edge["dst_label"]),
                                  "label": edge["dst"], "delay_ns": caused.get(edge["dst"], 0),
                                  "colour": delay_colour(caused.get(edge["dst"], 0))}
        if edge["src"] in nodes:  # evidence: parsed by queries.trace_data
            links.append(_link(edge["src"], edge["dst"], edge["rel"], edge.get("kind"),
                               edge.get("delay_ns"), rank=edge.get("rank"),
                               count=edge.get("count"), bytes_=edge.get("bytes"),
                               evidence=edge.get("evidence") or None))
    return {"nodes": list(nodes.values()), "links": links}


def _group(label: str | None) -> str:
    return {"Span": "span", "KernelEpisode": "kernel_episode", "Thread": "thread",
            "Process": "process"}.get(label or "", "other")


def _link(source: str, target: str, rel: str, kind: str | None, delay: int | None,
          **extra: Any) -> dict[str, Any]:
    link = {"source": source, "target": target, "rel": rel, "kind": kind,
            "delay_ns": delay, "colour": delay_colour(delay) if rel != "CHILD_OF" else NO_DELAY}
    link.update({k.rstrip("_"): v for k, v in extra.items() if v is not None})
    return link


# -- user Cypher ---------------------------------------------------------------------------
def run_cypher(location: LakeLocation, settings: ComputeSettings, cypher: str,
               params: dict[str, Any], snapshots: list[SnapshotInfo], *, max_rows: int,
               max_bytes: int, timeout_s: float, pool: CypherPool | None) -> CypherResult:
    """A statement that passed ``cypher_guard`` on each selected snapshot, in a confined
    worker of ``pool`` (in this process when ``pool`` is None), with its limits."""
    job = CypherJob(cypher, params, snapshot_files(location, snapshots, settings), max_rows,
                    max_bytes, timeout_s, settings.graph_buffer_pool_mb)
    return pool.run(job) if pool is not None else run_job(job)
