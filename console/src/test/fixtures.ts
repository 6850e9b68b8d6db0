// Synthetic API answers shaped like the demo's (a payment delayed by memcg reclaim driven by
// a batch job), for component tests: no server, no lake.
import type { ExplainedTransaction, ReplayReport, TraceGraph } from "../api/types";

export const TRACE = "a86e4dbd2c444b3410929763db6d9b55";
const T0 = 1_796_549_313_305_630_000;

export const graph: TraceGraph = {
  trace_id: TRACE, window: "w",
  nodes: [
    { id: `${TRACE}:root`, group: "span", label: "payment-gateway: POST /payments", delay_ns: 772_000_000, colour: "#c62828", service: "payment-gateway", name: "POST /payments", start_ns: T0, dur_ns: 779_000_000, failed: true, failure_kind: "timeout" },
    { id: `${TRACE}:post`, group: "span", label: "payment-gateway: POST /postings", delay_ns: 751_000_000, colour: "#c62828", service: "payment-gateway", name: "POST /postings", start_ns: T0 + 18_000_000, dur_ns: 751_000_000, failed: true, failure_kind: "timeout" },
    { id: `${TRACE}:write`, group: "span", label: "settlement-service: settlement.write", delay_ns: 901_000_000, colour: "#c62828", service: "settlement-service", name: "settlement.write", start_ns: T0 + 19_000_000, dur_ns: 850_000_000, failed: false },
    { id: "mem:vm:113522:1", group: "kernel_episode", label: "KERNEL: memcg_reclaim", delay_ns: 773_000_000, colour: "#c62828", kind: "memory_pressure", subkind: "memcg_reclaim", start_ns: T0 - 3_000_000_000, dur_ns: 4_300_000_000 },
    { id: "vm:8861", group: "thread", label: "batch job TID 8861", delay_ns: 3_100_000_000, colour: "#c62828", pid: 8861, tid: 8861 },
    { id: "vm:7145", group: "thread", label: "python TID 7146", delay_ns: 30_000_000, colour: "#ef6c00", pid: 7145, tid: 7146 },
  ],
  links: [
    { source: `${TRACE}:post`, target: `${TRACE}:root`, rel: "CHILD_OF", kind: null, delay_ns: null, colour: "#9e9e9e" },
    { source: `${TRACE}:write`, target: `${TRACE}:post`, rel: "CHILD_OF", kind: null, delay_ns: null, colour: "#9e9e9e" },
    { source: `${TRACE}:write`, target: "mem:vm:113522:1", rel: "DELAYED_BY", kind: "memory_pressure", delay_ns: 773_000_000, colour: "#c62828" },
    { source: "mem:vm:113522:1", target: "vm:8861", rel: "CAUSED_BY", kind: "memory_driver", delay_ns: 3_100_000_000, colour: "#c62828", rank: 1 },
    { source: `${TRACE}:write`, target: "vm:7145", rel: "DELAYED_BY", kind: "cpu_contention", delay_ns: 30_000_000, colour: "#ef6c00" },
  ],
  legend: [{ label: "no delay", colour: "#9e9e9e", max_ns: 0 }, { label: ">= 100 ms", colour: "#c62828", max_ns: null }],
};

export const explained: ExplainedTransaction = {
  trace_id: TRACE, txn_id: "PAY-1", business_id: "PAY-1", concept: "Payment", root_span: `${TRACE}:root`,
  service: "payment-gateway", name: "POST /payments", start_ns: T0, dur_ns: 779_000_000, failed: true,
  failure: { status_message: "settlement timed out after 750 ms", failure_kind: "timeout" },
  root_cause: { kind: "memory_pressure", name: "memory pressure", target: "mem:vm:113522:1", delay_ns: 773_000_000, via_span: `${TRACE}:write`, driver: "batch job PID 8861 allocating 1.5 GiB in the same cgroup" },
  steps: [
    { kind: "kernel", ts_ns: T0 + 19_000_000, indent: 0, label: "memcg reclaim 774 ms", detail: "batch job PID 8861 allocating 1.5 GiB in the same cgroup", span: `${TRACE}:write`, cause: "memory_pressure", target: "mem:vm:113522:1", delay_ns: 773_000_000,
      episode: { id: "mem:vm:113522:1", kind: "memory_pressure", subkind: "memcg_reclaim", node: "vm", start_ns: T0 - 3_000_000_000, memcg: 113522 },
      driver: { process: "vm:8861", pid: 8861, role: "batch job", comm: "python", bytes: 1_600_000_000 } },
  ],
  window: "w",
};

export function report(status: number, body: string, mode: "exact" | "whatif"): ReplayReport {
  const answer = `HTTP/1.0 ${status} ${status === 200 ? "OK" : "Gateway Timeout"}\r\nContent-Type: application/json\r\n\r\n${body}`;
  return {
    status: "end_of_recording", mode, process: { pid: 8713, node: "vm" }, exit_code: null, exit_signal: 9, recorded_exit_code: null,
    divergence: null, injections: {}, notes: [], outputs_match: mode === "exact",
    stats: { served: 6076, wall_s: 1.2 },
    outputs: [{ fd: 4, recorded_bytes: 3713, replayed_bytes: 3731, match: mode === "exact", first_difference: mode === "exact" ? null : 3463, recorded: "'HTTP/1.0 504'", replayed: "'HTTP/1.0 200'" }],
    replayed_text: {
      "4": `HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"payment_id": "PAY-0", "status": "settled"}${answer}`,
      "6": 'POST /postings HTTP/1.1\r\nHost: x\r\n\r\n{"payment_id": "PAY-1"}',
    },
  };
}
