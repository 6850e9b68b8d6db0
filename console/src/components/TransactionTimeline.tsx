// The transaction's window on one axis: its spans, the kernel episodes that delayed it, and
// for every process that ran a span or drove a cause, its threads' states, syscalls,
// memory, disk and network events (GET /v1/timeline, one process each).
import { useMemo } from "react";
import { problemOf, query } from "../api/client";
import type { Problem, Timeline, TraceGraph, TraceProcess } from "../api/types";
import { useAuth } from "../auth";
import { nsParam } from "../lib/format";
import { displayLabel, type Marks } from "../lib/graphModel";
import { transactionModel, type ProcessTimeline } from "../lib/timelineModel";
import { useAsync } from "../lib/useAsync";
import { Loading, ProblemMessage } from "./ProblemMessage";
import { TimelineChart } from "./TimelineChart";
import { TimelineSummary } from "./TimelineSummary";

const MAX_PROCESSES = 8;

export function transactionWindow(graph: TraceGraph): { from: number; to: number } {
  const spans = graph.nodes.filter((n) => n.group === "span" && n.start_ns);
  const start = Math.min(...spans.map((n) => n.start_ns as number));
  const end = Math.max(...spans.map((n) => (n.start_ns as number) + (n.dur_ns ?? 0)));
  const pad = Math.max(1_000_000, (end - start) * 0.05);
  return { from: start - pad, to: end + pad };
}

interface Who {
  node: string | null;
  pid: number;
  title: string;
}

export function TransactionTimeline({ graph, processes, marks }: { graph: TraceGraph; processes: TraceProcess[]; marks: Marks }) {
  const { call } = useAuth();
  const win = useMemo(() => transactionWindow(graph), [graph]);
  const fromParam = nsParam(win.from);
  const base = Number(BigInt(fromParam)); // the API's offsets are from exactly this
  const range = win.to - win.from;
  const who = useMemo(() => {
    const list: Who[] = processes.map((p) => ({ node: p.node, pid: p.pid, title: `${p.services.join(", ")} PID ${p.pid}` }));
    for (const id of marks.drivers) {
      const node = graph.nodes.find((n) => n.id === id);
      if (node?.pid && !list.some((w) => w.pid === node.pid)) list.push({ node: id.split(":")[0] ?? null, pid: node.pid, title: displayLabel(node) });
    }
    return list.slice(0, MAX_PROCESSES);
  }, [processes, marks, graph]);

  const loaded = useAsync(async (signal) => {
    const answers = await Promise.allSettled(who.map((w) => call<Timeline>(`/v1/timeline${query({
      from: fromParam, to: nsParam(win.from, range), pid: w.pid, node: w.node, max_points: 2000,
    })}`, { signal })));
    const timelines: ProcessTimeline[] = [];
    const problems: Array<{ title: string; problem: Problem }> = [];
    answers.forEach((answer, i) => {
      if (answer.status === "fulfilled") timelines.push({ title: who[i].title, timeline: answer.value });
      else problems.push({ title: who[i].title, problem: problemOf(answer.reason) });
    });
    return { timelines, problems };
  }, [fromParam, range, who, call]);

  const model = useMemo(() => {
    if (loaded.state !== "done") return null;
    const spans = graph.nodes.filter((n) => n.group === "span");
    const episodes = graph.nodes.filter((n) => n.group === "kernel_episode");
    return transactionModel(base, range, spans, episodes, loaded.value.timelines, marks.critical);
  }, [loaded, graph, base, range, marks]);

  if (loaded.state === "loading") return <Loading what="the timeline" />;
  if (loaded.state === "failed") return <ProblemMessage problem={loaded.problem} context="Timeline" />;
  return (
    <>
      {loaded.value.problems.map((p) => <ProblemMessage key={p.title} problem={p.problem} context={`Timeline of ${p.title}`} />)}
      {model ? (
        <>
          <TimelineChart model={model} title="Timeline of the transaction" />
          <TimelineSummary model={model} />
        </>
      ) : null}
    </>
  );
}
