// The timeline (Apache ECharts): every lane on one nanosecond axis, zoomable down to a
// microsecond (wheel or drag, the slider, or the keyboard: arrows pan, + and - zoom, 0
// resets). For speed with 100k+ events, each lane's events of one category are drawn as
// ONE ECharts element (a custom shape filling all their rectangles in one canvas path),
// from the model's level of detail for the visible range (events under a pixel merged),
// recomputed on every zoom. The critical path is outlined; the event under the pointer is
// named below the chart.
import { CustomChart } from "echarts/charts";
import { DataZoomComponent, GridComponent } from "echarts/components";
import * as echarts from "echarts/core";
import { CanvasRenderer } from "echarts/renderers";
import type { CustomSeriesRenderItemAPI, CustomSeriesRenderItemParams, CustomSeriesRenderItemReturn } from "echarts";
import { useEffect, useMemo, useRef, useState, type KeyboardEvent } from "react";
import { fmtDuration, fmtOffset } from "../lib/format";
import { CATEGORIES, eventAt, visibleGroups, type DrawnGroup, type TimelineModel } from "../lib/timelineModel";

echarts.use([CustomChart, GridComponent, DataZoomComponent, CanvasRenderer]);

interface LaneRectsShape {
  rects: Float32Array | null; // x, y, width, height per rectangle
  n: number;
}

// one path of many rectangles: a single element per lane and category
const LaneRects = echarts.graphic.extendShape({
  type: "laneRects",
  shape: { rects: null, n: 0 } as LaneRectsShape,
  buildPath(ctx: CanvasRenderingContext2D, shape: LaneRectsShape) {
    const r = shape.rects;
    if (!r) return;
    for (let i = 0; i < shape.n; i += 1) ctx.rect(r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
  },
});
echarts.graphic.registerShape("laneRects", LaneRects);

interface Props {
  model: TimelineModel;
  title: string;
  onFirstRender?: (ms: number) => void;
  onChart?: (chart: echarts.ECharts) => void; // the bench drives zooms through it
}

const LANE_PX = 24;
const MIN_SPAN_NS = 1_000; // zoom stops at one microsecond across the chart
const GRID = { left: 240, right: 20, top: 10, bottom: 50 };

interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

export function TimelineChart({ model, title, onFirstRender, onChart }: Props) {
  const ref = useRef<HTMLDivElement | null>(null);
  const chartRef = useRef<echarts.ECharts | null>(null);
  const callbacks = useRef({ onFirstRender, onChart });
  callbacks.current = { onFirstRender, onChart };
  const windowRef = useRef<[number, number]>([0, model.rangeNs]);
  const [hover, setHover] = useState<string>("");
  const height = GRID.top + GRID.bottom + 10 + model.lanes.length * LANE_PX;
  const critical = useMemo(
    () => model.critical.map(({ index }) => [model.start[index], model.end[index], model.lane[index], index]),
    [model],
  );

  useEffect(() => {
    if (!ref.current) return;
    const started = performance.now();
    const chart = echarts.init(ref.current, undefined, { renderer: "canvas" });
    chartRef.current = chart;
    windowRef.current = [0, model.rangeNs];
    const plotWidth = () => Math.max(100, (ref.current?.clientWidth ?? 800) - GRID.left - GRID.right);
    let groups: DrawnGroup[] = visibleGroups(model, 0, model.rangeNs, plotWidth());
    const groupData = () => groups.map((g, i) => [g.lane, g.cat, i]);

    const renderGroup = (params: CustomSeriesRenderItemParams, api: CustomSeriesRenderItemAPI): CustomSeriesRenderItemReturn => {
      const group = groups[api.value(2) as number];
      if (!group) return null;
      const box = params.coordSys as unknown as Box;
      const [from, to] = windowRef.current;
      const scale = box.width / Math.max(1e-9, to - from);
      const laneY = api.coord([from, group.lane])[1];
      const h = (api.size?.([0, 1]) as number[])[1] * 0.62;
      const rects = new Float32Array(group.n * 4);
      let n = 0;
      for (let i = 0; i < group.n; i += 1) {
        const x0 = Math.max(box.x, box.x + (group.starts[i] - from) * scale);
        const x1 = Math.min(box.x + box.width, box.x + (group.ends[i] - from) * scale);
        if (x1 < box.x || x0 > box.x + box.width) continue;
        rects[4 * n] = x0;
        rects[4 * n + 1] = laneY - h / 2;
        rects[4 * n + 2] = Math.max(1, x1 - x0);
        rects[4 * n + 3] = h;
        n += 1;
      }
      return { type: "laneRects", shape: { rects, n }, style: { fill: CATEGORIES[group.cat]?.colour ?? "#999" }, silent: true } as unknown as CustomSeriesRenderItemReturn;
    };
    const renderCritical = (params: CustomSeriesRenderItemParams, api: CustomSeriesRenderItemAPI): CustomSeriesRenderItemReturn => {
      const lane = api.value(2) as number;
      const start = api.coord([api.value(0), lane]);
      const end = api.coord([api.value(1), lane]);
      const h = (api.size?.([0, 1]) as number[])[1] * 0.9;
      const box = params.coordSys as unknown as Box;
      const shape = echarts.graphic.clipRectByRect(
        { x: start[0] - 1, y: start[1] - h / 2, width: Math.max(3, end[0] - start[0] + 2), height: h },
        { x: box.x - 2, y: box.y, width: box.width + 4, height: box.height },
      );
      if (!shape) return null;
      return { type: "rect", shape, style: { fill: "none", stroke: "#111", lineWidth: 2, lineDash: [5, 3] }, silent: true };
    };

    let span = model.rangeNs;
    chart.on("finished", function first() { // before setOption: it may finish within it
      chart.off("finished", first);
      callbacks.current.onFirstRender?.(performance.now() - started);
    });
    chart.setOption({
      animation: false,
      grid: GRID,
      xAxis: {
        type: "value", min: 0, max: model.rangeNs, scale: false,
        axisLabel: { formatter: (v: number) => fmtOffset(v, span), hideOverlap: true },
        splitLine: { lineStyle: { color: "#eee" } },
      },
      yAxis: {
        type: "category", data: model.lanes, inverse: true,
        axisLabel: { width: 230, overflow: "truncate", fontSize: 11, color: "#333" }, splitLine: { show: true, lineStyle: { color: "#f3f3f3" } },
      },
      dataZoom: [
        { type: "inside", xAxisIndex: 0, filterMode: "none", minValueSpan: MIN_SPAN_NS },
        { type: "slider", xAxisIndex: 0, filterMode: "none", minValueSpan: MIN_SPAN_NS, height: 18, bottom: 8, showDetail: false },
      ],
      series: [
        { id: "events", type: "custom", renderItem: renderGroup, data: groupData(), encode: { x: -1, y: 0 }, animation: false, silent: true },
        { id: "critical", type: "custom", renderItem: renderCritical, data: critical, encode: { x: [0, 1], y: 2 }, silent: true, z: 5, clip: true },
      ],
    });
    const redraw = () => {
      const zoom = (chart.getOption() as { dataZoom: Array<{ start: number; end: number }> }).dataZoom[0];
      const from = (Number(zoom.start ?? 0) / 100) * model.rangeNs;
      const to = (Number(zoom.end ?? 100) / 100) * model.rangeNs;
      windowRef.current = [from, to];
      span = to - from;
      groups = visibleGroups(model, from, to, plotWidth());
      chart.setOption({ series: [{ id: "events", data: groupData() }] });
    };
    chart.on("datazoom", redraw);
    let frame = 0;
    chart.getZr().on("mousemove", (event: { offsetX: number; offsetY: number }) => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => {
        if (!chart.containPixel({ gridIndex: 0 }, [event.offsetX, event.offsetY])) return setHover("");
        const [at, laneValue] = chart.convertFromPixel({ gridIndex: 0 }, [event.offsetX, event.offsetY]) as number[];
        const lane = Math.round(laneValue);
        const [from, to] = windowRef.current;
        const slack = ((to - from) / plotWidth()) * 2;
        const found = eventAt(model, lane, at, slack);
        setHover(found < 0 ? `${model.lanes[lane] ?? ""} at +${fmtDuration(at)}`
          : `${model.lanes[lane]}: ${model.label[found]} at +${fmtDuration(model.start[found])}, ${fmtDuration(model.end[found] - model.start[found])}`);
      });
    });
    callbacks.current.onChart?.(chart);
    const resize = () => {
      chart.resize();
      redraw();
    };
    window.addEventListener("resize", resize);
    return () => {
      cancelAnimationFrame(frame);
      window.removeEventListener("resize", resize);
      chart.dispose();
      chartRef.current = null;
    };
  }, [model, critical]);

  const onKey = (event: KeyboardEvent) => {
    const chart = chartRef.current;
    if (!chart) return;
    const [from, to] = windowRef.current;
    const span = to - from;
    let next: [number, number] | null = null;
    if (event.key === "ArrowLeft") next = [from - span * 0.2, to - span * 0.2];
    else if (event.key === "ArrowRight") next = [from + span * 0.2, to + span * 0.2];
    else if (event.key === "+" || event.key === "=") next = [from + span / 4, to - span / 4];
    else if (event.key === "-") next = [from - span / 2, to + span / 2];
    else if (event.key === "0") next = [0, model.rangeNs];
    if (!next) return;
    event.preventDefault();
    let [a, b] = next;
    if (b - a < MIN_SPAN_NS) [a, b] = [(a + b) / 2 - MIN_SPAN_NS / 2, (a + b) / 2 + MIN_SPAN_NS / 2];
    if (a < 0) [a, b] = [0, b - a];
    if (b > model.rangeNs) [a, b] = [Math.max(0, a - (b - model.rangeNs)), model.rangeNs];
    chart.dispatchAction({ type: "dataZoom", startValue: a, endValue: b });
    setHover(`showing +${fmtDuration(a)} to +${fmtDuration(b)}`);
  };

  return (
    <div className="timeline">
      <div
        ref={ref} className="timeline-chart" data-testid="timeline-chart" tabIndex={0} role="img"
        aria-label={`${title}: ${model.count.toLocaleString("en")} events in ${model.lanes.length} lanes over ${fmtDuration(model.rangeNs)}. Focus and use the arrow keys to pan, + and - to zoom, 0 to reset; the table below lists the critical path and every lane.`}
        onKeyDown={onKey} style={{ height }}
      />
      <p className="timeline-hover" aria-live="polite">{hover || "Point at an event to name it; wheel or drag to zoom and pan."}</p>
    </div>
  );
}
