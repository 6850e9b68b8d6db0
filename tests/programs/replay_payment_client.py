"""A payment gateway stand-in: settles three payments over HTTP with a timeout, one at a
time, one thread, and prints each outcome.

    python replay_payment_client.py PORT TIMEOUT_MS
"""

from __future__ import annotations

import http.client
import sys


def main() -> None:
    port, timeout_ms = int(sys.argv[1]), int(sys.argv[2])
    for i, kind in enumerate(["fast", "slow", "fast"]):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_ms / 1000)
        try:
            conn.request("POST", "/settle", body=f"PAY-{i} {kind}")
            resp = conn.getresponse()
            print(f"PAY-{i}: HTTP {resp.status} {resp.read().decode()}", flush=True)
        except TimeoutError:
            print(f"PAY-{i}: HTTP 504 settlement timed out after {timeout_ms} ms", flush=True)
        finally:
            conn.close()


if __name__ == "__main__":
    main()
