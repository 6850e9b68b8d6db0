"""A settlement service stand-in for the replay tests: answers each POST with a JSON body;
a request containing ``slow`` is answered after ``--slow-ms`` (the server's own sleep: this
is a test peer with a known delay, not a demo service).

    python replay_settlement_server.py PORT [--slow-ms 800]

Prints ``ready`` once listening on 127.0.0.1:PORT.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--slow-ms", type=int, default=800)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if b"slow" in body:
                time.sleep(args.slow_ms / 1000)
            out = json.dumps({"status": "settled", "request": body.decode()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            try:
                self.wfile.write(out)
            except BrokenPipeError:  # the client gave up: as in production
                pass

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
