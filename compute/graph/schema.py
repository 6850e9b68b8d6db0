"""The causal graph's schema (graph format version 1), defined once.

Node tables
    Process(id = node:pid)      a process, with its role ("batch job") from the domain rules
    Thread(id = node:tid)
    Span(id = trace_id:span_id, or a synthetic id)
                                an operation: the services' spans, plus the server side of an
                                uninstrumented call (origin 'remote') and the holder of a lock
                                (origin 'holder'); its decomposition, domain and root cause
    DomainEvent(id = concept:span)  Payment, RiskCheck, ... and ClearingWindow cutoffs
    KernelEpisode(id = kind:...)    a memory-pressure episode, disk busy period, retransmits

Relationship tables (all with kind, delay_ns, rank, count, bytes, evidence JSON)
    CHILD_OF    Span -> Span            the span's parent
    DELAYED_BY  Span -> KernelEpisode | Thread | Span
                                        a cause of the span's delay (delay_ns of its time)
    CAUSED_BY   Span -> ...             ranked root causes of a failed span (rank 1 = root)
                KernelEpisode -> Process the processes that drove an episode
    WOKE        Thread -> Thread        wakeups of watched threads (count, blocked time)
    SENT_TO     Thread -> Thread        TCP traffic matched send -> recv by 4-tuple
    RAN_ON      Span -> Thread
    PART_OF     Thread -> Process
    DESCRIBES   DomainEvent -> Span
    MISSED      DomainEvent -> DomainEvent (a ClearingWindow), delay_ns = how late
"""

from __future__ import annotations

import pyarrow as pa

GRAPH_FORMAT = "kprobe-graph"
GRAPH_VERSION = 1

_S, _I, _B = ("STRING", pa.string()), ("INT64", pa.int64()), ("BOOLEAN", pa.bool_())

NODE_TABLES: dict[str, tuple[tuple[str, tuple[str, pa.DataType]], ...]] = {
    "Process": (("id", _S), ("node", _S), ("pid", _I), ("ppid", _I), ("comm", _S),
                ("exe", _S), ("argv", _S), ("cgroup", _S), ("cgroup_id", _I), ("role", _S)),
    "Thread": (("id", _S), ("node", _S), ("pid", _I), ("tid", _I), ("comm", _S)),
    "Span": (("id", _S), ("trace_id", _S), ("span_id", _S), ("parent_id", _S),
             ("service", _S), ("name", _S), ("kind", _S), ("node", _S), ("pid", _I),
             ("tid", _I), ("start_ns", _I), ("end_ns", _I), ("dur_ns", _I), ("status", _S),
             ("status_message", _S), ("mapped_by", _S), ("origin", _S), ("synthetic", _B),
             ("owned", _B), ("level", _I), ("trigger_key", _S), ("conn", _S),
             ("on_cpu_ns", _I), ("runqueue_ns", _I), ("blocked_ns", _I), ("unknown_ns", _I),
             ("blocked_by_reason", _S), ("concept", _S), ("business_id", _S),
             ("txn_id", _S), ("deadline_ns", _I), ("failed", _B), ("failure_kind", _S),
             ("over_ns", _I), ("root_cause_kind", _S), ("root_cause_target", _S),
             ("root_cause_label", _S), ("root_cause_delay_ns", _I),
             ("root_cause_sufficient", _B), ("attributes", _S)),
    "DomainEvent": (("id", _S), ("type", _S), ("business_id", _S), ("txn_id", _S),
                    ("span_id", _S), ("trace_id", _S), ("start_ns", _I), ("end_ns", _I),
                    ("status", _S), ("failed", _B), ("label_started", _S),
                    ("label_completed", _S), ("label_failed", _S), ("cutoff_ns", _I),
                    ("cutoff_label", _S), ("missed_by_ns", _I)),
    "KernelEpisode": (("id", _S), ("kind", _S), ("subkind", _S), ("node", _S),
                      ("start_ns", _I), ("end_ns", _I), ("dur_ns", _I), ("memcg", _I),
                      ("dev", _S), ("conn", _S), ("weight_ns", _I), ("detail", _S)),
}

REL_PROPERTIES: tuple[tuple[str, tuple[str, pa.DataType]], ...] = (
    ("kind", _S), ("delay_ns", _I), ("rank", _I), ("count", _I), ("bytes", _I),
    ("evidence", _S))

REL_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "CHILD_OF": (("Span", "Span"),),
    "DELAYED_BY": (("Span", "KernelEpisode"), ("Span", "Thread"), ("Span", "Span")),
    "CAUSED_BY": (("Span", "KernelEpisode"), ("Span", "Thread"), ("Span", "Span"),
                  ("Span", "Process"), ("KernelEpisode", "Process")),
    "WOKE": (("Thread", "Thread"),),
    "SENT_TO": (("Thread", "Thread"),),
    "RAN_ON": (("Span", "Thread"),),
    "PART_OF": (("Thread", "Process"),),
    "DESCRIBES": (("DomainEvent", "Span"),),
    "MISSED": (("DomainEvent", "DomainEvent"),),
}

RELS_SCHEMA = pa.schema([
    ("rel", pa.string()), ("src_label", pa.string()), ("src", pa.string()),
    ("dst_label", pa.string()), ("dst", pa.string()),
    *((name, typ[1]) for name, typ in REL_PROPERTIES)])


def node_schema(label: str) -> pa.Schema:
    return pa.schema([(name, typ[1]) for name, typ in NODE_TABLES[label]])


def ddl() -> list[str]:
    """CREATE statements for an empty graph."""
    statements = []
    for label, columns in NODE_TABLES.items():
        cols = ", ".join(f"{name} {typ[0]}" for name, typ in columns)
        statements.append(f"CREATE NODE TABLE {label}({cols}, PRIMARY KEY (id))")
    props = ", ".join(f"{name} {typ[0]}" for name, typ in REL_PROPERTIES)
    for rel, pairs in REL_TABLES.items():
        ends = ", ".join(f"FROM {a} TO {b}" for a, b in pairs)
        statements.append(f"CREATE REL TABLE {rel}({ends}, {props})")
    return statements
