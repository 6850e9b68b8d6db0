"""Process trees and what a process starts with, recorded by the agent with the defaults and
replayed by ``kprobe replay`` (root).

``--tree`` replays a process and every process it started, each served from its own
recording: pipes between them carry the recorded bytes (reads are served, writes compared),
each one's outputs and end are compared, and the parent's waits get the child the
recording reaped, with the recorded pids. The process context comes from the kernel at exec
(working directory, descriptors, umask, rlimits, ids, hostname): the tracee starts with
exactly the recorded descriptor table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.agent_replay import (
    pid_of,
    record,
    replay,
    stdout_of,
    summary,
    wait_for,
)
from tests.support import REPO, free_port, require_binary, require_root

pytestmark = pytest.mark.timeout(600)
PREFORK = str(REPO / "tests" / "programs" / "replay_prefork_server.py")
MAKEFILE = """all: out.txt.gz sorted.txt
out.txt: in.txt
\ttr a-z A-Z < in.txt > out.txt
out.txt.gz: out.txt
\tgzip -c out.txt > out.txt.gz
sorted.txt: in.txt
\tsort -r in.txt | tee sorted.txt
"""


def _exact_tree(report: dict[str, object], processes: int) -> list[dict[str, object]]:
    assert report["status"] == "completed" and report["outputs_match"], summary(report)
    children = report["children"]
    assert isinstance(children, list) and len(children) >= processes, children
    for child in children:
        assert child["ended"] and child["exit_matches"] and child["outputs_match"], child
    return children


def test_the_issues_pipeline_replays_as_a_tree_and_its_shell_alone(tmp_path: Path) -> None:
    """``sh -c 'echo hello | gzip -c | gzip -dc'`` in a working directory of its own: the
    shell replays in the directory the kernel said (it checks $PWD against it), and with
    --tree so do its three children, the middle one reading what the first wrote."""
    require_root()
    work = tmp_path / "bt"
    work.mkdir()
    recorded = record(tmp_path, "sh", "-c", "echo hello | gzip -c | gzip -dc", cwd=work)
    assert recorded.run.returncode == 0 and recorded.run.stdout == "hello\n", recorded.run
    shell = pid_of(recorded.lake, "echo hello | gzip -c | gzip -dc")
    code, alone = replay(recorded.lake, shell)
    assert code == 0 and alone["status"] == "completed", alone
    code, tree = replay(recorded.lake, shell, "--tree")
    assert code == 0, tree
    children = _exact_tree(tree, 3)
    outputs = {" ".join(c["argv"]): c["replayed_text"].get("1", "") for c in children}
    assert outputs["gzip -dc"] == "hello\n", outputs
    assert outputs["gzip -c"].startswith("\x1f\ufffd"), outputs  # gzip's magic (replaced)


def test_make_replays_as_a_tree_with_every_recipe(tmp_path: Path) -> None:
    require_root()
    require_binary("make")
    work = tmp_path / "build"
    work.mkdir()
    (work / "Makefile").write_text(MAKEFILE)
    (work / "in.txt").write_text("debit 100\ncredit 50\n")
    recorded = record(tmp_path, "make", cwd=work)
    assert recorded.run.returncode == 0, recorded.run.stderr[-2000:]
    code, report = replay(recorded.lake, pid_of(recorded.lake, "make"), "--tree")
    assert code == 0, summary(report)
    children = _exact_tree(report, 7)  # 3 recipe shells, tr, gzip, sort, tee
    names = {c["argv"][0] for c in children if c["argv"]}
    assert {"tr", "gzip", "sort", "tee"} <= names, names
    # make echoed each recipe, tee printed the sorted lines: all that reached the terminal
    # (each process's own output is compared exactly above; how two processes' writes to
    # one terminal interleave is not replayed: make's "Leaving directory" came before or
    # after tee's lines from run to run)
    tee = next(c for c in children if c["argv"][:1] == ["tee"])
    replayed = stdout_of(report) + tee["replayed_text"]["1"]
    assert sorted(replayed.splitlines()) == sorted(recorded.run.stdout.splitlines())


def test_a_pre_forking_server_replays_with_both_workers(tmp_path: Path) -> None:
    """The parent listens and forks two workers that accept on the shared socket; four
    requests come from curl (not recorded). Replayed with --tree, each worker serves the
    connections it accepted when recorded and exits with the count it served; the parent
    reaps both (wait for the recorded child, recorded pids) and prints the total."""
    require_root()
    require_binary("curl")
    port = free_port()
    out = tmp_path / "server.out"
    with open(out, "w") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-P", "-m", "kprobe", "run", "--payloads", "--lake",
             str(tmp_path / "lake"), "--spool-dir", str(tmp_path / "spool"), "--no-otlp",
             "--no-metrics", "--", "/usr/bin/python3", PREFORK, str(port)],
            stdout=sink, stderr=subprocess.PIPE, cwd=REPO)
        try:
            wait_for(out, "ready")  # printed once it listens (a probe would take a worker)
            for n in range(4):
                got = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/pay/{n}"],
                                     capture_output=True, text=True, timeout=30, check=True)
                assert "served /pay/" in got.stdout
            assert agent.wait(timeout=120) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert "4 requests served by 2 workers" in out.read_text()
    code, report = replay(tmp_path / "lake", pid_of(tmp_path / "lake", PREFORK), "--tree")
    assert code == 0, summary(report)
    workers = _exact_tree(report, 2)
    assert sorted(c["exit_code"] for c in workers) == [2, 2]
    assert "4 requests served by 2 workers" in stdout_of(report)


def test_a_child_that_runs_another_program_than_recorded_is_caught(tmp_path: Path) -> None:
    """The control: the children are really checked. The tool the pipeline ran is replaced
    by another program after the recording; the tree replay diverges in that child."""
    require_root()
    tool = tmp_path / "tool"
    shutil.copy("/usr/bin/echo", tool)
    recorded = record(tmp_path, "sh", "-c", f"{tool} settled | gzip -c | gzip -dc")
    assert recorded.run.stdout == "settled\n", recorded.run
    shell = pid_of(recorded.lake, f"{tool} settled | gzip -c | gzip -dc")
    code, report = replay(recorded.lake, shell, "--tree")
    assert code == 0, summary(report)
    shutil.copy("/usr/bin/true", tool)
    code, report = replay(recorded.lake, shell, "--tree")
    assert code == 1 and report["status"] == "diverged", report


def test_the_tracee_starts_with_exactly_the_recorded_descriptors(tmp_path: Path) -> None:
    """A program started with descriptor 5 open (inherited from its shell, never used)
    creates three descriptors for real (memfd_create runs in the replay): the kernel hands
    out the lowest free numbers, 3, 4 and 6, only if 5, and nothing else of the
    replayer's, is open in the tracee."""
    require_root()
    code = "import os; print([os.memfd_create('ledger') for _ in range(3)])"
    recorded = record(tmp_path, "sh", "-c", f'exec 5</dev/null; exec /usr/bin/python3 -c "{code}"')
    assert recorded.run.stdout == "[3, 4, 6]\n", recorded.run
    status, report = replay(recorded.lake, pid_of(recorded.lake, code))
    assert status == 0 and report["outputs_match"], report
    assert stdout_of(report) == "[3, 4, 6]\n"
