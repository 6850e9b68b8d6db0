// Calls to the query API on this server (same origin). Every failure becomes an ApiError
// carrying an RFC 9457 problem: the server's own problem+json, or one made here for a
// network failure or an answer that is not JSON, so a page always has a message to show.
import type { Problem } from "./types";

export class ApiError extends Error {
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.problem = problem;
  }

  get status(): number {
    return this.problem.status;
  }
}

export interface CallOptions {
  method?: "GET" | "POST";
  body?: unknown;
  token?: string | null;
  signal?: AbortSignal;
}

function isProblem(value: unknown): value is Problem {
  return (
    typeof value === "object" && value !== null &&
    typeof (value as Problem).title === "string" && typeof (value as Problem).status === "number"
  );
}

export function problemOf(error: unknown): Problem {
  if (error instanceof ApiError) return error.problem;
  if (error instanceof DOMException && error.name === "AbortError") {
    return { type: "about:blank", title: "Cancelled", status: 0, detail: "the request was cancelled" };
  }
  const text = error instanceof Error ? error.message : String(error);
  return { type: "urn:kprobe:console:error", title: "Console error", status: 0, detail: text };
}

export async function callApi<T>(path: string, options: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(path, {
      method: options.method ?? (body === undefined ? "GET" : "POST"),
      headers, body, signal: options.signal, credentials: "omit", cache: "no-store",
    });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError({
      type: "urn:kprobe:console:network", title: "Server unreachable", status: 0,
      detail: `${path}: ${error instanceof Error ? error.message : String(error)}`,
    });
  }
  const text = await response.text();
  let parsed: unknown = undefined;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!response.ok) {
    if (isProblem(parsed)) throw new ApiError(parsed);
    throw new ApiError({
      type: "about:blank", title: response.statusText || "Error", status: response.status,
      detail: `${path} answered ${response.status}${text ? `: ${text.slice(0, 200)}` : ""}`,
    });
  }
  if (parsed === undefined && text) {
    throw new ApiError({
      type: "urn:kprobe:console:not-json", title: "Unexpected answer", status: response.status,
      detail: `${path} did not answer JSON`,
    });
  }
  return parsed as T;
}

export function query(params: Record<string, string | number | null | undefined | string[]>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => search.append(key, v));
    else search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
