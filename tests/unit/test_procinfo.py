"""/proc enrichment: the fields of a real child process we started, read back exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kprobe.capture_agent.procinfo import container_id, processes_table, read_process


def test_reads_exe_argv_env_cwd_and_parent_of_a_live_process(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "arg with space"],
        stdin=subprocess.PIPE, cwd=tmp_path, env={"KPROBE_TEST_MARK": "42"},
    )
    try:
        info = read_process(child.pid)
    finally:
        child.communicate(b"")
    assert info.ppid == os.getpid()
    assert info.exe == os.path.realpath(sys.executable)
    assert info.argv == [sys.executable, "-c", "import sys; sys.stdin.read()", "arg with space"]
    assert info.env == ["KPROBE_TEST_MARK=42"]
    assert info.cwd == str(tmp_path)
    assert child.pid in info.threads
    assert info.cgroup is not None and info.cgroup.startswith("/")


def test_a_vanished_process_has_null_fields_not_guesses() -> None:
    info = read_process(2**22 + 12345)  # above pid_max: never exists
    assert info.exe is None and info.argv is None and info.comm is None


def test_container_ids_from_common_runtimes() -> None:
    cid = "a" * 64
    assert container_id(f"/system.slice/docker-{cid}.scope") == cid
    assert container_id(f"/kubepods/burstable/pod1/cri-containerd-{cid}.scope") == cid
    assert container_id("/user.slice/user-0.slice/session-1.scope") is None


def test_processes_table_matches_lake_schema() -> None:
    from kprobe.lake._batches import conform
    from kprobe.lake.schema import TABLES

    table = processes_table([read_process(os.getpid())], ts_ns=1)
    out = conform(TABLES["processes"], table, node="n", batch_id="b")
    assert out.column("pid").to_pylist() == [os.getpid()]
