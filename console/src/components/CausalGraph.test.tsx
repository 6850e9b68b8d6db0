import { fireEvent, render, screen, within } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { displayLabel, marksFor } from "../lib/graphModel";
import { explained, graph, TRACE } from "../test/fixtures";
import { CausalGraph } from "./CausalGraph";

describe("CausalGraph", () => {
  const marks = marksFor(graph, explained);

  it("marks the root cause, its driver and the chain down to it", () => {
    expect(marks.rootCause).toBe("mem:vm:113522:1");
    expect([...marks.drivers]).toEqual(["vm:8861"]);
    expect(marks.critical).toEqual(new Set([`${TRACE}:write`, `${TRACE}:post`, `${TRACE}:root`, "mem:vm:113522:1", "vm:8861"]));
    // a control: the CPU contention thread is neither driver nor on the path
    expect(marks.critical.has("vm:7145")).toBe(false);
  });

  it("names processes by PID and episodes by what they were", () => {
    expect(displayLabel(graph.nodes[4])).toBe("batch job PID 8861");
    expect(displayLabel(graph.nodes[5])).toBe("python TID 7146 (PID 7145)");
    expect(displayLabel(graph.nodes[3])).toBe("memory pressure: memcg reclaim");
  });

  it("draws every node as a focusable button with a text alternative", () => {
    const onSelect = vi.fn();
    render(<CausalGraph graph={graph} marks={marks} selected={null} onSelect={onSelect} />);
    const svg = screen.getByRole("group", { name: /Causal graph of trace/ });
    expect(svg.getAttribute("aria-label")).toContain("Root cause: memory pressure: memcg reclaim");
    const buttons = within(svg).getAllByRole("button");
    expect(buttons).toHaveLength(graph.nodes.length);
    const episode = within(svg).getByRole("button", { name: /memory pressure: memcg reclaim · 773 ms ROOT CAUSE, kernel episode/ });
    expect(episode.getAttribute("tabindex")).toBe("0");
    within(svg).getByRole("button", { name: /batch job PID 8861 · 3.1 s DRIVER/ });
    fireEvent.keyDown(episode, { key: "Enter" });
    expect(onSelect).toHaveBeenCalledWith("mem:vm:113522:1");
    fireEvent.click(within(svg).getByRole("button", { name: /settlement-service: settlement.write/ }));
    expect(onSelect).toHaveBeenLastCalledWith(`${TRACE}:write`);
  });

  it("thickens links by the delay they carry", () => {
    const { container } = render(<CausalGraph graph={graph} marks={marks} selected={null} onSelect={() => undefined} />);
    const widths = [...container.querySelectorAll("line.link")].map((l) => Number(l.getAttribute("stroke-width")));
    const reclaim = Number(container.querySelector("line.rel-DELAYED_BY[stroke='#c62828']")?.getAttribute("stroke-width"));
    const cpu = Number(container.querySelector("line.rel-DELAYED_BY[stroke='#ef6c00']")?.getAttribute("stroke-width"));
    expect(reclaim).toBeGreaterThan(cpu);
    expect(Math.min(...widths)).toBeGreaterThanOrEqual(1);
  });
});
