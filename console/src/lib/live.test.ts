import { describe, expect, it } from "vitest";
import { initialLive, KEEP_ROWS, liveReducer, liveUrl } from "./live";

describe("live stream state", () => {
  it("counts what the server dropped and keeps a bounded window of rows, newest first", () => {
    let s = liveReducer(initialLive, { type: "open" });
    s = liveReducer(s, { type: "message", data: { type: "dropped", messages: 3, rows: 900 } });
    s = liveReducer(s, { type: "message", data: { type: "dropped", messages: 2, rows: 4 } });
    expect([s.serverDroppedMessages, s.serverDroppedRows]).toEqual([5, 904]);
    const rows = Array.from({ length: KEEP_ROWS + 5 }, (_, i) => ({ ts_ns: i, name: `r${i}` }));
    s = liveReducer(s, { type: "message", data: { type: "events", table: "spans", rows } });
    expect(s.rows).toHaveLength(KEEP_ROWS);
    expect(s.rows[0].text).toContain(`r${KEEP_ROWS + 4}`);
    expect(s.received).toBe(KEEP_ROWS + 5);
    s = liveReducer(s, { type: "message", data: { type: "failures", rows: [{ name: "boom" }] } });
    expect(s.rows[0].kind).toBe("failure");
    s = liveReducer(s, { type: "message", data: { type: "heartbeat" } });
    expect(s.rows[0].kind).toBe("failure");
  });

  it("asks the server for the filters, on this origin", () => {
    const location = { protocol: "http:", host: "127.0.0.1:8470" } as Location;
    expect(liveUrl(location, ["spans", "failure"], "12, x, 13", "vm")).toBe(
      "ws://127.0.0.1:8470/v1/live?kind=spans&kind=failure&pid=12&pid=13&node=vm");
    expect(liveUrl({ protocol: "https:", host: "k.example" } as Location, [], "", "")).toBe("wss://k.example/v1/live");
  });
});
