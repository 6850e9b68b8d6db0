"""Ctrl-C on `kprobe sql` cancels the statement even when it comes before DuckDB began it
(an interrupt does not stick) and however CPython's Thread.join reacts to it (after a join
interrupted by KeyboardInterrupt, is_alive() can say False while the thread still runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO, deadline_s

# The statement begins 1 s after Ctrl-C's first interrupt; it would run for minutes.
PROGRAM = r"""
import os, signal, sys, threading, time
import duckdb
from kprobe.commands import sql
from kprobe.errors import CommandError
from kprobe.lake import LakeSettings, resolve

real, seen = sql.fetch, []
def late(con, statement, max_rows):
    time.sleep(1.0)
    try:
        return real(con, statement, max_rows)
    except duckdb.Error as err:
        seen.append(type(err).__name__)
        raise
sql.fetch = late
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    sql.run_cancellable(resolve(LakeSettings(lake=sys.argv[1])),
                        "SELECT sum(a.range * b.range) FROM range(100000) a, range(1000000) b",
                        None)
except CommandError as err:
    print(err.exit_code, err.leave_now, seen, flush=True)
    os._exit(0)
"""


def test_an_interrupt_before_the_statement_begins_still_cancels_it(tmp_path: Path) -> None:
    # GIVEN a statement that begins only after Ctrl-C WHEN Ctrl-C comes
    proc = subprocess.run([sys.executable, "-P", "-c", PROGRAM, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=deadline_s(60), check=False)
    # THEN the statement was interrupted inside DuckDB and the CLI leaves with 130 at once
    # (before: the statement ran on, and closing its connection waited for it)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "130 True ['InterruptException']", proc.stdout
