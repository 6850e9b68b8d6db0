import { describe, expect, it } from "vitest";
import type { Timeline } from "../api/types";
import { graph, TRACE } from "../test/fixtures";
import { CAT, eventAt, ModelBuilder, syntheticModel, transactionModel, visibleGroups } from "./timelineModel";

describe("timeline model", () => {
  it("sorts by lane then start and keeps labels and the critical path with their rows", () => {
    const b = new ModelBuilder();
    const a = b.lane("a");
    const z = b.lane("z");
    b.add(z, 50, 60, CAT.syscall, "late z");
    b.add(a, 30, 40, CAT.running, "late a", true);
    b.add(a, 10, 20, CAT.blocked, "early a");
    const m = b.build(100);
    expect(Array.from(m.start)).toEqual([10, 30, 50]);
    expect(m.label).toEqual(["early a", "late a", "late z"]);
    expect(Array.from(m.laneStart)).toEqual([0, 2, 3]);
    expect(m.critical).toEqual([{ index: 1, label: "late a" }]);
  });

  it("draws at most about one rectangle per pixel per lane and category, and all of them when zoomed in", () => {
    const m = syntheticModel(100_000, 10, 1_000_000_000);
    const wide = visibleGroups(m, 0, m.rangeNs, 1000);
    const drawn = wide.reduce((n, g) => n + g.n, 0);
    const merged = wide.reduce((n, g) => n + Array.from(g.counts.subarray(0, g.n)).reduce((x, y) => x + y, 0), 0);
    expect(merged).toBe(100_000); // every event is in some rectangle
    expect(drawn).toBeLessThanOrEqual(10 * 9 * 1002);
    // 10,000 syscalls of 1 µs, 10 µs apart: merged at 100 µs a pixel, apart at 100 ns
    const b = new ModelBuilder();
    const lane = b.lane("syscalls");
    for (let i = 0; i < 10_000; i += 1) b.add(lane, i * 10_000, i * 10_000 + 1_000, CAT.syscall, `call ${i}`);
    const calls = b.build(100_000_000);
    const far = visibleGroups(calls, 0, calls.rangeNs, 1000)[0];
    expect(far.n).toBeLessThanOrEqual(1000);
    const near = visibleGroups(calls, 50_000_000, 50_100_000, 1000)[0];
    expect(Array.from(near.counts.subarray(0, near.n))).toEqual(new Array(near.n).fill(1));
    expect(near.n).toBe(11);
  });

  it("finds the event under the pointer", () => {
    const b = new ModelBuilder();
    const l = b.lane("x");
    b.add(l, 100, 200, CAT.reclaim, "reclaim");
    b.add(l, 1000, 1000, CAT.network, "send");
    const m = b.build(2000);
    expect(m.label[eventAt(m, 0, 150, 1)]).toBe("reclaim");
    expect(m.label[eventAt(m, 0, 1003, 5)]).toBe("send");
    expect(eventAt(m, 0, 600, 5)).toBe(-1);
  });

  it("puts a transaction's spans, episodes and process sections on one axis", () => {
    const base = graph.nodes[0].start_ns as number;
    const timeline: Timeline = {
      from_ns: base, to_ns: base + 1e9, node: "vm", pid: 8712, tid: null, max_points: 2000,
      sections: {
        memory: { mode: "raw", rows_total: 1, dimensions: ["start", "end", "tid", "dur_ns", "kind", "nr_reclaimed", "count"], data: [[20e6, 21e6, 8712, 1e6, "memcg_reclaim", 46, null]] },
        threads: { mode: "raw", rows_total: 1, dimensions: ["node", "tid", "start", "end", "state", "reason", "cpu", "waker_tid"], data: [["vm", 8712, 0, 5e6, "blocked", "poll", 1, null]] },
      },
    };
    const m = transactionModel(base, 1e9, graph.nodes.filter((n) => n.group === "span"),
      graph.nodes.filter((n) => n.group === "kernel_episode"), [{ title: "settlement-service PID 8712", timeline }],
      new Set([`${TRACE}:write`, "mem:vm:113522:1"]));
    expect(m.lanes).toContain("span · settlement-service: settlement.write");
    expect(m.lanes).toContain("kernel episodes");
    expect(m.lanes).toContain("settlement-service PID 8712 · memory");
    expect(m.critical.map((c) => c.label)).toEqual(expect.arrayContaining([
      expect.stringContaining("settlement.write"), expect.stringContaining("memcg reclaim episode")]));
    const reclaim = m.label.findIndex((t) => t.startsWith("memcg_reclaim"));
    expect(m.cat[reclaim]).toBe(CAT.reclaim);
    // the episode began before the window: clipped to it
    const episode = m.label.findIndex((t) => t.includes("episode"));
    expect(m.start[episode]).toBe(0);
  });
});
