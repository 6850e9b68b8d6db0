"""One window, end to end: load -> timelines -> spans on threads -> domain (failures) ->
decomposition -> causes (following waits level by level where a failure happened) -> root
causes -> graph.

``analyze_window`` is a plain function of its inputs; ``run_window`` also publishes the
graph snapshot. The Ray driver runs ``run_window`` as a task per window and writes the
returned causal edges to the lake in one place (``write_edges``), so concurrent windows
never race on the ``causal_edges`` table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from kprobe import lake
from kprobe.compute import assemble, causes, decompose, domain, rootcause, spanmap, timeline
from kprobe.compute.domain import Rules
from kprobe.compute.graph import store
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import scalar_row, sql_list
from kprobe.compute.window import Window, load
from kprobe.compute.window_lock import edges_lock, window_lock


@dataclass
class WindowOutput:
    """What a window's analysis returns to the driver (small: no graph tables)."""

    window: Window
    edges: pa.Table  # rows for the lake's causal_edges
    summary: dict[str, Any] = field(default_factory=dict)
    graph_uri: str | None = None


@dataclass
class WindowAnalysis:
    window: Window
    tables: dict[str, pa.Table]  # graph node tables and "rels"
    edges: pa.Table
    summary: dict[str, Any]


def analyze_window(location: lake.LakeLocation, window: Window, settings: ComputeSettings,
                   rules: Rules | None = None) -> WindowAnalysis:
    """Analyse one window (reads the lake, writes nothing)."""
    rules = rules or domain.load_rules(settings.rules_path)
    started = time.perf_counter()
    loaded = load(location, window, settings)
    con = loaded.con
    try:
        timeline.names(con)
        spanmap.build(con, settings)
        causes.create_tables(con)
        decompose.create_tables(con)
        causes.remote.implicit_servers(con, settings)
        timeline.relevant(con, settings)
        timelines = timeline.build(con, loaded.range_end_ns, settings)
        causes.prepare(con, settings, loaded.range_end_ns)
        # failures are known before the causes: waits are followed only where one happened
        domain.build(con, rules, loaded.range_start_ns, loaded.range_end_ns)
        for level in range(settings.max_chain_depth + 1):
            pending = scalar_row(con, f"SELECT count(*) FROM spans_all WHERE level = {level}")
            if not pending[0]:
                break
            decompose.build(con, settings, level, timelines.threads)
            causes.attribute(con, settings, level, timelines)
        rootcause.build(con, settings)
        causes.remote.sent_to(con)
        assemble.structural_rels(con)
        tables = assemble.graph_tables(con, rules)
        edges = assemble.causal_edge_rows(con, window)
        summary = _summary(con, window, loaded.owned_spans)
    finally:
        con.close()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return WindowAnalysis(window, tables, edges, summary)


def run_window(location: lake.LakeLocation, window: Window, settings: ComputeSettings,
               rules: Rules | None = None, publish_graph: bool = True) -> WindowOutput:
    """Analyse one window and publish its graph snapshot (the unit of work of a Ray task).

    Holds the window's lock (compute/window_lock.py) throughout: two analyses of one window
    never run at once, whoever started them. The snapshot's manifest records how many spans
    the window owned (``inputs``), so a reader can tell when rows arrived after it."""
    with window_lock(location, window, settings):
        return _analyse_and_publish(location, window, settings, rules, publish_graph)


def run_window_if(location: lake.LakeLocation, window: Window, settings: ComputeSettings,
                  proceed: Callable[[], bool], rules: Rules | None = None
                  ) -> WindowOutput | None:
    """``run_window`` if ``proceed()``, asked once the window's lock is held, says so (False:
    an analysis another process finished while this one waited for the lock already
    answers; nothing is analysed, None returned). Asked under the lock, so two callers that
    raced to one window (each saw it unanalysed, neither saw the other's lock yet) analyse
    it once, not once each in turn."""
    with window_lock(location, window, settings):
        if not proceed():
            return None
        return _analyse_and_publish(location, window, settings, rules, True)


def _analyse_and_publish(location: lake.LakeLocation, window: Window,
                         settings: ComputeSettings, rules: Rules | None, publish_graph: bool
                         ) -> WindowOutput:
    analysis = analyze_window(location, window, settings, rules)
    inputs = {"owned_spans": int(analysis.summary.get("owned_spans", 0))}
    uri = (store.publish(location, window, analysis.tables, settings, inputs=inputs)
           if publish_graph else None)
    return WindowOutput(window, analysis.edges, analysis.summary, uri)


def write_edges(location: lake.LakeLocation, outputs: list[WindowOutput],
                settings: ComputeSettings | None = None) -> int:
    """Replace the causal_edges rows of these windows with the new ones; returns rows written.

    Re-analysing a window (new rules, late data) must not duplicate its edges: its old rows
    are deleted first (Delta delete), then the new rows appended, one commit per node label,
    under the lake's edges lock (two processes replacing one window's rows at once would
    leave both sets).
    """
    if not outputs:
        return 0
    with edges_lock(location, settings):
        return _replace_edges(location, outputs)


def _replace_edges(location: lake.LakeLocation, outputs: list[WindowOutput]) -> int:
    ids = [o.window.id for o in outputs]
    lake.delete_where(location, "causal_edges", f"window IN {sql_list(ids)}")
    written = 0
    by_label: dict[str, list[pa.Table]] = {}
    for output in outputs:
        by_label.setdefault(output.window.node_label, []).append(output.edges)
    for label, parts in by_label.items():
        rows = pa.concat_tables(parts)
        writer = lake.LakeWriter(location, node=label)
        writer.ensure_tables(["causal_edges"])
        if rows.num_rows:
            writer.append("causal_edges", rows)
            written += rows.num_rows
    return written


def _summary(con: Any, window: Window, owned: int) -> dict[str, Any]:
    row = scalar_row(con, """
        SELECT (SELECT count(*) FROM spans_all WHERE origin = 'otel'),
               (SELECT count(*) FROM spans_all WHERE origin <> 'otel'),
               (SELECT count(*) FROM spans_all WHERE tid IS NOT NULL AND origin = 'otel'),
               (SELECT count(*) FROM span_domain d JOIN spans_all s USING (span_key)
                WHERE d.failed AND s.owned),
               (SELECT count(*) FROM rels WHERE rel = 'DELAYED_BY'),
               (SELECT count(DISTINCT dst) FROM rels WHERE dst_label = 'KernelEpisode'),
               (SELECT count(*) FROM root_causes WHERE rank = 1),
               (SELECT count(*) FROM span_domain WHERE concept IS NOT NULL)
    """)
    keys = ("spans", "synthetic_spans", "spans_on_threads", "failures", "cause_edges",
            "episodes", "root_causes", "domain_events")
    return {"window": window.id, "owned_spans": owned, **dict(zip(keys, row or ()))}
