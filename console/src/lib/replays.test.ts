import { describe, expect, it } from "vitest";
import { relaunchUrl, requestFromUrl, timeoutArgument } from "./replays";

describe("replay requests", () => {
  it("finds the timeout argument to change", () => {
    const argv = ["python", "-m", "kprobe.demo.gateway", "--port", "1", "--settlement-timeout-ms", "750", "--x", "y"];
    expect(timeoutArgument(argv)).toEqual({ index: 6, flag: "--settlement-timeout-ms", value: "750" });
    expect(timeoutArgument(["curl", "--connect-timeout=5", "u"])).toEqual({ index: 1, flag: "--connect-timeout", value: "5" });
    expect(timeoutArgument(["sleep", "5"])).toBeNull();
  });

  it("round-trips a request through its relaunch URL", () => {
    const request = { process: "8713@vm", to: "1796549314134786465", mode: "whatif" as const,
      set_args: [{ index: 11, value: "1500" }], inject: ["recv fd=7:+800ms"], env: { TIMEOUT_MS: "1500" } };
    const url = relaunchUrl(request);
    expect(url.startsWith("/replays/new?")).toBe(true);
    const back = requestFromUrl(new URLSearchParams(url.split("?")[1]));
    expect(back).toEqual({ ...request, from: null });
    expect(requestFromUrl(new URLSearchParams("mode=exact"))).toBeNull();
  });
});
