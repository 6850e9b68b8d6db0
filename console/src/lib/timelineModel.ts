// Timeline data on one nanosecond axis (offsets from the window's start): lanes, and every
// interval or instant as columns of typed arrays, so 100k events cost a few megabytes and
// one pass. `visibleItems` is the level of detail drawn: per lane, events closer than a
// pixel that share a category are merged (with a count), so what the chart draws is
// bounded by lanes x pixels whatever the zoom, and zooming in brings the events back.
import type { GraphNode, Timeline, TimelineSection } from "../api/types";
import { fmtDuration } from "./format";

export const CATEGORIES = [
  { name: "running", colour: "#2e7d32" },
  { name: "runnable (waiting for a CPU)", colour: "#f9a825" },
  { name: "blocked", colour: "#90a4ae" },
  { name: "unknown", colour: "#cfd8dc" },
  { name: "syscall", colour: "#7e57c2" },
  { name: "memory reclaim", colour: "#c62828" },
  { name: "other memory event", colour: "#f06292" },
  { name: "disk I/O", colour: "#8d6e63" },
  { name: "network", colour: "#00838f" },
  { name: "span", colour: "#1565c0" },
  { name: "failed span", colour: "#d84315" },
  { name: "kernel episode", colour: "#b71c1c" },
] as const;
export const CAT = {
  running: 0, runnable: 1, blocked: 2, unknown: 3, syscall: 4, reclaim: 5, memory: 6, disk: 7,
  network: 8, span: 9, spanFailed: 10, episode: 11,
} as const;

export interface TimelineModel {
  lanes: string[];
  rangeNs: number;
  count: number;
  start: Float64Array;
  end: Float64Array;
  lane: Int32Array;
  cat: Uint8Array;
  label: string[];
  critical: Array<{ index: number; label: string }>;
  laneStart: Int32Array; // first item of each lane (items sorted by lane, then start)
}

export class ModelBuilder {
  lanes: string[] = [];
  private rows: Array<[number, number, number, number, string, boolean]> = [];

  lane(label: string): number {
    const found = this.lanes.indexOf(label);
    if (found >= 0) return found;
    this.lanes.push(label);
    return this.lanes.length - 1;
  }

  add(lane: number, start: number, end: number, cat: number, label: string, critical = false): void {
    this.rows.push([lane, start, Math.max(start, end), cat, label, critical]);
  }

  build(rangeNs: number): TimelineModel {
    const rows = this.rows.filter((r) => r[2] >= 0 && r[1] <= rangeNs);
    rows.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const n = rows.length;
    const model: TimelineModel = {
      lanes: this.lanes, rangeNs, count: n, start: new Float64Array(n), end: new Float64Array(n),
      lane: new Int32Array(n), cat: new Uint8Array(n), label: new Array<string>(n), critical: [],
      laneStart: new Int32Array(this.lanes.length + 1),
    };
    let lane = 0;
    for (let i = 0; i < n; i += 1) {
      const [l, s, e, c, text, critical] = rows[i];
      model.lane[i] = l;
      model.start[i] = Math.max(0, s);
      model.end[i] = Math.min(rangeNs, e);
      model.cat[i] = c;
      model.label[i] = text;
      if (critical) model.critical.push({ index: i, label: text });
      while (lane <= l) model.laneStart[lane++] = i;
    }
    while (lane <= this.lanes.length) model.laneStart[lane++] = n;
    return model;
  }
}

// [start, end, lane, category, first item index, merged count]
export type DrawnItem = [number, number, number, number, number, number];

export function visibleItems(model: TimelineModel, from: number, to: number, widthPx: number): DrawnItem[] {
  const nsPerPx = Math.max(1e-9, (to - from) / Math.max(1, widthPx));
  const out: DrawnItem[] = [];
  for (let lane = 0; lane < model.lanes.length; lane += 1) {
    let current: DrawnItem | null = null;
    let currentPx = -Infinity;
    for (let i = model.laneStart[lane]; i < model.laneStart[lane + 1]; i += 1) {
      const s = model.start[i];
      if (s > to) break;
      const e = model.end[i];
      if (e < from) continue;
      const c = model.cat[i];
      const px = Math.floor((s - from) / nsPerPx);
      if (current !== null && current[3] === c && px <= currentPx + 1) {
        if (e > current[1]) {
          current[1] = e;
          currentPx = Math.floor((e - from) / nsPerPx);
        }
        current[5] += 1;
        continue;
      }
      if (current !== null) out.push(current);
      current = [s, e, lane, c, i, 1];
      currentPx = Math.floor((e - from) / nsPerPx);
    }
    if (current !== null) out.push(current);
  }
  return out;
}

export interface LaneSummary {
  lane: string;
  events: number;
  busyNs: number;
}

export function laneSummaries(model: TimelineModel): LaneSummary[] {
  return model.lanes.map((lane, l) => {
    let busy = 0;
    for (let i = model.laneStart[l]; i < model.laneStart[l + 1]; i += 1) busy += model.end[i] - model.start[i];
    return { lane, events: model.laneStart[l + 1] - model.laneStart[l], busyNs: busy };
  });
}

// -- a transaction's timeline from the API's pieces ---------------------------------------
export interface ProcessTimeline {
  title: string; // "settlement-service PID 8712"
  timeline: Timeline;
}

function col(section: TimelineSection, name: string): number {
  return section.dimensions.indexOf(name);
}

function addSection(builder: ModelBuilder, title: string, name: string, section: TimelineSection): void {
  const data = section.data;
  if (!data.length) return;
  if (name === "threads") {
    const [t, s, e, st, re] = ["tid", "start", "end", "state", "reason"].map((d) => col(section, d));
    if (section.mode === "raw") {
      for (const row of data) {
        const state = String(row[st]);
        const cat = state === "running" ? CAT.running : state === "runnable" ? CAT.runnable : state === "blocked" ? CAT.blocked : CAT.unknown;
        const lane = builder.lane(`${title} · TID ${row[t]} state`);
        builder.add(lane, Number(row[s]), Number(row[e]), cat, `TID ${row[t]} ${state}${row[re] ? ` (${row[re]})` : ""}`);
      }
    } else {
      const width = section.bucket_ns ?? 0;
      const [ru, rq, bl] = ["running_ns", "runnable_ns", "blocked_ns"].map((d) => col(section, d));
      for (const row of data) {
        const parts = [Number(row[ru] ?? 0), Number(row[rq] ?? 0), Number(row[bl] ?? 0)];
        const top = parts.indexOf(Math.max(...parts));
        const lane = builder.lane(`${title} · TID ${row[t]} state`);
        builder.add(lane, Number(row[s]), Number(row[s]) + width, top, `TID ${row[t]}: running ${fmtDuration(parts[0])}, runnable ${fmtDuration(parts[1])}, blocked ${fmtDuration(parts[2])} in this bucket`);
      }
    }
    return;
  }
  const lane = builder.lane(`${title} · ${name}`);
  const s = col(section, "start");
  if (section.mode === "buckets") {
    const width = section.bucket_ns ?? 0;
    const c = col(section, "category");
    const n = col(section, "count");
    for (const row of data) {
      const category = String(row[c]);
      const cat = name === "memory" ? (category.includes("reclaim") ? CAT.reclaim : CAT.memory)
        : name === "syscalls" ? CAT.syscall : name === "disk" ? CAT.disk : name === "network" ? CAT.network : CAT.span;
      builder.add(lane, Number(row[s]), Number(row[s]) + width, cat, `${category} ×${row[n]} in this bucket`);
    }
    return;
  }
  const e = col(section, "end");
  const end = (row: unknown[]) => (e >= 0 ? Number(row[e]) : Number(row[s]));
  if (name === "syscalls") {
    const [nm, rt] = [col(section, "name"), col(section, "ret")];
    for (const row of data) builder.add(lane, Number(row[s]), end(row), CAT.syscall, `${row[nm]} = ${row[rt]} (${fmtDuration(end(row) - Number(row[s]))})`);
  } else if (name === "memory") {
    const [k, r] = [col(section, "kind"), col(section, "nr_reclaimed")];
    for (const row of data) {
      const kind = String(row[k]);
      const reclaim = kind.includes("reclaim");
      builder.add(lane, Number(row[s]), end(row), reclaim ? CAT.reclaim : CAT.memory,
        `${kind}${reclaim ? ` ${fmtDuration(end(row) - Number(row[s]))}, ${row[r]} pages reclaimed` : ""}`);
    }
  } else if (name === "disk") {
    const [rw, b] = [col(section, "rwbs"), col(section, "bytes")];
    for (const row of data) builder.add(lane, Number(row[s]), end(row), CAT.disk, `${row[rw]} ${row[b]} bytes (${fmtDuration(end(row) - Number(row[s]))})`);
  } else if (name === "network") {
    const [k, b, d] = [col(section, "kind"), col(section, "bytes"), col(section, "dport")];
    for (const row of data) builder.add(lane, Number(row[s]), end(row), CAT.network, `${row[k]}${row[b] !== null ? ` ${row[b]} bytes` : ""} port ${row[d]}`);
  }
}

export function transactionModel(
  baseNs: number, rangeNs: number, spans: GraphNode[], episodes: GraphNode[], processes: ProcessTimeline[],
  critical: Set<string>,
): TimelineModel {
  const builder = new ModelBuilder();
  for (const span of [...spans].sort((a, b) => (a.start_ns ?? 0) - (b.start_ns ?? 0))) {
    const service = span.service ?? "?";
    const lane = builder.lane(`span · ${service}: ${span.name ?? span.label}`);
    const start = (span.start_ns ?? baseNs) - baseNs;
    const label = `${service}: ${span.name ?? span.label} ${fmtDuration(span.dur_ns)}${span.failed ? ` (${span.failure_kind ?? "failed"})` : ""}`;
    builder.add(lane, start, start + (span.dur_ns ?? 0), span.failed ? CAT.spanFailed : CAT.span, label, critical.has(span.id));
  }
  for (const episode of episodes) {
    const lane = builder.lane("kernel episodes");
    const start = (episode.start_ns ?? baseNs) - baseNs;
    const what = `${(episode.kind ?? "kernel").replace(/_/g, " ")}${episode.subkind ? `: ${episode.subkind.replace(/_/g, " ")}` : ""}`;
    builder.add(lane, start, start + (episode.dur_ns ?? 0), CAT.episode, `${what} episode (${fmtDuration(episode.dur_ns)} in all)`, critical.has(episode.id));
  }
  for (const process of processes) {
    for (const name of ["threads", "syscalls", "memory", "disk", "network"]) {
      const section = process.timeline.sections[name];
      if (section) addSection(builder, process.title, name, section);
    }
  }
  return builder.build(rangeNs);
}

// A synthetic timeline (the bench, tests): `events` intervals over `lanes` lanes in `rangeNs`.
export function syntheticModel(events: number, lanes: number, rangeNs: number, seed = 1): TimelineModel {
  const builder = new ModelBuilder();
  let state = seed;
  const random = () => {
    state = (state * 1664525 + 1013904223) % 4294967296;
    return state / 4294967296;
  };
  for (let l = 0; l < lanes; l += 1) builder.lane(`lane ${l}`);
  for (let i = 0; i < events; i += 1) {
    const lane = i % lanes;
    const start = random() * rangeNs;
    const dur = random() * random() * rangeNs / 2000;
    builder.add(lane, start, start + dur, i % 9, `event ${i}`, i === 7);
  }
  return builder.build(rangeNs);
}
