"""The timeout story, recorded for replays through the API: a payment client (750 ms
timeout) against a settlement server that answers PAY-1 after 1100 ms, both under
``kprobe run --payloads`` (a replay needs the bytes each call read and wrote). The margin
is wide on purpose: with 800 ms, a client held off its CPU for 50 ms between sending and
waiting (this machine under load) got the reply in time, and the story did not happen.

    process = record_timeout_story(lake_settings, env, tmp)   # PID@NODE of the client

Recorded, PAY-1 times out (HTTP 504); replayed exactly, it times out again; with the
client's timeout (argv[3]) at 1500 ms it is settled with the reply the server really sent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kprobe.lake import LakeSettings, connect, resolve
from tests.support import REPO, free_port

PROGRAMS = REPO / "tests" / "programs"
CLIENT = PROGRAMS / "replay_payment_client.py"
TIMED_OUT = "PAY-1: HTTP 504 settlement timed out after 750 ms"
SETTLED = 'PAY-1: HTTP 200 {"status": "settled", "request": "PAY-1 slow"}'
TIMEOUT_ARG = 3  # argv: python CLIENT PORT TIMEOUT_MS


def record_timeout_story(lake: LakeSettings, env: dict[str, str], tmp: Path) -> str:
    """Record server and client into ``lake`` (``env`` reaches it: S3 credentials);
    returns the client's PID@NODE."""
    port = free_port()
    script = (f"{sys.executable} {PROGRAMS / 'replay_settlement_server.py'} {port} "
              f"--slow-ms 1100 & S=$!; "
              f"until {sys.executable} -c 'import socket; socket.create_connection("
              f"(\"127.0.0.1\", {port}))' 2>/dev/null; do :; done; "
              f"{sys.executable} {CLIENT} {port} 750; kill $S")
    run = subprocess.run(
        [sys.executable, "-P", "-m", "kprobe", "run", "--payloads", "--payload-cap", "1M",
         "--lake", lake.lake, "--spool-dir", str(tmp / "story-spool"), "--no-otlp",
         "--no-metrics", "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=180, check=False, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    assert TIMED_OUT in run.stdout, (run.stdout, run.stderr[-3000:])
    con = connect(resolve(lake))
    try:
        # the argv the kernel read at the client's exec (an execve payload)
        execs = con.execute("""SELECT pid, node, data FROM syscall_data
                               WHERE nr = 59 AND arg_index = 1 ORDER BY ts_ns""").fetchall()
    finally:
        con.close()
    clients = [(pid, node) for pid, node, argv in execs
               if str(CLIENT).encode() in bytes(argv).split(b"\0")]
    assert len(clients) == 1, f"{len(clients)} execs of {CLIENT} recorded"
    return f"{clients[0][0]}@{clients[0][1]}"
