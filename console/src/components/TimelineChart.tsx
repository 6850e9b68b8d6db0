// The timeline (Apache ECharts): every lane on one nanosecond axis, zoomable down to a
// microsecond (wheel or drag, the slider, or the keyboard: arrows pan, + and - zoom, 0
// resets). What is drawn is the model's level of detail for the visible range, recomputed
// on every zoom, with ECharts' progressive rendering on top. The critical path is outlined.
import { CustomChart } from "echarts/charts";
import { DataZoomComponent, GridComponent, TooltipComponent } from "echarts/components";
import * as echarts from "echarts/core";
import { CanvasRenderer } from "echarts/renderers";
import type { CustomSeriesRenderItemAPI, CustomSeriesRenderItemParams, CustomSeriesRenderItemReturn } from "echarts";
import { useEffect, useMemo, useRef, type KeyboardEvent } from "react";
import { fmtDuration, fmtOffset } from "../lib/format";
import { CATEGORIES, visibleItems, type DrawnItem, type TimelineModel } from "../lib/timelineModel";

echarts.use([CustomChart, GridComponent, DataZoomComponent, TooltipComponent, CanvasRenderer]);

interface Props {
  model: TimelineModel;
  title: string;
  onFirstRender?: (ms: number) => void;
}

const LANE_PX = 24;
const MIN_SPAN_NS = 1_000; // zoom stops at one microsecond across the chart

function renderItem(params: CustomSeriesRenderItemParams, api: CustomSeriesRenderItemAPI): CustomSeriesRenderItemReturn {
  const lane = api.value(2) as number;
  const start = api.coord([api.value(0), lane]);
  const end = api.coord([api.value(1), lane]);
  const height = (api.size?.([0, 1]) as number[])[1] * 0.62;
  const coordSys = params.coordSys as unknown as { x: number; y: number; width: number; height: number };
  const shape = echarts.graphic.clipRectByRect(
    { x: start[0], y: start[1] - height / 2, width: Math.max(1, end[0] - start[0]), height },
    { x: coordSys.x, y: coordSys.y, width: coordSys.width, height: coordSys.height },
  );
  if (!shape) return null;
  return { type: "rect", shape, style: { fill: CATEGORIES[api.value(3) as number]?.colour ?? "#999" } };
}

function renderCritical(params: CustomSeriesRenderItemParams, api: CustomSeriesRenderItemAPI): CustomSeriesRenderItemReturn {
  const lane = api.value(2) as number;
  const start = api.coord([api.value(0), lane]);
  const end = api.coord([api.value(1), lane]);
  const height = (api.size?.([0, 1]) as number[])[1] * 0.9;
  const coordSys = params.coordSys as unknown as { x: number; y: number; width: number; height: number };
  const shape = echarts.graphic.clipRectByRect(
    { x: start[0] - 1, y: start[1] - height / 2, width: Math.max(3, end[0] - start[0] + 2), height },
    { x: coordSys.x - 2, y: coordSys.y, width: coordSys.width + 4, height: coordSys.height },
  );
  if (!shape) return null;
  return { type: "rect", shape, style: { fill: "none", stroke: "#111", lineWidth: 2, lineDash: [5, 3] } };
}

export function TimelineChart({ model, title, onFirstRender }: Props) {
  const ref = useRef<HTMLDivElement | null>(null);
  const chartRef = useRef<echarts.ECharts | null>(null);
  const windowRef = useRef<[number, number]>([0, model.rangeNs]);
  const height = 70 + model.lanes.length * LANE_PX;
  const critical = useMemo(
    () => model.critical.map(({ index }) => [model.start[index], model.end[index], model.lane[index], 0, index, 1]),
    [model],
  );

  useEffect(() => {
    if (!ref.current) return;
    const started = performance.now();
    const chart = echarts.init(ref.current, undefined, { renderer: "canvas" });
    chartRef.current = chart;
    windowRef.current = [0, model.rangeNs];
    const plotWidth = () => Math.max(100, (ref.current?.clientWidth ?? 800) - 260);
    const draw = (from: number, to: number) => visibleItems(model, from, to, plotWidth());
    let span = model.rangeNs;
    chart.setOption({
      animation: false,
      grid: { left: 240, right: 20, top: 10, bottom: 50 },
      tooltip: {
        trigger: "item", confine: true,
        formatter: (p: unknown) => {
          const item = (p as { value: DrawnItem; seriesId: string }).value;
          const what = item[5] > 1 ? `${item[5]} events here (zoom in to separate them)` : model.label[item[4]];
          const escape = (t: string) => t.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
          return `${escape(model.lanes[item[2]])}<br/>${escape(what)}<br/>at +${fmtDuration(item[0])}, ${fmtDuration(item[1] - item[0])}`;
        },
      },
      xAxis: {
        type: "value", min: 0, max: model.rangeNs, scale: false,
        axisLabel: { formatter: (v: number) => fmtOffset(v, span), hideOverlap: true },
        splitLine: { lineStyle: { color: "#eee" } },
      },
      yAxis: {
        type: "category", data: model.lanes, inverse: true,
        axisLabel: { width: 230, overflow: "truncate", fontSize: 11 }, splitLine: { show: true, lineStyle: { color: "#f3f3f3" } },
      },
      dataZoom: [
        { type: "inside", xAxisIndex: 0, filterMode: "none", minValueSpan: MIN_SPAN_NS, zoomOnMouseWheel: true },
        { type: "slider", xAxisIndex: 0, filterMode: "none", minValueSpan: MIN_SPAN_NS, height: 18, bottom: 8, showDetail: false },
      ],
      series: [
        {
          id: "events", type: "custom", renderItem, encode: { x: [0, 1], y: 2 }, data: draw(0, model.rangeNs),
          progressive: 4000, progressiveThreshold: 8000, animation: false, clip: true,
        },
        {
          id: "critical", type: "custom", renderItem: renderCritical, encode: { x: [0, 1], y: 2 }, data: critical,
          silent: true, z: 5, clip: true,
        },
      ],
    });
    let frame = 0;
    chart.on("datazoom", () => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => {
        const zoom = (chart.getOption() as { dataZoom: Array<{ start: number; end: number }> }).dataZoom[0];
        const from = (Number(zoom.start ?? 0) / 100) * model.rangeNs;
        const to = (Number(zoom.end ?? 100) / 100) * model.rangeNs;
        windowRef.current = [from, to];
        span = to - from;
        chart.setOption({ series: [{ id: "events", data: draw(from, to) }] });
      });
    });
    chart.on("finished", function first() {
      chart.off("finished", first);
      onFirstRender?.(performance.now() - started);
    });
    const resize = () => chart.resize();
    window.addEventListener("resize", resize);
    return () => {
      cancelAnimationFrame(frame);
      window.removeEventListener("resize", resize);
      chart.dispose();
      chartRef.current = null;
    };
  }, [model, critical, onFirstRender]);

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
  };

  return (
    <div
      ref={ref} className="timeline-chart" data-testid="timeline-chart" tabIndex={0} role="img"
      aria-label={`${title}: ${model.count.toLocaleString("en")} events in ${model.lanes.length} lanes over ${fmtDuration(model.rangeNs)}. Focus and use the arrow keys to pan, + and - to zoom, 0 to reset; the table below lists the same lanes and the critical path.`}
      onKeyDown={onKey} style={{ height }}
    />
  );
}
