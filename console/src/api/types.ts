// Shapes of the query API's answers the console reads (query_api/schemas.py). Times named
// *_ns are Unix-epoch nanoseconds: above 2^53, so a JavaScript number holds them to within
// 256 ns; durations and the timeline's offsets are exact.

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance?: string | null;
  [extra: string]: unknown;
}

export interface WhoAmI {
  principal: string;
  scopes: Array<"read" | "replay" | "payloads">;
  auth: "token" | "none";
}

export interface FailureInfo {
  span: string;
  service: string | null;
  name: string | null;
  failure_kind: string | null;
  status_message: string | null;
  over_ns: number | null;
  deadline_ns: number | null;
  root_cause_kind: string | null;
  root_cause_label: string | null;
  root_cause_target: string | null;
  root_cause_delay_ns: number | null;
}

export interface Transaction {
  trace_id: string;
  txn_id: string | null;
  business_id: string | null;
  concept: string | null;
  service: string | null;
  name: string | null;
  start_ns: number;
  end_ns: number | null;
  dur_ns: number | null;
  status: string | null;
  root_span: string;
  failed: boolean;
  window: string;
  failure: FailureInfo | null;
}

export interface TransactionPage {
  items: Transaction[];
  next_cursor: string | null;
  next: string | null;
}

export interface RootCause {
  rank?: number;
  kind: string;
  name?: string;
  target: string;
  target_label?: string;
  delay_ns: number | null;
  via_span?: string | null;
  driver?: string | null;
  sufficient?: boolean | null;
}

export interface Episode {
  id: string;
  kind: string;
  subkind?: string | null;
  node?: string | null;
  start_ns: number;
  end_ns?: number | null;
  dur_ns?: number | null;
  memcg?: number | null;
  detail?: string | null;
}

export interface Driver {
  episode?: string;
  kind?: string;
  pid?: number;
  comm?: string | null;
  role?: string | null;
  process?: string;
  cgroup?: string | null;
  bytes?: number | null;
  delay_ns?: number | null;
  evidence?: Record<string, unknown> | null;
}

export interface Step {
  kind: "event" | "kernel" | "remote" | "failure" | "missed" | string;
  ts_ns: number;
  label: string; // what happened, in words ("memcg reclaim 790 ms")
  detail?: string; // who or why, for causes and failures
  depth?: number; // events: 0 = the transaction's own first and last line
  indent?: number; // kernel lines: 0 under the span, n inside the n-th waited-for thread
  moment?: "start" | "end";
  span?: string;
  service?: string | null;
  name?: string | null;
  cause?: string;
  target?: string;
  delay_ns?: number | null;
  episode?: Episode;
  driver?: Driver;
  failure_kind?: string;
  root_cause?: RootCause;
  [extra: string]: unknown;
}

export interface ExplainedTransaction {
  trace_id: string;
  txn_id: string | null;
  business_id: string | null;
  concept: string | null;
  root_span: string;
  service: string | null;
  name: string | null;
  start_ns: number;
  dur_ns: number | null;
  failed: boolean;
  failure: (Record<string, unknown> & { status_message?: string | null; failure_kind?: string | null }) | null;
  root_cause: RootCause | null;
  other_causes?: RootCause[];
  steps: Step[];
  window: string;
}

export interface Explanation {
  query: string;
  transactions: ExplainedTransaction[];
}

export interface GraphNode {
  id: string;
  group: "span" | "kernel_episode" | "thread" | "process" | "other" | string;
  label: string;
  delay_ns: number | null;
  colour: string;
  service?: string | null;
  name?: string | null;
  business_id?: string | null;
  start_ns?: number | null;
  dur_ns?: number | null;
  failed?: boolean;
  failure_kind?: string | null;
  on_cpu_ns?: number | null;
  runqueue_ns?: number | null;
  blocked_ns?: number | null;
  kind?: string | null;
  subkind?: string | null;
  pid?: number | null;
  tid?: number | null;
  cgroup?: string | null;
  [extra: string]: unknown;
}

export interface GraphLink {
  source: string;
  target: string;
  rel: "CHILD_OF" | "DELAYED_BY" | "CAUSED_BY" | string;
  kind: string | null;
  delay_ns: number | null;
  colour: string;
  rank?: number;
  count?: number;
  bytes?: number;
  evidence?: Record<string, unknown> | null;
}

export interface LegendEntry {
  label: string;
  colour: string;
  max_ns: number | null;
}

export interface TraceGraph {
  trace_id: string;
  window: string;
  nodes: GraphNode[];
  links: GraphLink[];
  legend: LegendEntry[];
}

export interface TimelineSection {
  mode: "raw" | "buckets";
  rows_total: number;
  dimensions: string[];
  data: unknown[][];
  bucket_ns?: number | null;
  lanes?: Array<{ node: string; tid: number; pid: number }>;
  categories?: string[];
  omitted_threads?: number;
}

export interface Timeline {
  from_ns: number;
  to_ns: number;
  node: string | null;
  pid: number | null;
  tid: number | null;
  max_points: number;
  sections: Record<string, TimelineSection>;
}

export interface TraceProcess {
  node: string;
  pid: number;
  services: string[];
  spans: string[];
  span_names: string[];
  first_start_ns: number;
  last_end_ns: number | null;
  exec_ns: number | null;
  comm: string | null;
  exe: string | null;
  argv: string[] | null;
  cgroup: string | null;
  payload_rows: number;
  replayable: boolean;
}

export interface TraceProcesses {
  trace_id: string;
  processes: TraceProcess[];
}

export interface ReplayRequest {
  process: string;
  from?: string | null;
  to?: string | null;
  inject?: string[];
  set_args?: Array<{ index: number; value: string }>;
  env?: Record<string, string>;
  cmd?: string | null;
  mode?: "exact" | "whatif" | null;
  expect_exit?: number | null;
  expect_output_match?: boolean;
  timeout_s?: number;
}

export interface ReplayJob {
  id: string;
  kind: "replay";
  status: "running" | "succeeded" | "failed" | "error" | "lost";
  request: ReplayRequest;
  runner: string;
  owner: string;
  created_ns: number;
  started_ns: number | null;
  finished_ns: number | null;
  heartbeat_ns: number | null;
  exit_code: number | null;
  expectation_held: boolean | null;
  error: string | null;
  summary: Record<string, unknown> | null;
  links: Record<string, string>;
}

export interface OutputComparison {
  fd: number;
  recorded_bytes: number;
  replayed_bytes: number;
  match: boolean;
  first_difference: number | null;
  recorded: string | null;
  replayed: string | null;
  kept_bytes?: number | null;
}

export interface ReplayReport {
  status: string;
  mode: string;
  process: { pid?: number; node?: string; argv?: string[]; exe?: string };
  exit_code: number | null;
  exit_signal: number | null;
  recorded_exit_code: number | null;
  divergence: Record<string, unknown> | null;
  outputs: OutputComparison[];
  injections: Record<string, number>;
  stats: Record<string, number>;
  notes: string[];
  outputs_match: boolean;
  // without the payloads scope the server replaces it with a string saying so
  replayed_text: Record<string, string> | string;
}

export interface SqlColumn {
  name: string;
  type: string;
}

export interface SqlResponse {
  columns: SqlColumn[];
  rows: unknown[][];
  row_count: number;
  truncated: boolean;
  truncated_by?: string | null;
  next_offset?: number | null;
  elapsed_ms: number;
}
