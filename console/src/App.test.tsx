import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter } from "react-router-dom";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Shell } from "./App";
import { AuthProvider, TOKEN_KEY } from "./auth";

type Answer = { status: number; body: unknown; type?: string };

function serve(routes: Record<string, (auth: string | null) => Answer>) {
  const calls: Array<{ url: string; auth: string | null }> = [];
  vi.stubGlobal("fetch", vi.fn(async (url: string, init: RequestInit) => {
    const auth = (init.headers as Record<string, string>).Authorization ?? null;
    calls.push({ url, auth });
    const key = Object.keys(routes).find((k) => url.startsWith(k));
    const answer = key ? routes[key](auth) : { status: 404, body: { type: "urn:kprobe:problem:not-found", title: "Not found", status: 404, detail: url }, type: "application/problem+json" };
    return new Response(JSON.stringify(answer.body), { status: answer.status, headers: { "content-type": answer.type ?? "application/json" } });
  }));
  return calls;
}

const unauthorized: Answer = { status: 401, type: "application/problem+json", body: { type: "urn:kprobe:problem:unauthorized", title: "Authentication required", status: 401, detail: "unknown bearer token" } };
const who = { principal: "oncall", scopes: ["read"], auth: "token" };

function app(path: string) {
  return render(<AuthProvider><MemoryRouter initialEntries={[path]}><Shell /></MemoryRouter></AuthProvider>);
}

afterEach(() => vi.unstubAllGlobals());

describe("the console shell", () => {
  it("asks for a token, keeps it in session storage and sends it as a bearer token", async () => {
    const calls = serve({
      "/v1/whoami": (auth) => (auth === "Bearer kp_good" ? { status: 200, body: who } : unauthorized),
      "/v1/transactions": () => ({ status: 200, body: { items: [], next_cursor: null, next: null } }),
    });
    app("/");
    await screen.findByLabelText("Token");
    await userEvent.type(screen.getByLabelText("Token"), "kp_bad");
    await userEvent.click(screen.getByRole("button", { name: "Use token" }));
    await screen.findByText(/Token refused/);
    await userEvent.clear(screen.getByLabelText("Token"));
    await userEvent.type(screen.getByLabelText("Token"), "kp_good");
    await userEvent.click(screen.getByRole("button", { name: "Use token" }));
    await screen.findByText("Recent failures");
    expect(window.sessionStorage.getItem(TOKEN_KEY)).toBe("kp_good");
    await waitFor(() => expect(calls.some((c) => c.url.startsWith("/v1/transactions") && c.auth === "Bearer kp_good")).toBe(true));
    expect(calls.filter((c) => c.url.startsWith("/v1/transactions")).every((c) => c.url.includes("order=desc"))).toBe(true);
  });

  it("shows an API problem as a message, never a blank page", async () => {
    window.sessionStorage.setItem(TOKEN_KEY, "kp_good");
    serve({
      "/v1/whoami": () => ({ status: 200, body: who }),
      "/v1/transactions/PAY-X/explain": () => ({ status: 404, type: "application/problem+json", body: { type: "urn:kprobe:problem:transaction-not-found", title: "Transaction not found", status: 404, detail: "no transaction 'PAY-X' in the analysed windows" } }),
    });
    app("/transactions/PAY-X");
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toContain("Transaction not found (404)");
    expect(alert.textContent).toContain("no transaction 'PAY-X'");
  });

  it("says when the server cannot be reached, and when a console page does not exist", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => { throw new TypeError("Failed to fetch"); }));
    app("/");
    expect((await screen.findByRole("alert")).textContent).toContain("Server unreachable");
    vi.unstubAllGlobals();
    serve({ "/v1/whoami": () => ({ status: 200, body: { ...who, auth: "none", principal: "anonymous" } }) });
    app("/no/such/page");
    await screen.findByText("No page here");
    expect(screen.getByText(/read-only \(no tokens\)/)).toBeTruthy();
  });
});
