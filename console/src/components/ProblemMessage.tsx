// An API problem (RFC 9457) as a message: what failed and why, never a blank page.
import type { Problem } from "../api/types";

export function ProblemMessage({ problem, context }: { problem: Problem; context?: string }) {
  return (
    <div className="problem" role="alert">
      <strong>
        {context ? `${context}: ` : ""}
        {problem.title}
        {problem.status ? ` (${problem.status})` : ""}
      </strong>
      <p>{problem.detail}</p>
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}
