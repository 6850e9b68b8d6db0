"""Programs nobody here wrote, from Debian packages, each recorded with the defaults
(``kprobe run --payloads -- CMD``: the default --payload-cap of 64 KiB) and replayed exactly
with ``kprobe replay``: same outputs, same exit, no call served with less than it read.
Root only.

The inputs are bigger than the payload cap (a 165 KB ledger, Python's .pyc files, node's
own files): their reads are recorded by identity and each file version stored once
(capture_agent/file_store.py), so nothing is cut. A shell pipeline is replayed as a tree
(``--tree``: every process of it served from its own recording). The suite covers
interpreters (python3, one polling its child with WNOHANG, one forking children under a
SIGCHLD handler, perl, node, lua, bc), compressors (gzip, bzip2, xz, zstd, pigz with two
threads), a database CLI (sqlite3), an HTTP client against a local server (curl), text
tools (jq, gawk, sort), openssl and git.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kprobe.lake import LakeSettings, connect, resolve
from kprobe.replay_sandbox._state import Task
from kprobe.replay_sandbox.engine import Engine, ReplayOptions
from kprobe.replay_sandbox.engine import replay as replay_in_process
from kprobe.replay_sandbox.lake_source import load
from kprobe.replay_sandbox.syscall_table import CLONES
from tests.integration.agent_replay import (
    pid_of,
    quoted,
    record,
    replay,
    stdout_of,
    summary,
    wait_listening,
)
from tests.support import free_port, require_binary, require_root

pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Program:
    name: str
    package: str  # the Debian package it comes from
    command: tuple[str, ...]  # {in}: the inputs directory, {url}: the local HTTP server
    item: str  # an argv item of the process to replay
    tree: bool = False  # replay it with every process it starts


PY = ("import json, hashlib, sys; d = open(sys.argv[1], 'rb').read(); "
      "print(json.dumps({'bytes': len(d), 'sha256': hashlib.sha256(d).hexdigest()}))")
# a poller: waitpid(WNOHANG) after a sleep found its child gone when recorded; the replay's
# sleep is virtual, so it polls while the child (run for real) may still be running
POLL = ("import subprocess, time; p = subprocess.Popen(['/bin/sh', '-c', 'exit 3']); "
        "time.sleep(0.3); print('child exit', p.poll())")
# a parent with a SIGCHLD handler forking children that exit at once: under the tracer a
# child's SIGCHLD often comes while the parent is stopped at its next fork, which the kernel
# then restarts (ERESTARTNOINTR); its 128 MiB make each fork long enough for that
FORKS = ("import os, signal; signal.signal(signal.SIGCHLD, lambda s, f: None); "
         "b = bytearray(128 << 20); b[::4096] = b'x' * len(b[::4096]); "
         "kids = [os.fork() or os._exit(i % 7) for i in range(16)]; "
         "print(sorted(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids))")
NODE = ("const c = require('crypto'), fs = require('fs'); const d = fs.readFileSync("
        "process.argv[1]); console.log(d.length, c.createHash('sha256').update(d)"
        ".digest('hex'))")
PERL = ('$n++; $s += (split /,/)[1]; END { printf "%d %d %s\\n", $n, $s, '
        'Digest::MD5::md5_hex($s) }')

PROGRAMS = (
    Program("python3", "python3", ("/usr/bin/python3", "-c", PY, "{in}/ledger.csv"), PY),
    Program("python3 polling its child", "python3", ("/usr/bin/python3", "-c", POLL), POLL),
    Program("python3 forking children", "python3", ("/usr/bin/python3", "-c", FORKS), FORKS,
            tree=True),
    Program("node", "nodejs", ("/usr/bin/node", "-e", NODE, "{in}/ledger.csv"), NODE),
    Program("perl", "perl", ("perl", "-MDigest::MD5", "-ne", PERL, "{in}/ledger.csv"), PERL),
    Program("lua", "lua5.4", ("lua5.4", "{in}/squares.lua"), "lua5.4"),
    Program("bc", "bc", ("bc", "-l", "{in}/pi.bc"), "bc"),
    Program("gzip", "gzip", ("gzip", "-c", "{in}/ledger.csv"), "gzip"),
    Program("gunzip", "gzip", ("gzip", "-dc", "{in}/ledger.csv.gz"), "-dc"),
    Program("bzip2", "bzip2", ("bzip2", "-c", "{in}/ledger.csv"), "bzip2"),
    Program("xz", "xz-utils", ("xz", "-c", "{in}/ledger.csv"), "xz"),
    Program("zstd", "zstd", ("zstd", "-q", "-c", "{in}/ledger.csv"), "zstd"),
    Program("pigz two threads", "pigz", ("pigz", "-p", "2", "-c", "{in}/ledger.csv"), "pigz"),
    Program("sqlite3", "sqlite3",
            ("sqlite3", "{in}/ledger.db",
             "SELECT status, count(*), sum(inr) FROM ledger GROUP BY status ORDER BY 1;"),
            "{in}/ledger.db"),
    Program("curl", "curl", ("curl", "-sS", "{url}/statement.txt"), "-sS"),
    Program("jq", "jq", ("jq", "-c", ".payments[] | select(.inr > 1000)", "{in}/pay.json"),
            "jq"),
    Program("gawk", "gawk",
            ("gawk", "-F,", "{s[$4] += $2} END {for (k in s) print k, s[k]}",
             "{in}/ledger.csv"), "gawk"),
    Program("sort", "coreutils", ("sort", "-t,", "-k2", "-n", "{in}/ledger.csv"), "sort"),
    Program("openssl", "openssl", ("openssl", "dgst", "-sha256", "{in}/ledger.csv"),
            "openssl"),
    Program("git", "git", ("git", "-C", "{in}/repo", "--no-pager", "log", "--format=%s %an"),
            "log"),
    # one write bigger than the payload cap: the recorder keeps its first 64 KiB, the
    # replay compares those and the length (the rest is a gap any byte fills)
    Program("dd one write over the cap", "coreutils",
            ("dd", "if={in}/ledger.csv", "bs=1M", "status=none"), "dd"),
    Program("shell pipeline", "dash",
            ("sh", "-c", "echo hello | gzip -c | gzip -dc; sort -r {in}/pay.json | wc -c"),
            "-c", tree=True),
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files bigger than the payload cap, a database and a git repository."""
    root = tmp_path_factory.mktemp("inputs")
    rng = random.Random(7)
    rows = [(f"PAY-{i:05d}", rng.randint(100, 99_999),
             rng.choice(["settled", "pending", "failed"])) for i in range(6000)]
    ledger = "".join(f"{p},{inr},INR,{s}\n" for p, inr, s in rows).encode()
    assert len(ledger) > 2 * 65536  # more than the default payload cap
    (root / "ledger.csv").write_bytes(ledger)
    (root / "ledger.csv.gz").write_bytes(gzip.compress(ledger, mtime=0))
    (root / "statement.txt").write_text("PAY-0042 INR 50000 settled\n" * 400)
    (root / "pay.json").write_text('{"payments":[{"id":"PAY-1","inr":50000},'
                                   '{"id":"PAY-2","inr":1200}]}')
    (root / "squares.lua").write_text("local t = {}\nfor i = 1, 12 do t[i] = i * i end\n"
                                      "print(table.concat(t, ','))\n")
    (root / "pi.bc").write_text("scale = 40\n4 * a(1)\nquit\n")
    with sqlite3.connect(root / "ledger.db") as db:
        db.execute("CREATE TABLE ledger(id TEXT, inr INT, status TEXT)")
        db.executemany("INSERT INTO ledger VALUES (?, ?, ?)", rows)
    repo = root / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Ops", "-c", "user.email=ops@bank.example"]
    subprocess.run([*git, "init", "-q"], check=True)
    for n in range(3):
        (repo / "settlement.txt").write_text(f"batch {n}\n")
        subprocess.run([*git, "add", "settlement.txt"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"settle batch {n}"], check=True)
    return root


@pytest.fixture(scope="module")
def server(inputs: Path) -> Iterator[str]:
    """A local HTTP server (a peer of curl, not recorded) serving the inputs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(inputs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_a_program_recorded_with_the_defaults_replays_exactly(
        program: Program, inputs: Path, server: str, tmp_path: Path) -> None:
    require_root()
    require_binary(program.command[0])
    command = [a.replace("{in}", str(inputs)).replace("{url}", server) for a in program.command]
    # GIVEN the program recorded as a user records it, with the defaults
    recorded = record(tmp_path, *command, cwd=inputs)
    assert recorded.run.returncode == 0, recorded.run.stderr[-2000:]
    assert recorded.stdout, "the program printed nothing"
    item = program.item.replace("{in}", str(inputs))
    process = pid_of(recorded.lake, item, first=program.tree)
    # WHEN it is replayed exactly from the lake
    code, report = replay(recorded.lake, process, *(("--tree",) if program.tree else ()))
    # THEN it follows its recording to the end, exits as it did, and prints what it printed
    assert code == 0, summary(report)
    assert report["status"] == "completed" and report["outputs_match"], summary(report)
    assert report["exit_code"] == report["recorded_exit_code"] == 0, report
    if program.tree:  # what reached the terminal was printed by processes of the tree
        texts = [stdout_of(report), *(str(c["replayed_text"].get("1", ""))
                                      for c in report["children"])]
        for line in recorded.run.stdout.splitlines(keepends=True):
            assert any(line in text for text in texts), (line, texts)
    else:
        assert stdout_of(report) == quoted(recorded.stdout), report
        [out] = [o for o in report["outputs"] if o["fd"] == 1]
        assert out["replayed_bytes"] == len(recorded.stdout), out
    # AND no call was served with less than it read (the cap bounds no file read)
    assert not [n for n in report["notes"] if "bytes it read" in n], report["notes"]
    if program.tree:
        assert report["children"] and all(c["exit_matches"] and c["outputs_match"]
                                           for c in report["children"]), report


def test_files_bigger_than_the_payload_cap_are_stored_once_by_identity(
        inputs: Path, tmp_path: Path) -> None:
    """Two processes read the 165 KB ledger: its content is one blob of the lake, the
    reads name it, and no read of it was cut at the 64 KiB cap."""
    require_root()
    script = f"cat {inputs}/ledger.csv > /dev/null; sha256sum < {inputs}/ledger.csv"
    recorded = record(tmp_path, "sh", "-c", script)
    assert recorded.run.returncode == 0, recorded.run.stderr
    con = connect(resolve(LakeSettings(lake=str(recorded.lake))))
    size = (inputs / "ledger.csv").stat().st_size
    [(blobs, stored)] = con.execute(
        "SELECT count(*), sum(size) FROM blobs WHERE size = ?", [size]).fetchall()
    assert (blobs, stored) == (1, size)
    [(reads, processes, named, cut)] = con.execute("""
        SELECT count(*), count(DISTINCT pid), count(DISTINCT blob), count(*) FILTER (truncated)
        FROM syscall_data WHERE blob IN (SELECT blob FROM blobs WHERE size = ?)""",
                                                   [size]).fetchall()
    assert processes == 2 and named == 1 and cut == 0 and reads >= 2


def test_a_cut_payload_is_named_with_how_to_record_it_whole(
        inputs: Path, server: str, tmp_path: Path) -> None:
    """Socket reads keep their bytes, cut at --payload-cap: curl receiving the 165 KB
    ledger, recorded with a 4 KiB cap (its reads are larger: how much larger depends on how
    the bytes arrive, so the default 64 KiB cap cut them in some runs only). The replay
    names each cut call and a cap that holds every one of them; recorded with a cap that
    holds them, the replay is exact (the control)."""
    require_root()
    require_binary("curl")
    url = f"{server}/ledger.csv"
    cut = record(tmp_path / "cut", "curl", "-sS", url, options=("--payload-cap", "4K"))
    assert cut.run.returncode == 0, cut.run.stderr
    code, report = replay(cut.lake, pid_of(cut.lake, url))
    assert code == 1 and not report["outputs_match"], report
    named = [n for n in report["notes"] if "bytes it read" in n]
    assert named and all("recvfrom(fd " in n and "--payload-cap" in n for n in named), named
    units = {"K": 1 << 10, "M": 1 << 20}
    for note in named:  # each cut call's note names a cap that holds that call's read
        m = re.search(r"served ([0-9]+) of the ([0-9]+) bytes it read .*"
                      r"record with --payload-cap ([0-9]+)([KM]) or more", note)
        assert m, note
        served, read, cap = int(m[1]), int(m[2]), int(m[3]) * units[m[4]]
        assert served == 4096 < read <= cap, note
    whole = record(tmp_path / "whole", "curl", "-sS", url, options=("--payload-cap", "1M"))
    code, report = replay(whole.lake, pid_of(whole.lake, url))
    assert code == 0 and report["outputs_match"], report
    assert not [n for n in report["notes"] if "bytes it read" in n]


MMAP = ("import mmap, sys\nwith open(sys.argv[1], 'rb') as f:\n"
        "    print(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)[:11].decode())\n")


def test_a_mapped_file_that_changed_since_the_recording_is_named(tmp_path: Path) -> None:
    """A mapping is today's file, not recorded bytes: a replay after the file changed (a
    library upgraded, a data file rewritten) names the file and both versions' size and
    mtime, read from the program's own recorded fstat. The same replay before the change
    (the control) names nothing: python's own libraries and ld.so.cache are unchanged."""
    require_root()
    data = tmp_path / "statement.txt"
    data.write_text("PAY-1 50000\n")
    recorded = record(tmp_path, "/usr/bin/python3", "-c", MMAP, str(data))
    assert recorded.run.returncode == 0 and recorded.stdout == b"PAY-1 50000\n", recorded.run
    process = pid_of(recorded.lake, MMAP)
    code, report = replay(recorded.lake, process)
    assert code == 0 and report["outputs_match"], summary(report)
    assert not [n for n in report["notes"] if "changed since the recording" in n], summary(
        report)
    # WHEN the mapped file is rewritten after the recording
    data.write_text("PAY-2 12000\n")
    os.utime(data, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    code, report = replay(recorded.lake, process)
    # THEN the replay maps today's bytes and says why they differ
    assert code == 1 and not report["outputs_match"], summary(report)
    [note] = [n for n in report["notes"] if "changed since the recording" in n]
    assert note.startswith(f"{data}, which the program maps") and "now 12 bytes modified " \
        "2023-11-14T22:13:20Z" in note, note


@pytest.fixture
def overlay(inputs: Path, tmp_path: Path) -> Iterator[Path]:
    """An overlay mount as a container's root is one: a layer on this file system with the
    ledger and a copy of a shared library, under an empty layer on a tmpfs (layers on two
    file systems: ``stat`` then names the device of the layer holding a file, the kernel the
    overlay's own)."""
    require_root()
    require_binary("mount")
    lower, top, merged = tmp_path / "lower", tmp_path / "top", tmp_path / "merged"
    for d in (lower, top, merged):
        d.mkdir()
    (lower / "ledger.csv").write_bytes((inputs / "ledger.csv").read_bytes())
    library = Path("/lib/x86_64-linux-gnu/libz.so.1").resolve()
    (lower / "libz.so.1").write_bytes(library.read_bytes())
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(top)], check=True)
    try:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={top}:{lower}", str(merged)], check=True)
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=False)
    finally:
        subprocess.run(["umount", str(top)], check=False)


def _superblock_device(path: Path) -> str:
    """major:minor of the mount at ``path``, from mountinfo (its superblock's device)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[2]
    raise AssertionError(f"{path} is not a mount point")


def test_reads_through_an_overlay_are_stored_and_replayed(overlay: Path, tmp_path: Path
                                                          ) -> None:
    """The dynamic loader reads a library's ELF header and Python reads the 165 KB ledger,
    both through an overlay (as in every container, and the matrix guests' root): each
    version is stored (nothing lost) and the exact replay follows the recording to the end.
    (Before the agent knew overlays, both reads were lost as 'file_gone' and the replay
    diverged at the library's close.)"""
    st = (overlay / "ledger.csv").stat()
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert device != _superblock_device(overlay), "the premise: stat names another device"
    code = ("import ctypes, hashlib, sys; ctypes.CDLL(sys.argv[2]); "
            "print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())")
    recorded = record(tmp_path, "/usr/bin/python3", "-c", code, str(overlay / "ledger.csv"),
                      str(overlay / "libz.so.1"))
    assert recorded.run.returncode == 0, recorded.run.stderr
    con = connect(resolve(LakeSettings(lake=str(recorded.lake))))
    assert con.execute("SELECT coalesce(sum(count), 0) FROM lost WHERE source = 'blobs'"
                       ).fetchone() == (0,)
    size = (overlay / "ledger.csv").stat().st_size
    assert con.execute("SELECT count(*) FROM blobs WHERE size = ?", [size]).fetchone() == (1,)
    code_, report = replay(recorded.lake, pid_of(recorded.lake, code))
    assert code_ == 0 and report["status"] == "completed" and report["outputs_match"], report
    assert stdout_of(report) == quoted(recorded.stdout), report
    assert not [n for n in report["notes"] if "bytes it read" in n], report["notes"]


def test_a_fork_the_kernel_restarts_for_a_signal_replays_exactly(
        inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ptrace a signal can reach a program where, unwatched, none did: a child's
    SIGCHLD that comes while its parent sits in the tracer's stop at its next fork is
    pending when the fork begins, and the kernel backs the fork out (ERESTARTNOINTR) and
    runs it again after the handler. The shell pipeline met this under load in CI ("expected
    close, got clone": the second try took the row after the fork's). Here the signal is
    made to come at that moment every time: the tracer sends the shell a SIGCHLD at the
    fork of its second pipeline process, before letting it run the call."""
    require_root()
    require_binary("sh")
    command = ["sh", "-c", f"echo hello | gzip -c | gzip -dc; sort -r {inputs}/pay.json | wc -c"]
    recorded = record(tmp_path, *command, cwd=inputs)
    assert recorded.run.returncode == 0, recorded.run.stderr[-2000:]
    pid, node = pid_of(recorded.lake, "-c", first=True).split("@")
    recording = load(resolve(LakeSettings(lake=str(recorded.lake))), int(pid), node, tree=True)
    forks = {"root": 0, "signalled": 0}
    real = Engine._run_real

    def signalled_at_second_fork(self: Engine, task: Task, regs: Any, spec: Any, row: Any,
                                 args: Any) -> None:
        if spec.nr in CLONES and task.proc is not None and task.proc.rec_pid == int(pid):
            forks["root"] += 1
            if forks["root"] == 2:
                os.kill(task.tid, signal.SIGCHLD)  # pending while the shell is stopped here
                forks["signalled"] += 1
        real(self, task, regs, spec, row, args)

    monkeypatch.setattr(Engine, "_run_real", signalled_at_second_fork)
    report = replay_in_process(recording, ReplayOptions(hidden_paths=(str(recorded.lake),)))
    assert forks["signalled"] == 1, forks
    # THEN the replay follows its recording to the end, and the fork was restarted in it
    assert report.status == "completed" and report.outputs_match, report.render_text()
    assert report.exit_code == 0, report.render_text()
    assert report.stats.get("restarted", 0) >= 1, report.render_text()
