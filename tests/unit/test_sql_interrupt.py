"""Ctrl-C on `kprobe sql` cancels the statement at any moment: while the lake's tables open,
or before DuckDB began the statement (an interrupt does not stick), whatever CPython's
Thread.join does with it (after a join interrupted by KeyboardInterrupt, is_alive() can say
False while the thread still runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, deadline_s

# Ctrl-C comes inside the step named by argv[2] (each one made 1 s slower); the statement
# would run for minutes.
PROGRAM = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
import duckdb
from kprobe.commands import sql
from kprobe.errors import CommandError
from kprobe.lake import LakeSettings, resolve

real_connect, real_fetch, seen = sql.connect, sql.fetch, []
def slow(step):
    time.sleep(0.2)  # the caller waits for the worker by now
    if step == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1.0)
def connect(location, tables):
    slow("connect")
    return real_connect(location, tables)
def fetch(con, statement, max_rows):
    slow("fetch")
    try:
        return real_fetch(con, statement, max_rows)
    except duckdb.Error as err:
        seen.append(type(err).__name__)
        raise
sql.connect, sql.fetch = connect, fetch
try:
    sql.run_cancellable(resolve(LakeSettings(lake=sys.argv[1])),
                        "SELECT sum(a.range * b.range) FROM range(100000) a, range(1000000) b",
                        None)
except CommandError as err:
    print(err.exit_code, err.leave_now, seen, flush=True)
    os._exit(0)
"""


@pytest.mark.parametrize("step", ["connect", "fetch"],
                         ids=["while the tables open", "before the statement begins"])
def test_an_interrupt_before_the_statement_runs_still_cancels_it(step: str,
                                                                  tmp_path: Path) -> None:
    # GIVEN Ctrl-C before the statement runs
    proc = subprocess.run([sys.executable, "-P", "-c", PROGRAM, str(tmp_path), step],
                          cwd=REPO, capture_output=True, text=True, timeout=deadline_s(60),
                          check=False)
    # THEN the statement, once begun, is interrupted inside DuckDB and the CLI leaves with
    # 130 (before: it ran on, and closing its connection waited for it)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "130 True ['InterruptException']", proc.stdout
