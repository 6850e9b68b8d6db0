// The causal graph laid out for drawing: the chain reads left to right (the business
// operation's spans by depth, then the kernel episodes, then the processes that drove
// them), positions from a d3-force simulation run to rest before the first paint.
import { forceCollide, forceLink, forceManyBody, forceSimulation, forceX, forceY, type SimulationNodeDatum } from "d3-force";
import type { ExplainedTransaction, GraphLink, GraphNode, TraceGraph } from "../api/types";
import { fmtDuration } from "./format";

export interface Marks {
  rootCause: string | null;
  drivers: Set<string>;
  critical: Set<string>;
}

export interface LaidNode extends SimulationNodeDatum {
  node: GraphNode;
  id: string;
  x: number;
  y: number;
  column: number;
  radius: number;
  display: string;
  badges: string[];
  critical: boolean;
  home: number; // the row it starts in; the layout keeps it near
}

export interface LaidLink {
  link: GraphLink;
  source: LaidNode;
  target: LaidNode;
  width: number;
  critical: boolean;
}

export interface GraphView {
  nodes: LaidNode[];
  links: LaidLink[];
  minX: number;
  minY: number;
  width: number;
  height: number;
}

const COLUMN_WIDTH = 300;
const ROW_HEIGHT = 44;

// "batch job PID 8861" for a process's main thread; episodes by what they were.
export function displayLabel(node: GraphNode): string {
  if (node.group === "thread" && node.pid !== undefined && node.pid !== null) {
    const who = node.label.replace(/\s+TID\s+\d+$/, "");
    return node.pid === node.tid ? `${who} PID ${node.pid}` : `${who} TID ${node.tid} (PID ${node.pid})`;
  }
  if (node.group === "kernel_episode") {
    const kind = (node.kind ?? "kernel").replace(/_/g, " ");
    const sub = node.subkind ? `: ${node.subkind.replace(/_/g, " ")}` : "";
    return `${kind}${sub}`;
  }
  return node.label;
}

export function delayWidth(delayNs: number | null | undefined): number {
  if (!delayNs || delayNs <= 0) return 1;
  const scaled = Math.log10(delayNs / 100_000) / 4; // 0.1 ms -> 0, 1 s -> 1
  return 1 + 6 * Math.min(1, Math.max(0, scaled));
}

// Root cause, its drivers and the chain of spans from the transaction down to it.
export function marksFor(graph: TraceGraph, explained: ExplainedTransaction | null): Marks {
  const rootCause = explained?.root_cause?.target ?? null;
  const drivers = new Set<string>();
  const critical = new Set<string>();
  const parent = new Map<string, string>();
  for (const link of graph.links) if (link.rel === "CHILD_OF") parent.set(link.source, link.target);
  if (explained) {
    for (const step of explained.steps) {
      if (step.target === rootCause && step.driver?.process) drivers.add(step.driver.process);
    }
  }
  if (rootCause) {
    for (const link of graph.links) {
      if (link.source === rootCause && link.rel === "CAUSED_BY" && (link.rank ?? 1) === 1) drivers.add(link.target);
    }
    critical.add(rootCause);
    drivers.forEach((d) => critical.add(d));
  }
  // the spans down to the root cause: the one it came through, and those it delayed
  // directly, each with its ancestors up to the transaction
  const starts = new Set<string>();
  const via = explained?.root_cause?.via_span;
  if (via) starts.add(via);
  if (rootCause) {
    for (const link of graph.links) {
      if (link.target === rootCause && link.rel === "DELAYED_BY") starts.add(link.source);
    }
  }
  if (!starts.size && explained) {
    const failed = [...graph.nodes].filter((n) => n.group === "span" && n.failed).sort((a, b) => (b.start_ns ?? 0) - (a.start_ns ?? 0))[0];
    if (failed) starts.add(failed.id);
  }
  const seen = new Set<string>();
  for (const start of starts) {
    let span: string | null = start;
    while (span && !seen.has(span)) {
      seen.add(span);
      critical.add(span);
      span = parent.get(span) ?? null;
    }
  }
  return { rootCause, drivers, critical };
}

function depths(graph: TraceGraph): Map<string, number> {
  const parent = new Map<string, string>();
  for (const link of graph.links) if (link.rel === "CHILD_OF") parent.set(link.source, link.target);
  const depth = new Map<string, number>();
  const of = (id: string, guard: number): number => {
    const known = depth.get(id);
    if (known !== undefined) return known;
    const up = parent.get(id);
    const value = up && guard < 1000 ? of(up, guard + 1) + 1 : 0;
    depth.set(id, value);
    return value;
  };
  for (const node of graph.nodes) if (node.group === "span") of(node.id, 0);
  return depth;
}

export function layoutGraph(graph: TraceGraph, marks: Marks, ticks = 220): GraphView {
  const spanDepth = depths(graph);
  let maxDepth = 0;
  spanDepth.forEach((d) => (maxDepth = Math.max(maxDepth, d)));
  const columnOf = (node: GraphNode): number => {
    if (node.group === "span") return spanDepth.get(node.id) ?? 0;
    if (node.group === "kernel_episode") return maxDepth + 1;
    return maxDepth + 2;
  };
  // rows within a column: spans in time order, the rest by the delay they carry
  const ordered = [...graph.nodes].sort((a, b) => columnOf(a) - columnOf(b) ||
    (a.group === "span" && b.group === "span" ? (a.start_ns ?? 0) - (b.start_ns ?? 0) : (b.delay_ns ?? 0) - (a.delay_ns ?? 0)));
  const perColumn = new Map<number, number>();
  const rowOf = new Map<string, number>();
  for (const node of ordered) {
    const column = columnOf(node);
    const row = perColumn.get(column) ?? 0;
    perColumn.set(column, row + 1);
    rowOf.set(node.id, row);
  }
  const laid: LaidNode[] = graph.nodes.map((node) => {
    const column = columnOf(node);
    const row = (rowOf.get(node.id) ?? 0) - ((perColumn.get(column) ?? 1) - 1) / 2;
    const badges: string[] = [];
    if (node.id === marks.rootCause) badges.push("root cause");
    if (marks.drivers.has(node.id)) badges.push("driver");
    if (node.failed) badges.push(node.failure_kind ?? "failed");
    const radius = node.group === "span" ? 11 : node.group === "kernel_episode" ? 13 : 9;
    return {
      node, id: node.id, column, radius, badges, critical: marks.critical.has(node.id),
      display: displayLabel(node), x: column * COLUMN_WIDTH, y: row * ROW_HEIGHT, home: row * ROW_HEIGHT,
    };
  });
  const byId = new Map(laid.map((n) => [n.id, n]));
  const links: LaidLink[] = [];
  for (const link of graph.links) {
    const source = byId.get(link.source);
    const target = byId.get(link.target);
    if (!source || !target) continue;
    links.push({
      link, source, target, width: link.rel === "CHILD_OF" ? 1.2 : delayWidth(link.delay_ns),
      critical: marks.critical.has(link.source) && marks.critical.has(link.target) && link.rel !== "DELAYED_BY",
    });
  }
  const simulation = forceSimulation<LaidNode>(laid)
    .force("link", forceLink<LaidNode, { source: LaidNode; target: LaidNode }>(links.map((l) => ({ source: l.source, target: l.target }))).distance(70).strength(0.08))
    .force("charge", forceManyBody<LaidNode>().strength(-40).distanceMax(300))
    .force("x", forceX<LaidNode>((d) => d.column * COLUMN_WIDTH).strength(1))
    .force("y", forceY<LaidNode>((d) => d.home).strength(0.35))
    .force("collide", forceCollide<LaidNode>((d) => d.radius + 10))
    .stop();
  const n = Math.max(60, Math.min(ticks, Math.ceil(40000 / Math.max(1, laid.length))));
  for (let i = 0; i < n; i += 1) simulation.tick();
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (const node of laid) {
    minX = Math.min(minX, node.x - node.radius);
    maxX = Math.max(maxX, node.x + node.radius);
    minY = Math.min(minY, node.y - node.radius);
    maxY = Math.max(maxY, node.y + node.radius);
  }
  if (!laid.length) [minX, maxX, minY, maxY] = [0, 100, 0, 100];
  const margin = 40;
  return {
    nodes: laid, links, minX: minX - margin, minY: minY - margin - 20,
    width: maxX - minX + 2 * margin + 260, height: maxY - minY + 2 * margin + 30,
  };
}

// The text drawn next to a node (its label, then the delay it carries).
export function visibleText(node: LaidNode): string {
  return `${node.display}${node.node.delay_ns ? ` · ${fmtDuration(node.node.delay_ns)}` : ""}`;
}

export const SHOWN_BADGES = ["root cause", "driver"];

// The accessible name: the visible text first (as drawn: label, delay, badges), then what
// the drawing says by shape and colour.
export function describeNode(node: LaidNode): string {
  const shown = node.badges.filter((b) => SHOWN_BADGES.includes(b)).map((b) => b.toUpperCase());
  const parts = [[visibleText(node), ...shown].join(" ")];
  if (node.node.group === "span") parts.push("span");
  if (node.node.group === "kernel_episode") parts.push("kernel episode");
  if (node.node.group === "thread" || node.node.group === "process") parts.push("process");
  parts.push(...node.badges.filter((b) => !SHOWN_BADGES.includes(b)));
  if (node.critical) parts.push("on the critical path");
  return parts.join(", ");
}
