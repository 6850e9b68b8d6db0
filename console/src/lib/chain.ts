// The causal chain drawn from the explanation's typed steps (the API returns data, not
// text): an event line shows the time since the event line above it; a kernel, remote or
// wait line sits under the operation that suffered it, one step further in per thread
// followed; failures and missed cutoffs are flush with the bar.
import type { ExplainedTransaction } from "../api/types";
import { fmtDuration } from "./format";

export const CHAIN_LEGEND = "left column: time since the event line above; KERNEL lines: what delayed the operation above them, ← who or why";

export function chainLines(explained: ExplainedTransaction): string[] {
  const lines: string[] = [];
  let lastEvent = explained.start_ns;
  for (const step of explained.steps) {
    const why = step.detail ? `  ← ${step.detail}` : "";
    if (step.kind === "event") {
      lines.push(step.depth === 0 ? `[${step.label}]` : `  | ${fmtDuration(step.ts_ns - lastEvent)}  [${step.label}]`);
      lastEvent = step.ts_ns;
    } else if (step.kind === "kernel") {
      lines.push(`  |   ${"  ".repeat(step.indent ?? 0)}[KERNEL: ${step.label}]${why}`);
    } else if (step.kind === "remote") {
      lines.push(`  |   [${step.label}]`);
    } else {
      lines.push(`  [${step.label}]${why}`);
    }
  }
  return lines;
}
