// Replay a recorded process of the transaction: exactly as recorded, and with a change (an
// argument such as a timeout, an environment variable, an injected delay), side by side.
// The job ids go into the page's URL, so a reload or a shared link shows the same replays.
import { useEffect, useMemo, useState, type FormEvent } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { problemOf } from "../api/client";
import type { ExplainedTransaction, Problem, ReplayJob, ReplayRequest, TraceProcess } from "../api/types";
import { useAuth } from "../auth";
import { nsParam } from "../lib/format";
import { followReplay, launchReplay, relaunchUrl, timeoutArgument, type ReplayResult } from "../lib/replays";
import { ProblemMessage } from "./ProblemMessage";
import { ReplayComparison } from "./ReplayComparison";

const AFTER_NS = 50_000_000; // recording kept after the transaction: its answer, not the next request

interface Run {
  job: ReplayJob | null;
  result: ReplayResult | null;
}

const EMPTY: Run = { job: null, result: null };

export function ReplayPanel({ explained, processes }: { explained: ExplainedTransaction; processes: TraceProcess[] }) {
  const { call, can, auth } = useAuth();
  const [search, setSearch] = useSearchParams();
  const candidates = processes.filter((p) => p.argv);
  const rootProcess = candidates.find((p) => p.spans.includes(explained.root_span)) ?? candidates.find((p) => p.replayable) ?? candidates[0];
  const [chosen, setChosen] = useState<string>(rootProcess ? `${rootProcess.pid}@${rootProcess.node}` : "");
  const process = candidates.find((p) => `${p.pid}@${p.node}` === chosen) ?? null;
  const argv = useMemo(() => process?.argv ?? [], [process]);
  const timeout = useMemo(() => timeoutArgument(argv), [argv]);
  const [args, setArgs] = useState<string[]>(argv);
  const [inject, setInject] = useState("");
  const [env, setEnv] = useState("");
  const [exact, setExact] = useState<Run>(EMPTY);
  const [whatIf, setWhatIf] = useState<Run>(EMPTY);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  const to = nsParam(explained.start_ns, (explained.dur_ns ?? 0) + AFTER_NS);

  useEffect(() => {
    const next = [...argv];
    const recorded = Number(timeout?.value);
    if (timeout && Number.isFinite(recorded) && recorded > 0) next[timeout.index] = String(Math.round(recorded * 2));
    setArgs(next);
  }, [argv, timeout]);

  // replays named in the URL (a reload, a shared link): follow them
  const exactId = search.get("exact");
  const whatIfId = search.get("whatif");
  useEffect(() => {
    const controller = new AbortController();
    const follow = (id: string | null, set: (run: Run) => void) => {
      if (!id || !/^[0-9a-f]{32}$/.test(id)) return;
      followReplay(call, id, (job) => set({ job, result: null }), controller.signal)
        .then((result) => set({ job: result.job, result }))
        .catch((error: unknown) => {
          if (!controller.signal.aborted) setProblem(problemOf(error));
        });
    };
    follow(exactId, setExact);
    follow(whatIfId, setWhatIf);
    return () => controller.abort();
  }, [exactId, whatIfId, call]);

  const changed = args.map((value, index) => ({ index, value })).filter((c) => c.index > 0 && c.value !== argv[c.index]);
  const envPairs = env.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)] as const);
  const injections = inject.split(",").map((s) => s.trim()).filter(Boolean);
  const whatIfRequest: ReplayRequest | null = process ? {
    process: `${process.pid}@${process.node}`, to, mode: "whatif", set_args: changed, inject: injections,
    env: Object.fromEntries(envPairs.filter(([k]) => k)),
  } : null;
  const exactRequest: ReplayRequest | null = process ? { process: `${process.pid}@${process.node}`, to, mode: "exact" } : null;

  const run = async (event: FormEvent) => {
    event.preventDefault();
    if (!exactRequest || !whatIfRequest) return;
    setProblem(null);
    setBusy(true);
    try {
      const first = await launchReplay(call, exactRequest);
      const second = await launchReplay(call, whatIfRequest);
      setExact({ job: first, result: null });
      setWhatIf({ job: second, result: null });
      const next = new URLSearchParams(search);
      next.set("exact", first.id);
      next.set("whatif", second.id);
      setSearch(next, { replace: true });
    } catch (error) {
      setProblem(problemOf(error));
    } finally {
      setBusy(false);
    }
  };

  if (!candidates.length) return <p>No process of this transaction has a recorded exec: there is nothing to replay.</p>;
  const mayReplay = can("replay");
  const needle = explained.business_id ?? explained.txn_id;
  return (
    <div className="replay-panel">
      <form onSubmit={run} aria-label="Replay">
        <fieldset>
          <legend>Recorded process</legend>
          {candidates.map((p) => (
            <label key={`${p.pid}@${p.node}`} className="choice">
              <input type="radio" name="replay-process" value={`${p.pid}@${p.node}`} checked={chosen === `${p.pid}@${p.node}`}
                onChange={() => setChosen(`${p.pid}@${p.node}`)} />
              {p.services.join(", ")} — PID {p.pid}@{p.node}: <code>{(p.argv ?? []).slice(0, 6).join(" ")}{(p.argv?.length ?? 0) > 6 ? " …" : ""}</code>
              {p.replayable ? "" : " (no payloads recorded: cannot replay)"}
            </label>
          ))}
        </fieldset>
        {process ? (
          <fieldset>
            <legend>What-if: change the run</legend>
            {timeout ? (
              <p className="timeout-field">
                <label htmlFor="timeout-value">Timeout <code>{timeout.flag}</code> (recorded {timeout.value})</label>
                <input id="timeout-value" inputMode="numeric" value={args[timeout.index] ?? ""}
                  onChange={(e) => setArgs(args.map((v, i) => (i === timeout.index ? e.target.value : v)))} />
              </p>
            ) : null}
            <details>
              <summary>Every argument ({argv.length})</summary>
              {args.map((value, i) => (
                <p key={i} className="arg">
                  <label htmlFor={`arg-${i}`}>argv[{i}]</label>
                  <input id={`arg-${i}`} value={value} disabled={i === 0}
                    onChange={(e) => setArgs(args.map((v, j) => (j === i ? e.target.value : v)))} />
                </p>
              ))}
            </details>
            <p>
              <label htmlFor="inject">Inject delays (comma-separated, e.g. <code>recv:+100ms</code>, <code>fsync:+50ms</code>)</label>
              <input id="inject" value={inject} onChange={(e) => setInject(e.target.value)} />
            </p>
            <p>
              <label htmlFor="env">Environment to set (NAME=value, one a line)</label>
              <textarea id="env" rows={2} value={env} onChange={(e) => setEnv(e.target.value)} />
            </p>
            <p className="muted">Both replay PID {process.pid} from its exec to 50 ms after the transaction ended, in the server's sandbox.</p>
          </fieldset>
        ) : null}
        {mayReplay ? (
          <button type="submit" disabled={busy || !process?.replayable}>{busy ? "Launching…" : "Run exact and what-if replays"}</button>
        ) : (
          <p className="muted" role="note">
            {auth.state === "ready" && auth.who.auth === "none"
              ? "This server runs without tokens (--no-auth) and is read-only: replays need a token with the replay scope."
              : "Your token lacks the replay scope: replays cannot be launched from it."}
          </p>
        )}
        {whatIfRequest && mayReplay ? <p><Link to={relaunchUrl(whatIfRequest)}>Link to launch this what-if again</Link></p> : null}
      </form>
      {problem ? <ProblemMessage problem={problem} context="Replay" /> : null}
      {exact.job || whatIf.job ? (
        <>
          <ReplayComparison needle={needle} columns={[{ title: "Exact", ...exact }, { title: "What-if", ...whatIf }]} />
          {exact.job && whatIf.job ? (
            <p><Link to={`/replays/${exact.job.id}?vs=${whatIf.job.id}${needle ? `&answer=${encodeURIComponent(needle)}` : ""}`}>Open side by side on its own page</Link></p>
          ) : null}
        </>
      ) : null}
    </div>
  );
}
