"""`kprobe demo` as a user runs it: real processes, real spans, answers from the lake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lake import LakeSettings, connect, resolve


def test_demo_records_the_payment_workload_and_answers_sql(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [sys.executable, "-m", "kprobe", "demo", "--lake", str(lake), "--payments", "40",
         "--format", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    per_op = {r["name"]: r["spans"] for r in result["queries"]["spans per operation"]["rows"]}
    assert per_op["POST /payments"] == 40
    assert per_op["risk.check"] == 40
    by_outcome = result["queries"]["payments by outcome"]["rows"]
    outcomes = {r["status"]: r["payments"] for r in by_outcome}
    # Every payment the risk check refused is a failure, and only those are.
    assert outcomes.get("ERROR", 0) + per_op.get("settlement.write", 0) == 40
    assert outcomes.get("ERROR", 0) + outcomes.get("UNSET", 0) == 40
    failed = result["queries"]["failed payments"]["rows"]
    assert len(failed) == min(5, outcomes.get("ERROR", 0))
    for row in failed:
        assert row["status_message"] == "risk limit exceeded"
        assert row["amount_inr"] >= 200_000
        assert row["pid"] and row["tid"]

    # The lake stays for exploration, with parent/child links intact.
    con = connect(resolve(LakeSettings(lake=str(lake))))
    orphans = con.execute(
        "SELECT count(*) FROM spans c LEFT JOIN spans p ON c.parent_span_id = p.span_id "
        "WHERE c.parent_span_id IS NOT NULL AND p.span_id IS NULL").fetchone()
    assert orphans == (0,)
    (settled,) = con.execute(
        "SELECT count(*) FROM spans WHERE name = 'settlement.write'").fetchone()
    assert settled == per_op.get("settlement.write", 0)
