"""``kprobe replay`` from a lake written like the agent writes it (root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kprobe.cli import main
from kprobe.lake import LakeWriter
from kprobe.lake.storage import LakeSettings, resolve
from kprobe.replay_sandbox.engine import ReplayOptions, replay
from tests.integration.test_replay_recorder import RecordedRun, record
from tests.support import require, require_binary, require_root

ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]


def _to_lake(run: RecordedRun, lake_dir: Path) -> str:
    """Append the recorded rows to a local lake; returns PID@NODE."""
    writer = LakeWriter(resolve(LakeSettings(lake=str(lake_dir))), run.process.node)
    writer.append("processes", run.processes)
    writer.append("syscalls", run.syscalls)
    writer.append("syscall_data", run.syscall_data)
    return f"{run.process.pid}@{run.process.node}"


@pytest.fixture
def recorded_cat(tmp_path: Path, lake_dir: Path) -> tuple[str, Path]:
    require_root()
    require_binary("bwrap")
    (tmp_path / "ledger.txt").write_text("debit 100\ncredit 100\n")
    (tmp_path / "other.txt").write_text("debit 999\n")
    run = record(["/bin/cat", str(tmp_path / "ledger.txt")], cwd=str(tmp_path), env=ENV)
    assert run.exit_code == 0
    return _to_lake(run, lake_dir), tmp_path


def test_replay_from_the_lake_json(recorded_cat: tuple[str, Path], lake_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    process, _ = recorded_cat
    # WHEN replayed from the lake THEN the expectation (exact replay) holds: exit 0
    code = main(["replay", "--lake", str(lake_dir), "--process", process, "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["status"] == "completed" and report["outputs_match"]
    assert report["exit_code"] == 0 == report["recorded_exit_code"]
    assert report["outputs"][0]["recorded_bytes"] == len("debit 100\ncredit 100\n")


def test_expectations_decide_the_exit_code(recorded_cat: tuple[str, Path], lake_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    process, tmp_path = recorded_cat
    base = ["replay", "--lake", str(lake_dir), "--process", process]
    other = f"1={tmp_path / 'other.txt'}"
    # a what-if on another file: it exits 0, but its output no longer matches
    assert main([*base, "--set-arg", other, "--expect-exit", "0"]) == 0
    assert main([*base, "--set-arg", other, "--expect-output-match"]) == 1
    # in exact mode the changed argument is a divergence
    assert main([*base, "--set-arg", other, "--mode", "exact"]) == 1
    text = capsys.readouterr().out
    assert "divergence in thread" in text and "other.txt" in text


def test_bad_input_is_exit_2(lake_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    assert main(["replay", "--lake", str(lake_dir), "--process", "nonsense"]) == 2
    assert main(["replay", "--lake", str(lake_dir), "--process", "1@nowhere"]) == 2
    assert main(["replay", "--lake", str(lake_dir), "--process", "1@n",
                 "--inject", "fsync"]) == 2
    err = capsys.readouterr().err
    assert "PID@NODE" in err and "no exec of pid 1" in err


def test_the_installed_command_runs_as_a_subprocess(recorded_cat: tuple[str, Path],
                                                    lake_dir: Path) -> None:
    process, _ = recorded_cat
    # the console script installed next to the interpreter running the tests (any VENV)
    kprobe = Path(sys.executable).parent / "kprobe"
    require(kprobe.exists(), f"the kprobe command installed next to {sys.executable}")
    result = subprocess.run([str(kprobe), "replay", "--lake", str(lake_dir), "--process",
                             process, "--inject", "read:+5ms"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "whatif mode: completed" in result.stdout
    assert "injected 'read:+5ms'" in result.stdout


def test_a_program_stuck_for_real_hits_the_deadline(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    # GIVEN a what-if that blocks in a syscall that runs for real (pause)
    run = record(["/bin/true"], cwd=str(tmp_path), env=ENV)
    options = ReplayOptions(exe="/usr/bin/python3", timeout_s=2.0,
                            argv=["python3", "-S", "-c", "import signal; signal.pause()"])
    # WHEN replayed THEN the watchdog ends it at the deadline
    report = replay(run.recording(), options)
    assert report.status == "timeout", report.render_text()
    assert report.stats["wall_s"] < 30
