"""Runtimes an exact replay cannot follow say so up front (root): a Go binary and a HotSpot
JVM, installed from Debian (golang-go, default-jre-headless), recorded with the defaults and
replayed; the report names the mechanism before any divergence (replay_sandbox/runtimes.py).
Node, which replays, is in test_replay_programs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.agent_replay import pid_of, record, replay
from tests.support import require_binary, require_root

pytestmark = pytest.mark.timeout(600)

GO_PROGRAM = """package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"sync"
)

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	sums := make([][32]byte, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sums[i] = sha256.Sum256(append(data, byte(i)))
		}(i)
	}
	wg.Wait()
	for i, s := range sums {
		fmt.Printf("%d %x\\n", i, s[:8])
	}
}
"""
JAVA_PROGRAM = """public class Ledger {
    public static void main(String[] args) {
        long sum = 0;
        for (int i = 0; i < 1000; i++) sum += i * (long) i;
        System.out.println("sum=" + sum);
    }
}
"""


def test_a_go_binary_is_named_as_such_before_any_divergence(tmp_path: Path) -> None:
    require_root()
    go = require_binary("go")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.go").write_text(GO_PROGRAM)
    (tmp_path / "src" / "go.mod").write_text("module ledger\ngo 1.19\n")
    subprocess.run([go, "build", "-o", str(tmp_path / "ledger")], cwd=tmp_path / "src",
                   check=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                    "GOCACHE": str(tmp_path / "cache"),
                                    "GOPATH": str(tmp_path / "gopath")})
    recorded = record(tmp_path, str(tmp_path / "ledger"), "/etc/os-release")
    assert recorded.run.returncode == 0 and len(recorded.run.stdout.splitlines()) == 4
    code, report = replay(recorded.lake, pid_of(recorded.lake, str(tmp_path / "ledger")))
    notes = " ".join(report["notes"])
    assert "a Go program" in notes and "vDSO itself" in notes, report["notes"]
    # a replay that is not exact says so with exit 1: it diverged, timed out, or ran to the
    # end with other output (ciC2: completed, outputs_match false, exit 1)
    if report["status"] != "completed" or not report["outputs_match"]:
        assert code == 1 and report["status"] in ("diverged", "timeout", "completed"), report


def test_a_hotspot_jvm_is_named_as_such_before_any_divergence(
        tmp_path: Path) -> None:
    require_root()
    require_binary("java")
    javac = require_binary("javac")
    (tmp_path / "Ledger.java").write_text(JAVA_PROGRAM)
    subprocess.run([javac, str(tmp_path / "Ledger.java")], cwd=tmp_path, check=True)
    recorded = record(tmp_path, "java", "-XX:-UsePerfData", "-cp", str(tmp_path), "Ledger")
    assert recorded.run.returncode == 0 and "sum=332833500" in recorded.run.stdout
    code, report = replay(recorded.lake, pid_of(recorded.lake, "Ledger"), "--timeout", "30")
    assert "a HotSpot JVM" in " ".join(report["notes"]), report["notes"]
    if report["status"] != "completed" or not report["outputs_match"]:
        assert code == 1 and report["status"] in ("diverged", "timeout", "completed"), report
