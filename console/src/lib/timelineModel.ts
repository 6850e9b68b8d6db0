// Timeline data on one nanosecond axis (offsets from the window's start): lanes, and every
// interval or instant as columns of typed arrays, so 100k events cost a few megabytes and
// one pass. `visibleGroups` is what is drawn for a visible range: per lane and category,
// events closer than a pixel merged (with a count), so the drawing is bounded by lanes x
// pixels whatever the number of events, and zooming in brings the events back.
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
  private laneIndex = new Map<string, number>();
  private l: number[] = [];
  private s: number[] = [];
  private e: number[] = [];
  private c: number[] = [];
  private text: string[] = [];
  private crit: number[] = [];

  lane(label: string): number {
    let found = this.laneIndex.get(label);
    if (found === undefined) {
      found = this.lanes.length;
      this.lanes.push(label);
      this.laneIndex.set(label, found);
    }
    return found;
  }

  add(lane: number, start: number, end: number, cat: number, label: string, critical = false): void {
    if (critical) this.crit.push(this.l.length);
    this.l.push(lane);
    this.s.push(start);
    this.e.push(Math.max(start, end));
    this.c.push(cat);
    this.text.push(label);
  }

  build(rangeNs: number): TimelineModel {
    // counting sort by lane, then each lane by start (typed arrays: 100k rows in a few ms)
    const total = this.l.length;
    const lanes = this.lanes.length;
    const laneStart = new Int32Array(lanes + 1);
    for (let i = 0; i < total; i += 1) laneStart[this.l[i] + 1] += 1;
    for (let l = 0; l < lanes; l += 1) laneStart[l + 1] += laneStart[l];
    const order = new Uint32Array(total);
    const fill = laneStart.slice(0, lanes);
    for (let i = 0; i < total; i += 1) order[fill[this.l[i]]++] = i;
    const starts = Float64Array.from(this.s);
    for (let l = 0; l < lanes; l += 1) {
      order.subarray(laneStart[l], laneStart[l + 1]).sort((a, b) => starts[a] - starts[b]);
    }
    const model: TimelineModel = {
      lanes: this.lanes, rangeNs, count: total, start: new Float64Array(total), end: new Float64Array(total),
      lane: new Int32Array(total), cat: new Uint8Array(total), label: new Array<string>(total), critical: [],
      laneStart,
    };
    const position = new Int32Array(total);
    for (let k = 0; k < total; k += 1) {
      const i = order[k];
      position[i] = k;
      model.lane[k] = this.l[i];
      model.start[k] = Math.max(0, Math.min(rangeNs, starts[i]));
      model.end[k] = Math.max(0, Math.min(rangeNs, this.e[i]));
      model.cat[k] = this.c[i];
      model.label[k] = this.text[i];
    }
    model.critical = this.crit.map((i) => ({ index: position[i], label: this.text[i] }));
    return model;
  }
}

// What the chart draws for a visible range: per lane and category, the rectangles (value
// space), events closer than a pixel merged into one (sampling by pixel: at most about
// lanes x width rectangles whatever the number of events).
export interface DrawnGroup {
  lane: number;
  cat: number;
  starts: Float64Array;
  ends: Float64Array;
  counts: Int32Array;
  n: number;
}

export function visibleGroups(model: TimelineModel, from: number, to: number, widthPx: number): DrawnGroup[] {
  const nsPerPx = Math.max(1e-9, (to - from) / Math.max(1, widthPx));
  const groups: DrawnGroup[] = [];
  for (let lane = 0; lane < model.lanes.length; lane += 1) {
    const lo = model.laneStart[lane];
    const hi = model.laneStart[lane + 1];
    if (lo === hi) continue;
    const byCat = new Map<number, DrawnGroup>();
    const lastPx = new Map<number, number>();
    for (let i = lo; i < hi; i += 1) {
      const s = model.start[i];
      if (s > to) break;
      const e = model.end[i];
      if (e < from) continue;
      const c = model.cat[i];
      let group = byCat.get(c);
      if (!group) {
        const size = Math.min(hi - i, Math.ceil(widthPx) * 2 + 16);
        group = { lane, cat: c, starts: new Float64Array(size), ends: new Float64Array(size), counts: new Int32Array(size), n: 0 };
        byCat.set(c, group);
      }
      const px = Math.floor((s - from) / nsPerPx);
      const n = group.n;
      if (n > 0 && px <= (lastPx.get(c) ?? -Infinity) + 1) {
        if (e > group.ends[n - 1]) {
          group.ends[n - 1] = e;
          lastPx.set(c, Math.floor((e - from) / nsPerPx));
        }
        group.counts[n - 1] += 1;
        continue;
      }
      if (n === group.starts.length) {
        const grow = (a: Float64Array) => { const b = new Float64Array(n * 2); b.set(a); return b; };
        group.starts = grow(group.starts);
        group.ends = grow(group.ends);
        const counts = new Int32Array(n * 2);
        counts.set(group.counts);
        group.counts = counts;
      }
      group.starts[n] = s;
      group.ends[n] = e;
      group.counts[n] = 1;
      group.n = n + 1;
      lastPx.set(c, Math.floor((e - from) / nsPerPx));
    }
    groups.push(...byCat.values());
  }
  return groups;
}

// The event under a point of a lane (within `slackNs`), or -1.
export function eventAt(model: TimelineModel, lane: number, at: number, slackNs: number): number {
  if (lane < 0 || lane >= model.lanes.length) return -1;
  let lo = model.laneStart[lane];
  let hi = model.laneStart[lane + 1];
  const first = lo;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (model.start[mid] <= at + slackNs) lo = mid + 1;
    else hi = mid;
  }
  let best = -1;
  for (let i = lo - 1, seen = 0; i >= first && seen < 200; i -= 1, seen += 1) {
    if (model.end[i] >= at - slackNs && (best < 0 || model.end[i] - model.start[i] < model.end[best] - model.start[best])) best = i;
  }
  return best;
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
