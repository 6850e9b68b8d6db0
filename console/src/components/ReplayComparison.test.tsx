import { render, screen, within } from "@testing-library/react";
import { MemoryRouter } from "react-router-dom";
import { describe, expect, it } from "vitest";
import type { ReplayJob } from "../api/types";
import { answerFor, httpAnswers } from "../lib/http";
import { report } from "../test/fixtures";
import { ReplayComparison } from "./ReplayComparison";

function job(id: string, mode: "exact" | "whatif"): ReplayJob {
  return {
    id, kind: "replay", status: "succeeded", request: { process: "8713@vm", mode }, runner: "subprocess", owner: "h:1",
    created_ns: 0, started_ns: 0, finished_ns: 2_000_000_000, heartbeat_ns: 0, exit_code: 0, expectation_held: true,
    error: null, summary: null, links: {},
  };
}

describe("HTTP answers in a replay's output", () => {
  it("splits responses and finds the one naming the payment, not the request", () => {
    const text = report(504, '{"payment_id": "PAY-1", "status": "failed"}', "exact").replayed_text as Record<string, string>;
    expect(httpAnswers("4", text["4"]).map((a) => a.status)).toEqual([200, 504]);
    expect(answerFor(text, "PAY-1")?.status).toBe(504);
    expect(answerFor(text, "PAY-0")?.status).toBe(200);
    expect(answerFor(text, "PAY-9")).toBeNull();
  });
});

describe("ReplayComparison", () => {
  it("puts the exact 504 beside the what-if 200", () => {
    const exact = report(504, '{"payment_id": "PAY-1", "status": "failed", "error": "settlement timed out after 750 ms"}', "exact");
    const whatIf = report(200, '{"payment_id": "PAY-1", "status": "settled"}', "whatif");
    render(
      <MemoryRouter>
        <ReplayComparison needle="PAY-1" columns={[
          { title: "Exact", job: job("a".repeat(32), "exact"), result: { job: job("a".repeat(32), "exact"), report: exact } },
          { title: "What-if", job: job("b".repeat(32), "whatif"), result: { job: job("b".repeat(32), "whatif"), report: whatIf } },
        ]} />
      </MemoryRouter>,
    );
    const left = screen.getByRole("region", { name: "Exact replay" });
    const right = screen.getByRole("region", { name: "What-if replay" });
    expect(within(left).getByTestId("http-status").textContent).toContain("HTTP 504");
    expect(within(right).getByTestId("http-status").textContent).toContain("HTTP 200");
    expect(within(right).getByText(/"settled"/)).toBeTruthy();
    expect(within(left).getByText("6,076")).toBeTruthy();
    expect(within(right).getByText("differs at byte 3463")).toBeTruthy();
    expect(within(left).getByText("the same as recorded")).toBeTruthy();
  });

  it("says the answer is hidden without the payloads scope", () => {
    const stripped = { ...report(504, "{}", "exact"), replayed_text: "[removed: needs the payloads scope]" };
    render(
      <MemoryRouter>
        <ReplayComparison needle="PAY-1" columns={[{ title: "Exact", job: job("c".repeat(32), "exact"), result: { job: job("c".repeat(32), "exact"), report: stripped } }]} />
      </MemoryRouter>,
    );
    expect(screen.getByText(/needs the payloads scope/)).toBeTruthy();
    expect(screen.queryByTestId("http-status")).toBeNull();
  });
});
