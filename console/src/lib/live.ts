// The live stream's state: the rows kept for display (a bounded window: the newest first),
// what the server dropped for us (its "dropped" messages) and what we dropped ourselves
// to stay within the window. A reducer, so it is testable without a socket.

export interface LiveRow {
  seq: number;
  kind: string; // table, or "failure"
  ts: number | null;
  text: string;
}

export interface LiveState {
  rows: LiveRow[];
  seq: number;
  serverDroppedMessages: number;
  serverDroppedRows: number;
  received: number;
  notices: string[];
  status: "connecting" | "open" | "closed";
  filters: Record<string, unknown> | null;
}

export const KEEP_ROWS = 1000;

export const initialLive: LiveState = {
  rows: [], seq: 0, serverDroppedMessages: 0, serverDroppedRows: 0, received: 0, notices: [],
  status: "connecting", filters: null,
};

export type LiveAction =
  | { type: "connecting" }
  | { type: "open" }
  | { type: "closed"; reason: string }
  | { type: "message"; data: Record<string, unknown> }
  | { type: "clear" };

function rowText(table: string, row: Record<string, unknown>): string {
  const skip = new Set(["batch_id", "hour", "ts_ns", "start_ns"]);
  return Object.entries(row).filter(([k, v]) => !skip.has(k) && v !== null && v !== "").map(([k, v]) =>
    `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`).join(" ").slice(0, 400) || table;
}

export function liveReducer(state: LiveState, action: LiveAction): LiveState {
  switch (action.type) {
    case "connecting":
      return { ...state, status: "connecting" };
    case "open":
      return { ...state, status: "open" };
    case "closed":
      return { ...state, status: "closed", notices: [action.reason, ...state.notices].slice(0, 20) };
    case "clear":
      return { ...state, rows: [] };
    case "message": {
      const m = action.data;
      if (m.type === "subscribed") return { ...state, filters: (m.filters as Record<string, unknown>) ?? null };
      if (m.type === "dropped") {
        return {
          ...state, serverDroppedMessages: state.serverDroppedMessages + Number(m.messages ?? 0),
          serverDroppedRows: state.serverDroppedRows + Number(m.rows ?? 0),
        };
      }
      if (m.type === "notice") return { ...state, notices: [String(m.message ?? m.notice ?? JSON.stringify(m)), ...state.notices].slice(0, 20) };
      if (m.type !== "events" && m.type !== "failures") return state;
      const table = m.type === "failures" ? "failure" : String(m.table ?? "?");
      const rows = Array.isArray(m.rows) ? (m.rows as Array<Record<string, unknown>>) : [];
      let seq = state.seq;
      const fresh = rows.map((row) => ({
        seq: ++seq, kind: table, ts: Number(row.ts_ns ?? row.start_ns ?? NaN) || null, text: rowText(table, row),
      })).reverse();
      return { ...state, seq, received: state.received + rows.length, rows: [...fresh, ...state.rows].slice(0, KEEP_ROWS) };
    }
  }
}

export function liveUrl(location: Location, kinds: string[], pids: string, nodes: string): string {
  const params = new URLSearchParams();
  kinds.forEach((k) => params.append("kind", k));
  pids.split(/[ ,]+/).filter((p) => /^\d+$/.test(p)).forEach((p) => params.append("pid", p));
  nodes.split(/[ ,]+/).filter(Boolean).forEach((n) => params.append("node", n));
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const search = params.toString();
  return `${scheme}://${location.host}/v1/live${search ? `?${search}` : ""}`;
}
