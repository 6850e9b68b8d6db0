// The console's render bench (tests/bench/bench_console.py): the real CausalGraph and
// TimelineChart on synthetic data, timed from the start of the render to the first frame
// painted (the graph: layout, commit, next animation frame; the timeline: model built,
// chart initialised, ECharts' "finished"). Results land in window.__bench.
import type { ECharts } from "echarts/core";
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { MemoryRouter } from "react-router-dom";
import type { TraceGraph } from "../src/api/types";
import { CausalGraph } from "../src/components/CausalGraph";
import { TimelineChart } from "../src/components/TimelineChart";
import type { Marks } from "../src/lib/graphModel";
import { syntheticModel } from "../src/lib/timelineModel";
import "../src/styles.css";

declare global {
  interface Window {
    __bench: Record<string, number | string>;
  }
}
window.__bench = {};
const params = new URLSearchParams(window.location.search);
const which = params.get("what") ?? "graph";
const size = Number(params.get("n") ?? (which === "graph" ? 500 : 100000));

function syntheticGraph(n: number): TraceGraph {
  const colours = ["#9e9e9e", "#2e7d32", "#f9a825", "#ef6c00", "#c62828"];
  const nodes: TraceGraph["nodes"] = [];
  const links: TraceGraph["links"] = [];
  const spans = Math.floor(n * 0.4);
  const episodes = Math.floor(n * 0.2);
  for (let i = 0; i < n; i += 1) {
    const group = i < spans ? "span" : i < spans + episodes ? "kernel_episode" : "thread";
    const delay = (i * 7919) % 900_000_000;
    nodes.push({ id: `n${i}`, group, label: `${group} ${i}`, delay_ns: delay, colour: colours[i % 5], start_ns: 1e18 + i * 1e6,
      dur_ns: 1e6, pid: group === "thread" ? 1000 + i : undefined, tid: group === "thread" ? 1000 + i : undefined,
      kind: group === "kernel_episode" ? "memory_pressure" : undefined, subkind: group === "kernel_episode" ? "memcg_reclaim" : undefined });
    if (i > 0 && i < spans) links.push({ source: `n${i}`, target: `n${Math.floor((i - 1) / 3)}`, rel: "CHILD_OF", kind: null, delay_ns: null, colour: "#9e9e9e" });
    if (i >= spans && i < spans + episodes) links.push({ source: `n${i % spans}`, target: `n${i}`, rel: "DELAYED_BY", kind: "memory_pressure", delay_ns: delay, colour: colours[i % 5] });
    if (i >= spans + episodes) links.push({ source: `n${spans + (i % episodes)}`, target: `n${i}`, rel: "CAUSED_BY", kind: "memory_driver", delay_ns: delay, colour: colours[i % 5] });
  }
  return { trace_id: "bench", window: "bench", nodes, links, legend: [] };
}

function GraphBench({ started }: { started: number }) {
  const [graph] = useState(() => syntheticGraph(size));
  const marks: Marks = { rootCause: `n${Math.floor(size * 0.4)}`, drivers: new Set([`n${size - 1}`]), critical: new Set(["n0"]) };
  useEffect(() => {
    requestAnimationFrame(() => requestAnimationFrame(() => {
      window.__bench.graph_ms = performance.now() - started;
      window.__bench.graph_nodes = document.querySelectorAll("[data-node-id]").length;
      window.__bench.done = "graph";
    }));
  }, [started]);
  return <CausalGraph graph={graph} marks={marks} selected={null} onSelect={() => undefined} />;
}

let chartRef: ECharts | null = null;

function TimelineBench({ started }: { started: number }) {
  const [model] = useState(() => {
    const t0 = performance.now();
    const built = syntheticModel(size, 24, 1_000_000_000);
    window.__bench.timeline_model_ms = performance.now() - t0;
    return built;
  });
  return (
    <TimelineChart model={model} title="bench" onChart={(chart) => (chartRef = chart)} onFirstRender={() => {
      requestAnimationFrame(async () => {
        window.__bench.timeline_ms = performance.now() - started;
        window.__bench.timeline_events = model.count;
        // interactive: zoom in 4 times (x4 each, to 1/256 of the range), then out again;
        // each step timed until ECharts has finished drawing it
        const zooms: number[] = [];
        for (const [a, b] of [[0.3, 0.55], [0.35, 0.4], [0.36, 0.37], [0.362, 0.363], [0, 1]]) {
          const t0 = performance.now();
          await new Promise<void>((resolve) => {
            chartRef?.on("finished", function done() {
              chartRef?.off("finished", done);
              resolve();
            });
            chartRef?.dispatchAction({ type: "dataZoom", start: a * 100, end: b * 100 });
          });
          zooms.push(performance.now() - t0);
        }
        window.__bench.zoom_ms_max = Math.max(...zooms);
        window.__bench.zoom_ms = zooms.map((z) => z.toFixed(0)).join(" ");
        window.__bench.done = "timeline";
      });
    }} />
  );
}

const started = performance.now();
createRoot(document.getElementById("root") as HTMLElement).render(
  <StrictMode>
    <MemoryRouter>
      {which === "graph" ? <GraphBench started={started} /> : <TimelineBench started={started} />}
    </MemoryRouter>
  </StrictMode>,
);
