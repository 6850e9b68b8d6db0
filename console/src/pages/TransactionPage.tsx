// `/transactions/<id>`: a transaction explained, business event to kernel event: the causal
// chain in words, the graph, the timeline, what is behind each node, and its replay.
import { useCallback, useMemo } from "react";
import { Link, useParams, useSearchParams } from "react-router-dom";
import { query } from "../api/client";
import type { Explanation, ExplainedTransaction, TraceGraph, TraceProcesses } from "../api/types";
import { useAuth } from "../auth";
import { CausalGraph } from "../components/CausalGraph";
import { DrillDown } from "../components/DrillDown";
import { Loading, ProblemMessage } from "../components/ProblemMessage";
import { ReplayPanel } from "../components/ReplayPanel";
import { TransactionTimeline } from "../components/TransactionTimeline";
import { fmtDuration, fmtInstant, nsParam } from "../lib/format";
import { CHAIN_LEGEND, chainLines } from "../lib/chain";
import { marksFor } from "../lib/graphModel";
import { useAsync } from "../lib/useAsync";

const HOUR_NS = 3_600_000_000_000;

function Explained({ explained }: { explained: ExplainedTransaction }) {
  const { call } = useAuth();
  const [search, setSearch] = useSearchParams();
  const selected = search.get("node");
  const select = useCallback((id: string) => {
    const next = new URLSearchParams(search);
    next.set("node", id);
    setSearch(next, { replace: true });
    window.setTimeout(() => document.getElementById("drill-title")?.focus(), 0);
  }, [search, setSearch]);
  const trace = explained.trace_id;
  const graph = useAsync((signal) => call<TraceGraph>(`/v1/traces/${encodeURIComponent(trace)}/graph`, { signal }), [trace, call]);
  const processes = useAsync((signal) => call<TraceProcesses>(`/v1/traces/${encodeURIComponent(trace)}/processes${query({
    from: nsParam(explained.start_ns, -HOUR_NS), to: nsParam(explained.start_ns, HOUR_NS),
  })}`, { signal }), [trace, call]);
  const marks = useMemo(() => (graph.state === "done" ? marksFor(graph.value, explained) : null), [graph, explained]);
  const root = explained.root_cause;
  return (
    <>
      <section className="panel summary" aria-labelledby="txn-title">
        <h2 id="txn-title">
          {explained.concept ?? "Transaction"} {explained.business_id ?? explained.txn_id ?? explained.trace_id}
          {explained.failed ? <span className="badge-failed"> failed</span> : <span className="badge-ok"> ok</span>}
        </h2>
        <p>
          {explained.service}: {explained.name}, started {fmtInstant(explained.start_ns)}, took {fmtDuration(explained.dur_ns)}.
          {explained.failure?.status_message ? ` “${explained.failure.status_message}”.` : ""}
        </p>
        {root ? (
          <p className="root-cause" data-testid="root-cause">
            Root cause: <strong>{root.name ?? root.kind.replace(/_/g, " ")}</strong>
            {root.delay_ns ? ` (${fmtDuration(root.delay_ns)})` : ""}
            {root.driver ? <> — {root.driver}</> : null}
          </p>
        ) : null}
        <p className="muted">Trace <code>{trace}</code>, analysed window {explained.window}.</p>
        <details open>
          <summary>The causal chain</summary>
          <p className="muted">{CHAIN_LEGEND}</p>
          <pre className="chain" data-testid="chain" tabIndex={0} aria-label="The causal chain as text">{chainLines(explained).join("\n")}</pre>
        </details>
      </section>
      <section className="panel" aria-labelledby="graph-title">
        <h2 id="graph-title">Causal graph</h2>
        {graph.state === "loading" ? <Loading what="the causal graph" /> : null}
        {graph.state === "failed" ? <ProblemMessage problem={graph.problem} context="Causal graph" /> : null}
        {graph.state === "done" && marks ? (
          <CausalGraph graph={graph.value} marks={marks} selected={selected} onSelect={select} />
        ) : null}
      </section>
      <section className="panel" aria-labelledby="drill-title" data-testid="drill-section">
        <h2 id="drill-title" tabIndex={-1}>Drill-down</h2>
        {!selected ? <p className="muted">Select a node of the graph (click it, or Tab to it and press Enter) to see the rows behind it.</p> : null}
        {selected && graph.state === "done" ? (
          <DrillDown nodeId={selected} graph={graph.value} explained={explained}
            processes={processes.state === "done" ? processes.value.processes : []} />
        ) : null}
      </section>
      <section className="panel" aria-labelledby="timeline-title">
        <h2 id="timeline-title">Timeline</h2>
        {graph.state === "done" && marks && processes.state === "done" ? (
          <TransactionTimeline graph={graph.value} processes={processes.value.processes} marks={marks} />
        ) : null}
        {processes.state === "failed" ? <ProblemMessage problem={processes.problem} context="Processes of the trace" /> : null}
        {graph.state === "loading" || processes.state === "loading" ? <Loading what="the timeline" /> : null}
      </section>
      <section className="panel" aria-labelledby="replay-title">
        <h2 id="replay-title">Replay</h2>
        {processes.state === "done" ? <ReplayPanel explained={explained} processes={processes.value.processes} /> : null}
        {processes.state === "loading" ? <Loading what="the recorded processes" /> : null}
      </section>
    </>
  );
}

export function TransactionPage() {
  const { id = "" } = useParams();
  const { call } = useAuth();
  const [search] = useSearchParams();
  const loaded = useAsync((signal) => call<Explanation>(`/v1/transactions/${encodeURIComponent(id)}/explain`, { signal }), [id, call]);
  if (loaded.state === "loading") return <Loading what={`the explanation of ${id}`} />;
  if (loaded.state === "failed") return <ProblemMessage problem={loaded.problem} context={`Transaction ${id}`} />;
  const found = loaded.value.transactions;
  if (!found.length) return <p role="alert">No transaction {id} in the analysed windows.</p>;
  const trace = search.get("trace");
  const chosen = found.find((t) => t.trace_id === trace) ?? found.find((t) => t.failed) ?? found[0];
  return (
    <>
      {found.length > 1 ? (
        <nav className="panel" aria-label="Transactions with this id">
          {found.length} transactions match {id}:{" "}
          {found.map((t) => (
            <Link key={t.trace_id} to={`/transactions/${encodeURIComponent(id)}?trace=${t.trace_id}`}
              aria-current={t === chosen ? "page" : undefined}>{t.trace_id.slice(0, 8)}{t.failed ? " (failed)" : ""} </Link>
          ))}
        </nav>
      ) : null}
      <Explained key={chosen.trace_id} explained={chosen} />
    </>
  );
}
