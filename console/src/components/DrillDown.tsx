// What is behind a node of the graph, read from the lake with SQL shown next to the rows:
// a kernel episode's rows (the reclaim calls in the delayed span), the stacks and wakers of
// the delayed thread's off-CPU time, the cgroup, and the culprits' command lines; a span's
// row and time split; a process's exec and memory activity.
import type { ExplainedTransaction, GraphLink, GraphNode, TraceGraph, TraceProcess } from "../api/types";
import { fmtBytes, fmtDuration, fmtInstant, sqlString } from "../lib/format";
import { displayLabel } from "../lib/graphModel";
import { SqlTable } from "./SqlTable";

interface Props {
  nodeId: string;
  graph: TraceGraph;
  explained: ExplainedTransaction | null;
  processes: TraceProcess[];
}

const PAD_NS = 1_000; // absolute times in the browser are good to 256 ns

function int(n: number): string {
  return BigInt(Math.round(n)).toString();
}

function nodeName(id: string): string {
  return id.split(":")[0] ?? "";
}

function spanRange(node: GraphNode): [string, string] {
  const start = node.start_ns ?? 0;
  return [int(start - PAD_NS), int(start + (node.dur_ns ?? 0) + PAD_NS)];
}

function execSql(node: string, pids: number[]): string {
  return `SELECT ts_ns, pid, ppid, comm, exe, argv, cgroup, cgroup_id
FROM processes
WHERE node = ${sqlString(node)} AND pid IN (${pids.join(", ")}) AND kind = 'exec'
ORDER BY ts_ns`;
}

function EpisodeDrill({ node, graph, explained, processes }: { node: GraphNode } & Omit<Props, "nodeId">) {
  const step = explained?.steps.find((s) => s.target === node.id && s.episode);
  const episode = step?.episode;
  const where = episode?.node ?? nodeName(node.id.replace(/^[a-z]+:/, ""));
  const delayed: GraphLink[] = graph.links.filter((l) => l.target === node.id && l.rel === "DELAYED_BY");
  // the span the explanation shows the episode under, else one of a known process (a
  // holder span belongs to none): never whichever link the graph happened to list first
  const delayedId = step?.span
    ?? delayed.map((l) => l.source).find((id) => processes.some((p) => p.spans.includes(id)))
    ?? delayed[0]?.source;
  const delayedSpan = graph.nodes.find((n) => n.id === delayedId);
  const [from, to] = delayedSpan ? spanRange(delayedSpan) : [int((node.start_ns ?? 0) - PAD_NS), int((node.start_ns ?? 0) + (node.dur_ns ?? 0) + PAD_NS)];
  const culprits = graph.links.filter((l) => l.source === node.id && l.rel === "CAUSED_BY")
    .map((l) => graph.nodes.find((n) => n.id === l.target)).filter((n): n is GraphNode => !!n && !!n.pid);
  const culpritPids = [...new Set(culprits.map((n) => n.pid as number))];
  const delayedPid = processes.find((p) => delayedSpan && p.spans.includes(delayedSpan.id))?.pid;
  const memory = node.kind === "memory_pressure";
  const memcg = episode?.memcg;
  const rowsSql = memory
    ? `SELECT ts_ns, dur_ns, pid, tid, comm, kind, nr_reclaimed, memcg
FROM mem
WHERE node = ${sqlString(where)} AND kind LIKE '%reclaim'${memcg !== undefined && memcg !== null ? ` AND memcg = ${memcg}` : ""}
  AND ts_ns >= ${from} AND ts_ns < ${to}${delayedPid ? `\n  AND pid = ${delayedPid}` : ""}
ORDER BY ts_ns`
    : `SELECT ts_ns, dur_ns, pid, tid, comm, state, wait_reason, waker_pid, waker_tid, waker_comm
FROM offcpu
WHERE node = ${sqlString(where)} AND ts_ns >= ${from} AND ts_ns < ${to}${delayedPid ? ` AND pid = ${delayedPid}` : ""}
ORDER BY dur_ns DESC`;
  const stackSql = delayedPid ? `SELECT o.ts_ns, o.dur_ns, o.tid, o.wait_reason, o.waker_pid, o.waker_tid, o.waker_comm, k.frames
FROM offcpu o
LEFT JOIN (SELECT node, stack_id, any_value(frames) AS frames FROM kstacks GROUP BY ALL) k
  ON k.node = o.node AND k.stack_id = o.kstack_id
WHERE o.node = ${sqlString(where)} AND o.pid = ${delayedPid} AND o.ts_ns >= ${from} AND o.ts_ns < ${to}
ORDER BY k.frames IS NULL, o.dur_ns DESC` : null;
  return (
    <>
      <dl className="facts">
        <dt>Episode</dt><dd>{displayLabel(node)} from {fmtInstant(node.start_ns)}, {fmtDuration(node.dur_ns)} in all</dd>
        <dt>Delay it caused here</dt><dd>{fmtDuration(node.delay_ns)}{delayedSpan ? ` to ${delayedSpan.label}` : ""}</dd>
        {memcg !== undefined && memcg !== null ? (<><dt>Memory cgroup</dt><dd>id {memcg}{culprits[0]?.cgroup ? ` (${culprits[0].cgroup})` : ""}</dd></>) : null}
        {step?.driver ? (<><dt>Driven by</dt><dd>{step.driver.role ?? step.driver.comm} PID {step.driver.pid}{step.driver.bytes ? `, allocating ${fmtBytes(step.driver.bytes)}` : ""}</dd></>) : null}
      </dl>
      <SqlTable caption={memory ? "Reclaim rows in the delayed span" : "Off-CPU rows in the delayed span"} sql={rowsSql} maxRows={500} />
      {stackSql ? <SqlTable caption="Longest waits of the delayed process: kernel stacks and wakers" sql={stackSql} maxRows={10} /> : null}
      {culpritPids.length ? <SqlTable caption="Culprits: command lines and cgroups" sql={execSql(where, culpritPids)} /> : null}
    </>
  );
}

function SpanDrill({ node, graph }: { node: GraphNode; graph: TraceGraph }) {
  const [trace, span] = node.id.split(":");
  const causes = graph.links.filter((l) => l.source === node.id && l.rel !== "CHILD_OF");
  return (
    <>
      <dl className="facts">
        <dt>Span</dt><dd>{node.label}{node.business_id ? ` (${node.business_id})` : ""}</dd>
        <dt>Started</dt><dd>{fmtInstant(node.start_ns)}</dd>
        <dt>Lasted</dt><dd>{fmtDuration(node.dur_ns)}{node.failed ? ` — failed (${node.failure_kind ?? "error"})` : ""}</dd>
        <dt>Time split</dt><dd>on CPU {fmtDuration(node.on_cpu_ns)}, waiting for a CPU {fmtDuration(node.runqueue_ns)}, blocked {fmtDuration(node.blocked_ns)}</dd>
      </dl>
      {causes.length ? (
        <ul aria-label="What delayed it">
          {causes.sort((a, b) => (b.delay_ns ?? 0) - (a.delay_ns ?? 0)).map((l, i) => {
            const target = graph.nodes.find((n) => n.id === l.target);
            return <li key={i}>{l.rel.toLowerCase().replace("_", " ")} {target ? displayLabel(target) : l.target}: {(l.kind ?? "").replace(/_/g, " ")} {fmtDuration(l.delay_ns)}</li>;
          })}
        </ul>
      ) : null}
      <SqlTable caption="The span's row" sql={`SELECT service, name, kind, start_ns, dur_ns, status, status_message, pid, tid, node
FROM spans
WHERE trace_id = ${sqlString(trace ?? "")} AND span_id = ${sqlString(span ?? "")}`} />
    </>
  );
}

function ProcessDrill({ node, graph }: { node: GraphNode; graph: TraceGraph }) {
  const where = nodeName(node.id);
  const pid = node.pid as number;
  const spans = graph.nodes.filter((n) => n.group === "span" && n.start_ns);
  const from = int(Math.min(...spans.map((n) => n.start_ns as number)) - PAD_NS);
  const to = int(Math.max(...spans.map((n) => (n.start_ns as number) + (n.dur_ns ?? 0))) + PAD_NS);
  return (
    <>
      <dl className="facts">
        <dt>Process</dt><dd>{displayLabel(node)}</dd>
        <dt>Delay it caused</dt><dd>{fmtDuration(node.delay_ns)}</dd>
      </dl>
      <SqlTable caption="Its command line and cgroup" sql={execSql(where, [pid])} />
      <SqlTable caption="Its memory activity during the transaction" sql={`SELECT kind, count(*) AS events, sum(count) AS pages, sum(dur_ns) AS dur_ns, sum(nr_reclaimed) AS reclaimed
FROM mem
WHERE node = ${sqlString(where)} AND pid = ${pid} AND ts_ns >= ${from} AND ts_ns < ${to}
GROUP BY kind ORDER BY events DESC`} />
    </>
  );
}

export function DrillDown({ nodeId, graph, explained, processes }: Props) {
  const node = graph.nodes.find((n) => n.id === nodeId);
  if (!node) return <p>No node {nodeId} in this graph.</p>;
  return (
    <div className="drill" data-testid="drill-down">
      <h3>{displayLabel(node)}</h3>
      {node.group === "kernel_episode" ? <EpisodeDrill node={node} graph={graph} explained={explained} processes={processes} /> : null}
      {node.group === "span" ? <SpanDrill node={node} graph={graph} /> : null}
      {(node.group === "thread" || node.group === "process") && node.pid ? <ProcessDrill node={node} graph={graph} /> : null}
    </div>
  );
}
