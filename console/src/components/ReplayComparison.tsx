// Replays side by side: how each ended, the answer it gave (the HTTP response naming the
// transaction, where the program speaks HTTP), its outputs against the recording, the
// syscalls served from the recording and the time taken.
import { Link } from "react-router-dom";
import type { ReplayJob, ReplayReport } from "../api/types";
import { fmtDuration } from "../lib/format";
import { answerFor } from "../lib/http";
import type { ReplayResult } from "../lib/replays";

export interface Column {
  title: string;
  job: ReplayJob | null;
  result: ReplayResult | null;
}

function exit(report: ReplayReport): string {
  if (report.exit_signal !== null && report.exit_signal !== undefined) {
    return `killed by signal ${report.exit_signal}${report.status === "end_of_recording" ? " (at the end of the recording)" : ""}`;
  }
  return report.exit_code === null ? "still running at the end" : `exit ${report.exit_code}`;
}

function Answer({ report, needle }: { report: ReplayReport; needle: string | null }) {
  if (typeof report.replayed_text === "string") {
    return <p className="muted">The answer is hidden: reading what a program wrote needs the payloads scope.</p>;
  }
  const answer = answerFor(report.replayed_text, needle);
  if (!answer) return <p className="muted">No HTTP answer{needle ? ` naming ${needle}` : ""} in its output.</p>;
  return (
    <div className="answer">
      <p className={`http-status ${answer.status >= 400 ? "bad" : "good"}`} data-testid="http-status">
        HTTP {answer.status} {answer.reason}
      </p>
      <pre className="answer-body">{answer.body}</pre>
    </div>
  );
}

function ColumnView({ column, needle }: { column: Column; needle: string | null }) {
  const { job, result } = column;
  const report = result?.report ?? null;
  return (
    <section className="replay-column" aria-label={`${column.title} replay`} data-testid={`replay-${column.title.toLowerCase().replace(/[^a-z]+/g, "-")}`}>
      <h4>{column.title}</h4>
      {job ? (
        <p>
          <Link to={`/replays/${job.id}`}>Job {job.id.slice(0, 8)}</Link>:{" "}
          <span className={`job-status ${job.status}`}>
            {job.status === "failed" && result?.report ? "ran; its expectation did not hold" : job.status}
          </span>
          {job.status === "running" ? <span role="status"> (replaying…)</span> : null}
        </p>
      ) : <p className="muted">Not run yet.</p>}
      {job?.error ? <p className="problem" role="alert">{job.error}</p> : null}
      {report ? (
        <>
          <Answer report={report} needle={needle} />
          <dl className="facts">
            <dt>Replay</dt><dd>{report.mode}: {report.status.replace(/_/g, " ")}</dd>
            <dt>Exit</dt><dd>{exit(report)}</dd>
            <dt>Outputs</dt><dd>{report.outputs_match ? "the same as recorded" : "differ from the recording"}</dd>
            <dt>Syscalls served</dt><dd>{(report.stats.served ?? 0).toLocaleString("en")}</dd>
            <dt>Time</dt><dd>{report.stats.wall_s !== undefined ? `${report.stats.wall_s.toFixed(2)} s replaying` : "–"}
              {job?.finished_ns && job.started_ns ? `, ${fmtDuration(job.finished_ns - job.started_ns)} as a job` : ""}</dd>
          </dl>
          <table className="outputs">
            <caption>Outputs against the recording</caption>
            <thead><tr><th scope="col">fd</th><th scope="col">recorded</th><th scope="col">replayed</th><th scope="col">verdict</th></tr></thead>
            <tbody>
              {report.outputs.map((o) => (
                <tr key={o.fd} className={o.match ? "" : "differs"}>
                  <td>{o.fd}</td>
                  <td>{o.recorded_bytes} B{!o.match && o.recorded ? <pre>{o.recorded}</pre> : null}</td>
                  <td>{o.replayed_bytes} B{!o.match && o.replayed ? <pre>{o.replayed}</pre> : null}</td>
                  <td>{o.match ? "same" : `differs at byte ${o.first_difference}`}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {report.notes.length ? <ul className="notes">{report.notes.map((n, i) => <li key={i}>{n}</li>)}</ul> : null}
        </>
      ) : null}
    </section>
  );
}

export function ReplayComparison({ columns, needle }: { columns: Column[]; needle: string | null }) {
  return (
    <div className="replay-compare">
      {columns.map((c, i) => <ColumnView key={i} column={c} needle={needle} />)}
    </div>
  );
}
