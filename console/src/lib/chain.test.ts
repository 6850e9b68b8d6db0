import { describe, expect, it } from "vitest";
import type { ExplainedTransaction } from "../api/types";
import { chainLines } from "./chain";

const MS = 1_000_000;

describe("the causal chain", () => {
  it("lays out typed steps: gaps between events, causes under their operation", () => {
    const explained = {
      trace_id: "t", txn_id: null, business_id: "98721", concept: "Payment", root_span: "t:a",
      service: "payment-handler", name: "POST /payments", start_ns: 1_000 * MS, dur_ns: 800 * MS,
      failed: true, failure: null, root_cause: null, window: "w",
      steps: [
        { kind: "event", ts_ns: 1_000 * MS, depth: 0, label: "Payment #98721 received", span: "t:a", moment: "start" },
        { kind: "event", ts_ns: 1_002 * MS, depth: 1, label: "Settlement write initiated", span: "t:c", moment: "start" },
        { kind: "kernel", ts_ns: 1_003 * MS, indent: 0, label: "memcg reclaim 790 ms", detail: "batch job PID 4721 allocating 1.2 GiB in the same cgroup", span: "t:c", cause: "memory_pressure", target: "e1" },
        { kind: "kernel", ts_ns: 1_003 * MS, indent: 1, label: "run-queue wait 3 ms", detail: "", span: "t:h", cause: "cpu_contention", target: "th" },
        { kind: "failure", ts_ns: 1_750 * MS, depth: 1, label: "TIMEOUT: payment-handler exceeded 750 ms", detail: "root cause: memory pressure", span: "t:a" },
        { kind: "event", ts_ns: 1_800 * MS, depth: 0, label: "Payment failed", span: "t:a", moment: "end" },
      ],
    } as ExplainedTransaction;
    expect(chainLines(explained)).toEqual([
      "[Payment #98721 received]",
      "  | 2 ms  [Settlement write initiated]",
      "  |   [KERNEL: memcg reclaim 790 ms]  ← batch job PID 4721 allocating 1.2 GiB in the same cgroup",
      "  |     [KERNEL: run-queue wait 3 ms]",
      "  [TIMEOUT: payment-handler exceeded 750 ms]  ← root cause: memory pressure",
      "[Payment failed]",
    ]);
  });
});
