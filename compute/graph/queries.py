"""Named Cypher queries over window snapshots, and the reads behind ``kprobe explain``.

A named query runs on every selected window's snapshot; the answers are concatenated with a
``window`` column in front. ``run_cypher`` does the same for a user's own statement (the
snapshots are opened read-only, so a write statement fails in the engine).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from kprobe import lake
from kprobe.compute.errors import QueryNotFound
from kprobe.compute.graph.store import GraphReader, SnapshotInfo, open_snapshot
from kprobe.compute.settings import ComputeSettings


@dataclass(frozen=True)
class NamedQuery:
    name: str
    args: tuple[str, ...]
    help: str
    cypher: str
    convert: Callable[[list[str]], dict[str, Any]]


def _txn(args: list[str]) -> dict[str, Any]:
    return {"txn": args[0]}


def _episode(args: list[str]) -> dict[str, Any]:
    return {"episode": args[0]}


def _pid(args: list[str]) -> dict[str, Any]:
    try:
        pid = int(args[0])
    except ValueError:
        raise QueryNotFound(f"PID must be a number, got {args[0]!r}") from None
    return {"pid": pid, "node": args[1] if len(args) > 1 else ""}


def _none(args: list[str]) -> dict[str, Any]:
    return {}


# A transaction is named by its trace id, its business id (payment id...) or a span id.
_TXN_MATCH = ("(s.trace_id = $txn OR s.txn_id = $txn OR s.business_id = $txn"
              " OR s.id = $txn)")

NAMED_QUERIES: dict[str, NamedQuery] = {q.name: q for q in (
    NamedQuery(
        "root-cause", ("TXN",),
        "ranked causes of the failed operations of a transaction (trace id or business id)",
        f"""
        MATCH (s:Span) WHERE s.failed AND {_TXN_MATCH}
        OPTIONAL MATCH (s)-[c:CAUSED_BY]->(t)
        RETURN s.trace_id AS trace_id, s.txn_id AS txn, s.service AS service,
               s.name AS span, s.failure_kind AS failure, s.dur_ns AS dur_ns,
               s.deadline_ns AS deadline_ns, s.over_ns AS over_ns, c.rank AS rank,
               c.kind AS cause, label(t) AS target_label, t.id AS target,
               c.delay_ns AS delay_ns, c.evidence AS evidence
        ORDER BY s.start_ns, trace_id, rank""", _txn),
    NamedQuery(
        "delayed-by", ("EPISODE",),
        "every transaction a kernel episode delayed (episode id or its prefix), directly or "
        "through the threads it waited for (lock holders, wakers, remote servers)",
        """
        MATCH (s:Span)-[:DELAYED_BY*0..8]->(x:Span)-[d:DELAYED_BY]->(e:KernelEpisode)
        WHERE e.id STARTS WITH $episode AND s.origin = 'otel'
        RETURN e.id AS episode, s.txn_id AS txn, s.trace_id AS trace_id,
               count(DISTINCT s) AS spans, max(d.delay_ns) AS delay_ns,
               max(CASE WHEN s.failed THEN 1 ELSE 0 END) = 1 AS failed,
               min(s.start_ns) AS start_ns
        ORDER BY start_ns, trace_id""", _episode),
    NamedQuery(
        "blast-radius", ("PID", "[NODE]"),
        "operations a process delayed: through its threads (CPU, locks), the episodes it "
        "drove (memory, disk) and the remote work it did",
        """
        MATCH (p:Process)<-[:PART_OF]-(t:Thread)<-[d:DELAYED_BY]-(s:Span)
        WHERE p.pid = $pid AND ($node = '' OR p.node = $node)
        RETURN p.id AS process, 'thread' AS via, t.id AS through, d.kind AS cause,
               s.txn_id AS txn, s.trace_id AS trace_id, s.service AS service,
               s.name AS span, d.delay_ns AS delay_ns, s.failed AS failed
        UNION ALL
        MATCH (p:Process)<-[:CAUSED_BY]-(e:KernelEpisode)<-[d:DELAYED_BY]-(s:Span)
        WHERE p.pid = $pid AND ($node = '' OR p.node = $node)
        RETURN p.id AS process, 'episode' AS via, e.id AS through, d.kind AS cause,
               s.txn_id AS txn, s.trace_id AS trace_id, s.service AS service,
               s.name AS span, d.delay_ns AS delay_ns, s.failed AS failed
        UNION ALL
        MATCH (p:Process)<-[:PART_OF]-(:Thread)<-[:RAN_ON]-(x:Span)<-[d:DELAYED_BY]-(s:Span)
        WHERE p.pid = $pid AND ($node = '' OR p.node = $node) AND x.origin <> 'otel'
        RETURN p.id AS process, x.origin AS via, x.id AS through, d.kind AS cause,
               s.txn_id AS txn, s.trace_id AS trace_id, s.service AS service,
               s.name AS span, d.delay_ns AS delay_ns, s.failed AS failed""", _pid),
    NamedQuery(
        "failures", (),
        "failed operations with their root cause",
        """
        MATCH (s:Span) WHERE s.failed
        RETURN s.txn_id AS txn, s.trace_id AS trace_id, s.service AS service,
               s.name AS span, s.failure_kind AS failure, s.dur_ns AS dur_ns,
               s.over_ns AS over_ns, s.root_cause_kind AS root_cause,
               s.root_cause_target AS target, s.root_cause_delay_ns AS delay_ns
        ORDER BY s.start_ns""", _none),
    NamedQuery(
        "episodes", (),
        "kernel episodes and how many operations each delayed",
        """
        MATCH (e:KernelEpisode)
        OPTIONAL MATCH (s:Span)-[d:DELAYED_BY]->(e)
        RETURN e.id AS episode, e.kind AS kind, e.subkind AS subkind, e.node AS node,
               e.start_ns AS start_ns, e.dur_ns AS dur_ns, count(s) AS spans_delayed,
               max(d.delay_ns) AS max_delay_ns
        ORDER BY start_ns""", _none),
)}


def run_named(location: lake.LakeLocation, snapshots: list[SnapshotInfo], name: str,
              args: list[str], settings: ComputeSettings) -> pa.Table:
    query = NAMED_QUERIES.get(name)
    if query is None:
        raise QueryNotFound(f"unknown query {name!r}; known: {', '.join(NAMED_QUERIES)}")
    required = [a for a in query.args if not a.startswith("[")]
    if not len(required) <= len(args) <= len(query.args):
        usage = " ".join(query.args)
        raise QueryNotFound(f"{name} takes {usage or 'no arguments'}")
    return _on_snapshots(location, snapshots, query.cypher, query.convert(args), settings)


def run_cypher(location: lake.LakeLocation, snapshots: list[SnapshotInfo], cypher: str,
               params: dict[str, Any], settings: ComputeSettings) -> pa.Table:
    return _on_snapshots(location, snapshots, cypher, params, settings)


def _on_snapshots(location: lake.LakeLocation, snapshots: list[SnapshotInfo], cypher: str,
                  params: dict[str, Any], settings: ComputeSettings) -> pa.Table:
    parts = []
    for info in snapshots:
        with open_snapshot(location, info, settings) as reader:
            table = reader.query(cypher, params)
        parts.append(table.add_column(0, "window", pa.array([info.window_id] * table.num_rows,
                                                             pa.string())))
    return pa.concat_tables(parts, promote_options="permissive")


# -- explain --------------------------------------------------------------------------------
def find_traces(reader: GraphReader, txn: str) -> list[str]:
    """Trace ids (or ids of trace-less spans) a transaction name refers to in a snapshot."""
    rows = reader.rows(f"""
        MATCH (s:Span) WHERE {_TXN_MATCH} AND s.origin = 'otel'
        RETURN DISTINCT s.trace_id AS trace_id, min(s.start_ns) AS start_ns
        ORDER BY start_ns""", {"txn": txn})
    return [r["trace_id"] for r in rows if r["trace_id"]]


def trace_data(reader: GraphReader, trace_id: str) -> dict[str, Any]:
    """Everything ``explain`` shows for one trace: spans, domain events, causes, drivers."""
    params = {"trace": trace_id}
    spans = reader.rows("""
        MATCH (s:Span) WHERE s.trace_id = $trace RETURN s.* ORDER BY s.start_ns""", params)
    # holder spans (what a waited-for thread did) hang off the trace's spans, hop by hop
    holders = reader.rows("""
        MATCH (s:Span)-[:DELAYED_BY*1..8]->(h:Span)
        WHERE s.trace_id = $trace AND h.origin = 'holder'
        RETURN DISTINCT h.*""", params)
    keys = [s["s.id"] for s in spans] + [h["h.id"] for h in holders]
    domain = reader.rows("""
        MATCH (d:DomainEvent)-[:DESCRIBES]->(s:Span) WHERE s.trace_id = $trace
        RETURN d.*""", params)
    missed = reader.rows("""
        MATCH (d:DomainEvent)-[m:MISSED]->(c:DomainEvent) WHERE d.trace_id = $trace
        RETURN d.id AS event, c.id AS cutoff, c.cutoff_ns AS cutoff_ns,
               c.cutoff_label AS label, m.delay_ns AS missed_by_ns""", params)
    edges = reader.rows("""
        MATCH (s:Span)-[r:DELAYED_BY|CAUSED_BY]->(t) WHERE s.id IN $keys
        RETURN s.id AS src, label(r) AS rel, r.kind AS kind, r.delay_ns AS delay_ns,
               r.rank AS rank, r.count AS count, r.bytes AS bytes, r.evidence AS evidence,
               label(t) AS dst_label, t.id AS dst""", {"keys": keys})
    episode_ids = sorted({e["dst"] for e in edges if e["dst_label"] == "KernelEpisode"})
    episodes = reader.rows("""
        MATCH (e:KernelEpisode) WHERE e.id IN $ids RETURN e.*""", {"ids": episode_ids})
    drivers = reader.rows("""
        MATCH (e:KernelEpisode)-[c:CAUSED_BY]->(p:Process) WHERE e.id IN $ids
        RETURN e.id AS episode, c.kind AS kind, c.rank AS rank, c.delay_ns AS delay_ns,
               c.bytes AS bytes, c.evidence AS evidence, p.id AS process, p.pid AS pid,
               p.comm AS comm, p.role AS role, p.cgroup AS cgroup
        ORDER BY episode, rank""", {"ids": episode_ids})
    thread_ids = sorted({e["dst"] for e in edges if e["dst_label"] == "Thread"})
    threads = reader.rows("""
        MATCH (t:Thread) WHERE t.id IN $ids
        OPTIONAL MATCH (t)-[:PART_OF]->(p:Process)
        RETURN t.id AS id, t.pid AS pid, t.tid AS tid, t.comm AS comm, p.comm AS process,
               p.role AS role""", {"ids": thread_ids})
    # evidence is stored as JSON text; parsed here, once, for every reader of a trace
    for row in (*edges, *drivers):
        row["evidence"] = parse_evidence(row.get("evidence"))
    return {
        "spans": [_strip(s, "s.") for s in spans],
        "holders": [_strip(h, "h.") for h in holders],
        "domain": [_strip(d, "d.") for d in domain],
        "missed": missed, "edges": edges, "episodes": [_strip(e, "e.") for e in episodes],
        "drivers": drivers, "threads": threads,
    }


def parse_evidence(text: str | None) -> dict[str, Any]:
    """An edge's evidence column (JSON text) as a dict; empty when absent or unreadable."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _strip(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in row.items()}
