// `/live`: new lake rows and failures as they are committed (WebSocket /v1/live), newest
// first, filtered by kind, pid and node at the server and by text here. When this page or
// the network is slower than the stream, the server drops messages for us and says how
// many: shown as "n dropped".
import { useEffect, useReducer, useRef, useState, type FormEvent } from "react";
import { useAuth } from "../auth";
import { fmtInstant } from "../lib/format";
import { initialLive, KEEP_ROWS, liveReducer, liveUrl } from "../lib/live";

const KINDS = ["failure", "spans", "offcpu", "mem", "net", "block_io", "processes", "syscalls", "sched", "lost"];

export function LivePage() {
  const { token } = useAuth();
  const [state, dispatch] = useReducer(liveReducer, initialLive);
  const [kinds, setKinds] = useState<string[]>(["failure", "spans", "mem", "processes"]);
  const [pids, setPids] = useState("");
  const [nodes, setNodes] = useState("");
  const [applied, setApplied] = useState({ kinds, pids, nodes });
  const [text, setText] = useState("");
  const [paused, setPaused] = useState(false);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;

  useEffect(() => {
    const protocols = ["kprobe.live.v1", ...(token ? [`bearer.${token}`] : [])];
    const socket = new WebSocket(liveUrl(window.location, applied.kinds, applied.pids, applied.nodes), protocols);
    dispatch({ type: "connecting" });
    socket.onopen = () => dispatch({ type: "open" });
    socket.onclose = (event) => dispatch({ type: "closed", reason: `stream closed (${event.code}${event.reason ? `: ${event.reason}` : ""})` });
    socket.onerror = () => dispatch({ type: "closed", reason: "the server refused or lost the stream (check the token and the server log)" });
    socket.onmessage = (event) => {
      if (pausedRef.current) return;
      try {
        dispatch({ type: "message", data: JSON.parse(String(event.data)) as Record<string, unknown> });
      } catch {
        // not JSON: ignore
      }
    };
    return () => socket.close();
  }, [applied, token]);

  const apply = (event: FormEvent) => {
    event.preventDefault();
    setApplied({ kinds, pids, nodes });
  };
  const needle = text.trim().toLowerCase();
  const shown = needle ? state.rows.filter((r) => r.text.toLowerCase().includes(needle) || r.kind.includes(needle)) : state.rows;
  const dropped = state.serverDroppedMessages;
  return (
    <section className="panel" aria-labelledby="live-title">
      <h2 id="live-title">Live stream</h2>
      <form onSubmit={apply} className="live-filters" aria-label="Stream filters">
        <fieldset className="inline">
          <legend>Kinds</legend>
          {KINDS.map((k) => (
            <label key={k}><input type="checkbox" checked={kinds.includes(k)}
              onChange={(e) => setKinds(e.target.checked ? [...kinds, k] : kinds.filter((x) => x !== k))} /> {k}</label>
          ))}
        </fieldset>
        <label htmlFor="live-pids">PIDs</label>
        <input id="live-pids" value={pids} onChange={(e) => setPids(e.target.value)} placeholder="all" />
        <label htmlFor="live-nodes">Nodes</label>
        <input id="live-nodes" value={nodes} onChange={(e) => setNodes(e.target.value)} placeholder="all" />
        <button type="submit">Apply</button>
      </form>
      <p className="live-status" role="status" aria-live="polite" data-testid="live-status">
        {state.status === "open" ? "Connected" : state.status === "connecting" ? "Connecting…" : "Disconnected"}
        {" · "}{state.received.toLocaleString("en")} rows received
        {" · "}<span data-testid="live-dropped">{dropped.toLocaleString("en")} dropped</span>
        {state.serverDroppedRows ? ` (${state.serverDroppedRows.toLocaleString("en")} rows)` : ""}
        {state.received > KEEP_ROWS ? ` · showing the newest ${KEEP_ROWS}` : ""}
      </p>
      {state.notices.length ? <ul className="notes">{state.notices.slice(0, 3).map((n, i) => <li key={i}>{n}</li>)}</ul> : null}
      <p>
        <label htmlFor="live-text">Filter shown rows</label>
        <input id="live-text" value={text} onChange={(e) => setText(e.target.value)} />
        <button type="button" onClick={() => setPaused(!paused)} aria-pressed={paused}>{paused ? "Resume" : "Pause"}</button>
        <button type="button" onClick={() => dispatch({ type: "clear" })}>Clear</button>
      </p>
      <div className="live-rows" tabIndex={0} role="log" aria-label="Stream rows, newest first" data-testid="live-rows">
        {shown.slice(0, 300).map((r) => (
          <div key={r.seq} className={`live-row kind-${r.kind}`}>
            <span className="live-kind">{r.kind}</span> <span className="muted">{r.ts ? fmtInstant(r.ts) : ""}</span> {r.text}
          </div>
        ))}
        {!shown.length ? <p className="muted">Nothing yet: rows appear as agents commit them.</p> : null}
      </div>
    </section>
  );
}
