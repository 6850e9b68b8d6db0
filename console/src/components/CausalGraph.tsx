// The causal graph (D3: force layout and zoom; React draws the SVG). Colour and thickness
// say how much delay a link carries; the root cause and its driver are ringed and named.
// Every node is a button: Tab to it, Enter to drill down. A list of the same graph follows.
import { select } from "d3-selection";
import { zoom, zoomIdentity, type ZoomTransform } from "d3-zoom";
import { useEffect, useMemo, useRef, useState, type KeyboardEvent } from "react";
import type { TraceGraph } from "../api/types";
import { fmtDuration } from "../lib/format";
import { describeNode, layoutGraph, SHOWN_BADGES, visibleText, type LaidNode, type Marks } from "../lib/graphModel";

interface Props {
  graph: TraceGraph;
  marks: Marks;
  selected: string | null;
  onSelect: (id: string) => void;
  onRendered?: () => void;
}

const LABEL_ALL_UNDER = 80;

export function CausalGraph({ graph, marks, selected, onSelect, onRendered }: Props) {
  const view = useMemo(() => layoutGraph(graph, marks), [graph, marks]);
  const svgRef = useRef<SVGSVGElement | null>(null);
  const [transform, setTransform] = useState<ZoomTransform>(zoomIdentity);

  useEffect(() => {
    if (!svgRef.current) return;
    const svg = select(svgRef.current);
    const behaviour = zoom<SVGSVGElement, unknown>().scaleExtent([0.2, 8]).on("zoom", (e) => setTransform(e.transform));
    svg.call(behaviour);
    return () => {
      svg.on(".zoom", null);
    };
  }, []);

  useEffect(() => {
    onRendered?.();
  }, [view, onRendered]);

  const labelAll = view.nodes.length <= LABEL_ALL_UNDER;
  const key = (node: LaidNode) => (event: KeyboardEvent) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      onSelect(node.id);
    }
  };
  const summary = `Causal graph of trace ${graph.trace_id}: ${view.nodes.length} nodes, ${view.links.length} links.` +
    (marks.rootCause ? ` Root cause: ${view.nodes.find((n) => n.id === marks.rootCause)?.display ?? marks.rootCause}.` : "");

  return (
    <figure className="graph" data-testid="causal-graph">
      <svg ref={svgRef} role="group" aria-label={summary} className="graph-svg"
        viewBox={`${view.minX} ${view.minY} ${view.width} ${view.height}`} preserveAspectRatio="xMinYMid meet"
        style={{ height: Math.min(900, Math.max(320, view.height)) }}>
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" className="arrow-head" />
          </marker>
        </defs>
        <g transform={transform.toString()}>
          <g className="links" aria-hidden="true">
            {view.links.map((l, i) => {
              const dx = l.target.x - l.source.x;
              const dy = l.target.y - l.source.y;
              const length = Math.hypot(dx, dy) || 1;
              const back = l.target.radius + 4;
              return (
              <line key={i} x1={l.source.x} y1={l.source.y} x2={l.target.x - (dx / length) * back} y2={l.target.y - (dy / length) * back}
                stroke={l.link.colour} strokeWidth={l.width}
                className={`link rel-${l.link.rel}${l.critical ? " critical" : ""}`} markerEnd="url(#arrow)">
                <title>{`${l.link.rel}${l.link.kind ? ` ${l.link.kind}` : ""}${l.link.delay_ns ? ` ${fmtDuration(l.link.delay_ns)}` : ""}`}</title>
              </line>
              );
            })}
          </g>
          <g className="nodes">
            {view.nodes.map((n) => {
              const showLabel = labelAll || n.badges.length > 0 || n.critical || (n.node.delay_ns ?? 0) >= 1_000_000;
              return (
                <g key={n.id} transform={`translate(${n.x},${n.y})`} tabIndex={0} role="button"
                  aria-label={describeNode(n)} aria-pressed={selected === n.id} data-node-id={n.id}
                  className={`node group-${n.node.group}${n.critical ? " critical" : ""}${selected === n.id ? " selected" : ""}${n.badges.includes("root cause") ? " root-cause" : ""}${n.badges.includes("driver") ? " driver" : ""}`}
                  onClick={() => onSelect(n.id)} onKeyDown={key(n)}>
                  {n.node.group === "span" ? (
                    <rect x={-n.radius} y={-n.radius} width={2 * n.radius} height={2 * n.radius} rx={4} fill={n.node.colour} />
                  ) : n.node.group === "kernel_episode" ? (
                    <polygon points={`0,${-n.radius - 2} ${n.radius + 2},0 0,${n.radius + 2} ${-n.radius - 2},0`} fill={n.node.colour} />
                  ) : (
                    <circle r={n.radius} fill={n.node.colour} />
                  )}
                  {n.badges.includes("root cause") || n.badges.includes("driver") ? <circle r={n.radius + 6} className="ring" /> : null}
                  {showLabel ? (
                    // one text element: its text reads as the accessible name begins
                    <text x={n.radius + 6} y={4} className="node-label">
                      {visibleText(n)}
                      {n.badges.filter((b) => SHOWN_BADGES.includes(b)).map((b, i) => (
                        <tspan key={b} x={n.radius + 6} y={-10 - 13 * i} className="badge">{` ${b.toUpperCase()}`}</tspan>
                      ))}
                    </text>
                  ) : null}
                </g>
              );
            })}
          </g>
        </g>
      </svg>
      <figcaption>
        <ul className="legend" aria-label="Delay colours">
          {graph.legend.map((entry) => (
            <li key={entry.label}><span className="swatch" style={{ background: entry.colour }} />{entry.label}</li>
          ))}
          <li>■ span · ◆ kernel episode · ● process or thread · thicker = more delay · drag to pan, wheel to zoom</li>
        </ul>
      </figcaption>
      <details className="graph-list">
        <summary>The graph as a list ({view.nodes.length} nodes)</summary>
        <ul>
          {[...view.nodes].sort((a, b) => (b.node.delay_ns ?? 0) - (a.node.delay_ns ?? 0)).map((n) => (
            <li key={n.id}>
              <button type="button" className="link-button" onClick={() => onSelect(n.id)}>{describeNode(n)}</button>
              {view.links.filter((l) => l.source.id === n.id && l.link.rel !== "CHILD_OF").length ? (
                <ul>
                  {view.links.filter((l) => l.source.id === n.id && l.link.rel !== "CHILD_OF").map((l, i) => (
                    <li key={i}>{`${l.link.rel.toLowerCase().replace("_", " ")} ${l.target.display}${l.link.kind ? ` (${l.link.kind.replace(/_/g, " ")})` : ""}${l.link.delay_ns ? `: ${fmtDuration(l.link.delay_ns)}` : ""}`}</li>
                  ))}
                </ul>
              ) : null}
            </li>
          ))}
        </ul>
      </details>
    </figure>
  );
}
