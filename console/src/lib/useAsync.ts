// A value loaded by an async function: loading, its value, or the problem that stopped it.
import { useEffect, useState } from "react";
import { problemOf } from "../api/client";
import type { Problem } from "../api/types";

export type Loaded<T> =
  | { state: "loading" }
  | { state: "done"; value: T }
  | { state: "failed"; problem: Problem };

export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Loaded<T> {
  const [loaded, setLoaded] = useState<Loaded<T>>({ state: "loading" });
  useEffect(() => {
    const controller = new AbortController();
    setLoaded({ state: "loading" });
    load(controller.signal)
      .then((value) => !controller.signal.aborted && setLoaded({ state: "done", value }))
      .catch((error: unknown) => !controller.signal.aborted && setLoaded({ state: "failed", problem: problemOf(error) }));
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return loaded;
}
