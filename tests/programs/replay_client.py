"""Connects, waits up to TIMEOUT seconds for a reply, prints what happened and how long.

usage: python3 replay_client.py PORT TIMEOUT
"""

import socket
import sys
import time

port, timeout = int(sys.argv[1]), float(sys.argv[2])
conn = socket.create_connection(("127.0.0.1", port))
conn.settimeout(timeout)
started = time.monotonic()
try:
    data = conn.recv(100)
    print(f"got {data.decode()} after {(time.monotonic() - started) * 1000:.0f} ms")
except TimeoutError:
    print(f"timeout after {(time.monotonic() - started) * 1000:.0f} ms")
conn.close()
