// Replays through the API: launch (POST /v1/replays), follow the job until it ends, read
// its report. A job is polled, never waited on by a sleep of guessed length.
import type { ReplayJob, ReplayReport, ReplayRequest } from "../api/types";

export type Call = <T>(path: string, options?: { method?: "GET" | "POST"; body?: unknown; signal?: AbortSignal }) => Promise<T>;

export interface ReplayResult {
  job: ReplayJob;
  report: ReplayReport | null;
}

export const TERMINAL = new Set(["succeeded", "failed", "error", "lost"]);

export async function launchReplay(call: Call, request: ReplayRequest, signal?: AbortSignal): Promise<ReplayJob> {
  return call<ReplayJob>("/v1/replays", { body: request, signal });
}

export async function followReplay(call: Call, id: string, onJob: (job: ReplayJob) => void, signal?: AbortSignal,
  pollMs = 1000): Promise<ReplayResult> {
  for (;;) {
    const job = await call<ReplayJob>(`/v1/replays/${id}`, { signal });
    onJob(job);
    if (TERMINAL.has(job.status)) {
      const report = job.status === "succeeded" || job.status === "failed"
        ? await call<ReplayReport>(`/v1/replays/${id}/report`, { signal })
        : null;
      return { job, report };
    }
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, pollMs);
      signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      }, { once: true });
    });
  }
}

// The argv index of a timeout's value: the argument after a flag naming a timeout, or the
// value of --flag=value (index, flag, value).
export function timeoutArgument(argv: string[]): { index: number; flag: string; value: string } | null {
  for (let i = 1; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!/timeout/i.test(arg) || !arg.startsWith("-")) continue;
    const eq = arg.indexOf("=");
    if (eq > 0) return { index: i, flag: arg.slice(0, eq), value: arg.slice(eq + 1) };
    if (i + 1 < argv.length) return { index: i + 1, flag: arg, value: argv[i + 1] };
  }
  return null;
}

// A replay request as a console URL (/replays/new?...): a link that relaunches it.
export function relaunchUrl(request: ReplayRequest): string {
  const search = new URLSearchParams();
  search.set("process", request.process);
  if (request.from) search.set("from", request.from);
  if (request.to) search.set("to", request.to);
  if (request.mode) search.set("mode", request.mode);
  for (const change of request.set_args ?? []) search.append("set_arg", `${change.index}=${change.value}`);
  for (const spec of request.inject ?? []) search.append("inject", spec);
  for (const [name, value] of Object.entries(request.env ?? {})) search.append("env", `${name}=${value}`);
  return `/replays/new?${search.toString()}`;
}

export function requestFromUrl(search: URLSearchParams): ReplayRequest | null {
  const process = search.get("process");
  if (!process) return null;
  const mode = search.get("mode");
  const pairs = (key: string) => search.getAll(key).map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)] as const)
    .filter(([k]) => k.length > 0);
  return {
    process, from: search.get("from"), to: search.get("to"),
    mode: mode === "exact" || mode === "whatif" ? mode : null,
    set_args: pairs("set_arg").map(([index, value]) => ({ index: Number(index), value })).filter((c) => Number.isInteger(c.index)),
    inject: search.getAll("inject"),
    env: Object.fromEntries(pairs("env")),
  };
}
