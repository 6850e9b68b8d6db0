// `/replays/<job>`: a replay's report (with `?vs=<job>` another beside it, `?answer=<id>`
// the HTTP answer naming that id); "Run again" launches the same request. `/replays/new?…`
// is a replay request as a link (relaunch from CI): it fills the form, a click launches it.
import { useEffect, useState } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { problemOf } from "../api/client";
import type { Problem, ReplayJob, ReplayRequest } from "../api/types";
import { useAuth } from "../auth";
import { Loading, ProblemMessage } from "../components/ProblemMessage";
import { ReplayComparison, type Column } from "../components/ReplayComparison";
import { followReplay, launchReplay, relaunchUrl, requestFromUrl } from "../lib/replays";

function useFollowed(id: string | null): { column: Omit<Column, "title">; problem: Problem | null } {
  const { call } = useAuth();
  const [column, setColumn] = useState<Omit<Column, "title">>({ job: null, result: null });
  const [problem, setProblem] = useState<Problem | null>(null);
  useEffect(() => {
    if (!id) return;
    const controller = new AbortController();
    setProblem(null);
    setColumn({ job: null, result: null });
    followReplay(call, id, (job) => setColumn({ job, result: null }), controller.signal)
      .then((result) => setColumn({ job: result.job, result }))
      .catch((error: unknown) => !controller.signal.aborted && setProblem(problemOf(error)));
    return () => controller.abort();
  }, [id, call]);
  return { column, problem };
}

function RequestFacts({ request }: { request: ReplayRequest }) {
  return (
    <dl className="facts">
      <dt>Process</dt><dd>{request.process}</dd>
      <dt>Mode</dt><dd>{request.mode ?? "exact unless something changes"}</dd>
      {request.to ? (<><dt>Recording up to</dt><dd>{request.to}</dd></>) : null}
      {request.set_args?.length ? (<><dt>Arguments changed</dt><dd>{request.set_args.map((c) => `argv[${c.index}] = ${c.value}`).join(", ")}</dd></>) : null}
      {request.inject?.length ? (<><dt>Injected</dt><dd>{request.inject.join(", ")}</dd></>) : null}
      {request.env && Object.keys(request.env).length ? (<><dt>Environment</dt><dd>{Object.entries(request.env).map(([k, v]) => `${k}=${v}`).join(" ")}</dd></>) : null}
    </dl>
  );
}

function Relaunch({ request }: { request: ReplayRequest }) {
  const { call, can } = useAuth();
  const navigate = useNavigate();
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  if (!can("replay")) return <p className="muted" role="note">Launching needs a token with the replay scope.</p>;
  const launch = async () => {
    setBusy(true);
    setProblem(null);
    try {
      const job = await launchReplay(call, request);
      navigate(`/replays/${job.id}`);
    } catch (error) {
      setProblem(problemOf(error));
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" onClick={launch} disabled={busy}>{busy ? "Launching…" : "Launch this replay"}</button>
      {problem ? <ProblemMessage problem={problem} context="Launch" /> : null}
    </>
  );
}

export function NewReplayPage() {
  const [search] = useSearchParams();
  const request = requestFromUrl(search);
  if (!request) return <p role="alert">This link names no replay: it needs at least <code>?process=PID@NODE</code>.</p>;
  return (
    <section className="panel" aria-labelledby="new-replay-title">
      <h2 id="new-replay-title">Launch a replay</h2>
      <RequestFacts request={request} />
      <Relaunch request={request} />
    </section>
  );
}

export function ReplayPage() {
  const { job = "" } = useParams();
  const [search] = useSearchParams();
  const vs = search.get("vs");
  const answer = search.get("answer");
  const main = useFollowed(job);
  const other = useFollowed(vs && /^[0-9a-f]{32}$/.test(vs) ? vs : null);
  const request: ReplayRequest | null = (main.column.job as ReplayJob | null)?.request ?? null;
  const title = (c: Omit<Column, "title">, fallback: string) => (c.job?.request.mode === "whatif" ? "What-if" : c.job?.request.mode === "exact" ? "Exact" : fallback);
  return (
    <section className="panel" aria-labelledby="replay-page-title">
      <h2 id="replay-page-title">Replay {job.slice(0, 8)}{vs ? ` beside ${vs.slice(0, 8)}` : ""}</h2>
      {main.problem ? <ProblemMessage problem={main.problem} context={`Replay ${job}`} /> : null}
      {other.problem ? <ProblemMessage problem={other.problem} context={`Replay ${vs}`} /> : null}
      {!main.column.job && !main.problem ? <Loading what="the replay" /> : null}
      {request ? <RequestFacts request={request} /> : null}
      {main.column.job ? (
        <ReplayComparison needle={answer} columns={[
          { title: title(main.column, "This replay"), ...main.column },
          ...(vs ? [{ title: title(other.column, "Compared with"), ...other.column }] : []),
        ]} />
      ) : null}
      {request ? (
        <p>
          <Relaunch request={request} /> <Link to={relaunchUrl(request)}>Link to launch it again</Link>
        </p>
      ) : null}
    </section>
  );
}
