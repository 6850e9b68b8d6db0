"""The console's time to first render in headless Debian Chromium (prints, asserts nothing).

    .venv/bin/python -m tests.bench.bench_console [--runs 5] [--nodes 500] [--events 100000]

Builds the bench page (``console/bench``: the console's real ``CausalGraph`` and
``TimelineChart`` on synthetic data) into build/console-bench, serves it on 127.0.0.1 and
loads it ``--runs`` times per case in a fresh page:

- graph: a ``--nodes``-node causal graph (40 % spans, 20 % kernel episodes, 40 % threads,
  one link each), from the start of the render to the first frame after the D3 force
  layout and React's commit;
- timeline: ``--events`` intervals on 24 lanes over 1 s, from the start of the render
  (model built, ECharts initialised) to ECharts' "finished" of the first frame; then five
  zooms (down to 1/256 of the range and back out), each timed to "finished".

Goal (issue 18): first render <= 1 s for each.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import threading
from pathlib import Path
from typing import Any

from tests.browser import REPO, build_console, chromium

OUT = REPO / "build" / "console-bench"


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def run_case(browser: Any, url: str, done: str) -> dict[str, Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(url)
        page.wait_for_function(f"window.__bench && window.__bench.done === {done!r}",
                               timeout=120_000)
        result: dict[str, Any] = page.evaluate("window.__bench")
        return result
    finally:
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    build_console("bench")
    server, port = serve(OUT)
    base = f"http://127.0.0.1:{port}/index.html"
    try:
        with chromium() as browser:
            print(f"Chromium {browser.version}, {args.runs} runs per case (first run "
                  "included: a fresh page each time)")
            graphs = [run_case(browser, f"{base}?what=graph&n={args.nodes}", "graph")
                      for _ in range(args.runs)]
            times = [g["graph_ms"] for g in graphs]
            print(f"graph, {graphs[0]['graph_nodes']} nodes: first render median "
                  f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max "
                  f"{max(times):.0f}; goal <= 1000 ms)")
            timelines = [run_case(browser, f"{base}?what=timeline&n={args.events}",
                                  "timeline") for _ in range(args.runs)]
            times = [t["timeline_ms"] for t in timelines]
            model = [t["timeline_model_ms"] for t in timelines]
            zooms = [t["zoom_ms_max"] for t in timelines]
            print(f"timeline, {timelines[0]['timeline_events']:,} events: first render median "
                  f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max "
                  f"{max(times):.0f}; of which building the model {statistics.median(model):.0f}"
                  f" ms; goal <= 1000 ms)")
            print(f"timeline zooms (x4 steps to 1/256 of the range, then out): slowest step "
                  f"median {statistics.median(zooms):.0f} ms (each run: "
                  f"{'; '.join(t['zoom_ms'] for t in timelines)} ms)")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
