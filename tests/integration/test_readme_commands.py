"""Every command README.md shows, run for real; every bad input of issue 17, one line and a
documented exit code.

The commands are read from the README itself (its code blocks, and the inline code spans
that are a command with options), so the README cannot drift from the CLI: a command with
no runner below fails the test. Placeholders become real things (``L``: a lake recorded
here by ``kprobe run``, ``4721@node-a``: a process in it, ``PAY-…``: the payment of a
synthetic lake analysed here, ``T``: a tokens file); long or root-only commands run in a
cheap form (``--duration 2``, ``--fuzz 2``, a free port, ``make -n``, ``demo --help``: the
demo itself is ``tests/e2e/test_demo.py``). Root and the BPF objects are required.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kprobe.compute.window import Window
from kprobe.lake import LakeSettings, connect, resolve
from tests.support import (
    REPO,
    deadline_s,
    free_port,
    hears_ctrl_c,
    require_binary,
    require_root,
)
from tests.unit.test_compute_scenario import WINDOW_END, WINDOW_START, payment_scenario

README = REPO / "README.md"
KPROBE = [sys.executable, "-P", "-m", "kprobe"]
PAYMENT = "98721"  # the synthetic scenario's payment
PLACEHOLDER_IDS = {"PAY-0001-00042", "PAY-848477-00013", "PAY-846582-00013", "PAY-1", "ID",
                   "R-17", "PAY-waits-sem-30051-0007"}


# -- the README's commands --------------------------------------------------------------------
def readme_commands(text: str | None = None) -> list[str]:
    """Commands shown in the README: lines of code blocks starting with (``$ ``)(``sudo ``)
    ``kprobe`` or ``make``, and inline code spans that are a kprobe command with an option or
    a ``make`` target; ``a|b|c`` alternatives expanded, trailing ``# comments`` dropped."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if re.match(r"(sudo )?(kprobe|make) ", line + " ") and not re.match(
                    r"(sudo )?kprobe \S+:", line):
                found.append(line)
    without_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", without_blocks):
        span = " ".join(span.split())
        if re.fullmatch(r"(sudo )?make [a-z]+", span) or (
                re.match(r"(sudo )?kprobe [a-z]+ ", span) and " --" in span
                and not re.match(r"(sudo )?kprobe \S+:", span)):
            found.append(span)
    commands: list[str] = []
    for line in found:
        line = re.sub(r"\s+#.*$", "", line).strip()
        alternatives = re.search(r"(\S+\|\S+)", line)
        if alternatives and "'" not in alternatives[1] and '"' not in alternatives[1]:
            for option in alternatives[1].split("|"):
                commands.append(line.replace(alternatives[1], option))
        else:
            commands.append(line)
    return list(dict.fromkeys(commands))


def test_the_readme_shows_the_commands_this_file_runs() -> None:
    commands = readme_commands()
    subcommands = {shlex.split(c.removeprefix("sudo "))[1] for c in commands
                   if c.removeprefix("sudo ").startswith("kprobe ")}
    # a control: the extraction finds the main commands and the alternatives
    assert {"demo", "doctor", "run", "record", "sql", "analyze", "explain", "graph",
            "failures", "replay", "serve", "otlp", "lake"} <= subcommands, subcommands
    assert sum("kprobe sql --format" in c for c in commands) == 3
    assert not any("#" in c.split("'")[0] for c in commands)


# -- the world the commands run in --------------------------------------------------------------
@dataclass
class World:
    tmp: Path
    recorded: Path  # a lake recorded by `kprobe run --payloads -- cat ...`
    analysed: Path  # the synthetic payment lake, analysed
    process: str  # cat's PID@NODE in the recorded lake
    pid: int
    program: list[str]
    tokens: Path
    rules: Path
    ran: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def kprobe(*argv: str, env: dict[str, str] | None = None, timeout: float = 300,
           ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KPROBE, *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=deadline_s(timeout),
                          check=False)
    assert proc.returncode in ok, (argv, proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    require_root()
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("readme")
    ledger = tmp / "ledger.txt"
    ledger.write_text("debit 100\ncredit 100\n")
    program = ["/bin/cat", str(ledger), str(ledger), str(ledger)]
    recorded = tmp / "recorded"
    # README: sudo kprobe run --payloads -- ./my-service --flag (a real program, recorded)
    run = kprobe("run", "--payloads", "--lake", str(recorded), "--no-metrics", "--", *program,
                 timeout=180)
    con = connect(resolve(LakeSettings(lake=str(recorded))), ["syscalls"])
    try:  # the target's syscalls (the process family sees every exec on the host)
        found = con.execute("SELECT pid, node FROM syscalls GROUP BY ALL "
                            "ORDER BY count(*) DESC LIMIT 1").fetchone()
    finally:
        con.close()
    assert found, "kprobe run recorded no syscalls of cat"
    analysed = tmp / "analysed"
    analysed.mkdir()
    payment_scenario().write(analysed)
    window = Window(WINDOW_START, WINDOW_END)
    kprobe("analyze", "--lake", str(analysed), f"--from={window.start_ns}ns",
           f"--to={window.end_ns}ns", "--executor", "local")
    rules = tmp / "rules.yaml"
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert block, "the README's domain-rules example"
    rules.write_text(textwrap.dedent(block[1]))
    w = World(tmp, recorded, analysed, f"{found[0]}@{found[1]}", int(found[0]), program,
              tmp / "tokens.json", rules)
    w.ran["run"] = run
    return w


# -- how each README command runs here ------------------------------------------------------------
def _substitute(argv: list[str], w: World) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if arg in PLACEHOLDER_IDS:
            arg = PAYMENT
        elif arg in ("L",) and previous == "--lake":
            arg = str(w.recorded)
        elif arg in ("T", "t.json", "tokens.json") and previous == "--tokens-file":
            arg = str(w.tokens)
        elif arg == "4721@node-a" or previous == "--process":
            arg = w.process
        elif previous == "--duration" or previous == "--fuzz":
            arg = "2"
        elif previous == "--cgroup":
            arg = "/sys/fs/cgroup"
        elif previous == "--port":
            arg = str(free_port())
        elif arg.startswith("s3://"):
            arg = str(w.tmp / "otlp-lake")
        elif previous in ("-o", "--output"):
            arg = str(w.tmp / f"out-{len(w.ran)}-{arg}")
        elif previous in ("--key-file", "--public-out", "--rules"):
            arg = str(w.tmp / arg)
        elif "4721" in arg and arg.upper().startswith("SELECT"):
            arg = arg.replace("4721", str(w.pid))
        out.append(arg)
    if "--" in out:  # the program after -- is the recorded one
        out = out[:out.index("--") + 1] + w.program
    return out


Runner = Callable[[list[str], World], None]


def _run_program(argv: list[str], w: World) -> None:
    if "--" not in argv:  # `kprobe run --payloads` (inline): the fixture's own run
        argv = [*argv, "--"]
    argv = _substitute(argv, w)
    kprobe(*argv[:1], "--lake", str(w.tmp / "run-lake"), "--no-metrics", *argv[1:],
           timeout=180)


def _record(argv: list[str], w: World) -> None:
    if "--duration" not in argv:
        argv = [*argv, "--duration", "2"]
    cgroup = Path(f"/sys/fs/cgroup/memory/kprobe-readme-{os.getpid()}")  # a real cgroup
    cgroup.mkdir(exist_ok=True)
    try:
        argv = [str(cgroup) if a == "/sys/fs/cgroup" else a for a in _substitute(argv, w)]
        kprobe(*argv, "--lake", str(w.tmp / "record-lake"), "--no-metrics",
               "--otlp-port", str(free_port()), timeout=120)
    finally:
        cgroup.rmdir()


def _read(lake: str) -> Runner:
    def runner(argv: list[str], w: World) -> None:
        path = w.recorded if lake == "recorded" else w.analysed
        argv = _substitute(argv, w)
        if lake == "analysed":  # the synthetic lake's payment is on 2026-01-01
            argv = [f"--from={WINDOW_START}ns" if a.startswith("--from=") else
                    f"--to={WINDOW_END}ns" if a.startswith("--to=") else a for a in argv]
        if argv[0] == "analyze":
            argv = [*argv, "--executor", "local"]
            if "--rules" in argv:  # the README's rules example, over a copy of the scenario
                path = w.tmp / f"rules-lake-{len(w.ran)}"
                shutil.copytree(w.analysed, path)
                argv += [f"--from={WINDOW_START}ns", f"--to={WINDOW_END}ns"]
            elif "--window" not in argv:
                argv += ["--window", "5m"]
        if "--follow" in argv:  # runs until stopped: a few polls, then SIGTERM
            _follow(argv, path)
            return
        proc = kprobe(*argv, env={"KPROBE_LAKE": str(path)})
        if argv[0] == "explain":
            assert "root cause: memory pressure" in proc.stdout, proc.stdout
        if argv[0] == "graph":
            assert "memory_pressure" in proc.stdout, proc.stdout
        if argv[0] == "failures":
            assert PAYMENT in proc.stdout and "batch job PID 4721" in proc.stdout
        if "-o" in argv:
            assert Path(argv[argv.index("-o") + 1]).stat().st_size > 0
    return runner


def _follow(argv: list[str], lake: Path) -> None:
    """``kprobe analyze --follow``: it starts, serves its metrics and stops cleanly on
    SIGTERM (its own tests are tests/integration/test_analyze_follow.py)."""
    if "--metrics-port" in argv:
        argv[argv.index("--metrics-port") + 1] = str(free_port())
    follower = subprocess.Popen([*KPROBE, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "KPROBE_LAKE": str(lake)})
    try:
        follower.wait(timeout=deadline_s(5))
    except subprocess.TimeoutExpired:  # still following, as it should
        follower.send_signal(signal.SIGTERM)
    _, err = follower.communicate(timeout=deadline_s(60))
    assert follower.returncode == 0 and "Traceback" not in err, err[-2000:]


def _replay(argv: list[str], w: World) -> None:
    if "--process" not in argv:  # an inline mention (`kprobe replay --no-sandbox`)
        argv = [argv[0], "--lake", "L", "--process", "4721@node-a", *argv[1:]]
    # 0: as recorded or as expected; 1: a divergence or an expectation not met (documented)
    kprobe(*_substitute(argv, w), ok=(0, 1), timeout=300)


def _serve(argv: list[str], w: World) -> None:
    argv = _substitute(argv, w)
    if "--new-token" in argv:
        proc = kprobe(*argv, env={"KPROBE_LAKE": str(w.analysed)})
        assert re.search(r"\S{20,}", proc.stdout), proc.stdout
        return
    token = kprobe("serve", "--tokens-file", str(w.tokens), "--new-token",
                   f"readme-{len(w.ran)}", "--scopes", "read").stdout.split()[-1]
    port = free_port()
    log = (w.tmp / f"serve-{port}.log").open("w")
    server = subprocess.Popen([*KPROBE, *argv, "--port", str(port)], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT,
                              env={**os.environ, "KPROBE_LAKE": str(w.analysed)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + deadline_s(60)
        while True:
            assert server.poll() is None, (w.tmp / f"serve-{port}.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "kprobe serve did not answer in 60 s"
                time.sleep(0.2)
        request = urllib.request.Request(
            f"{base}/v1/transactions?status=failed&kind=memory_pressure",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=deadline_s(60)) as answer:
            page = json.loads(answer.read())
        (item,) = page["items"]
        assert item["business_id"] == PAYMENT and item["failure"]["culprit"]["pid"] == 4721
        request = urllib.request.Request(f"{base}/v1/transactions/{PAYMENT}/explain",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=deadline_s(60)) as answer:
            explained = json.loads(answer.read())["transactions"][0]
        assert "text" not in explained  # data, not CLI lines
        assert any(s["kind"] == "kernel" and s["label"].startswith("memcg reclaim")
                   for s in explained["steps"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=deadline_s(30))
        log.close()


def _otlp(argv: list[str], w: World) -> None:
    argv = _substitute(argv, w)
    port = argv[argv.index("--port") + 1]
    receiver = subprocess.Popen([*KPROBE, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        body = json.dumps({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [
            {"spans": [{"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "readme",
                        "startTimeUnixNano": str(time.time_ns()),
                        "endTimeUnixNano": str(time.time_ns() + 1000)}]}]}]}).encode()
        deadline = time.monotonic() + deadline_s(60)
        while True:
            assert receiver.poll() is None, receiver.communicate()[1][-2000:]
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/traces", data=body,
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=2) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "kprobe otlp did not answer in 60 s"
                time.sleep(0.2)
    finally:
        receiver.send_signal(signal.SIGTERM)
        _, err = receiver.communicate(timeout=deadline_s(60))
    assert receiver.returncode == 0 and "Traceback" not in err, err[-2000:]
    rows = kprobe("sql", "--lake", argv[argv.index("--lake") + 1], "--format", "json",
                  "select name from spans").stdout
    assert json.loads(rows) == [{"name": "readme"}]


def _lake(argv: list[str], w: World) -> None:
    copy = w.tmp / f"lake-copy-{time.monotonic_ns()}"  # retain and compact change the lake
    shutil.copytree(w.recorded, copy)
    proc = kprobe(*_substitute(argv, w), env={"KPROBE_LAKE": str(copy)})
    assert proc.stdout.strip()


def _doctor(argv: list[str], w: World) -> None:
    kprobe(*argv, ok=(0, 1))  # 1: something this kernel lacks, said in one line each


def _demo(argv: list[str], w: World) -> None:
    # the demo itself (15-40 s, root, zram) is tests/e2e/test_demo.py; here its help tells
    # the truth about its duration
    proc = kprobe(*argv, "--help")
    assert "about a minute" not in proc.stdout and "15-20 s" in " ".join(proc.stdout.split())


RUNNERS: dict[str, Runner] = {
    "run": _run_program, "record": _record, "doctor": _doctor, "demo": _demo,
    "sql": _read("recorded"), "analyze": _read("recorded"), "explain": _read("analysed"),
    "graph": _read("analysed"), "failures": _read("analysed"), "replay": _replay,
    "serve": _serve, "otlp": _otlp, "lake": _lake,
}


def _argv(command: str) -> list[str]:
    return shlex.split(command.removeprefix("sudo "))


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command: str, world: World) -> None:
    argv = _argv(command)
    if argv[0] == "make":  # the target exists and its recipe parses
        assert subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True,
                              timeout=deadline_s(60), check=False).returncode == 0, command
        return
    assert argv[0] == "kprobe", command
    runner = RUNNERS.get(argv[1])
    assert runner is not None, f"README command with no runner in this test: {command}"
    runner(argv[1:], world)
    world.ran[command] = subprocess.CompletedProcess(argv, 0)


# -- bad input: one line and its documented exit code ---------------------------------------------
def documented_exit_codes() -> set[int]:
    table = README.read_text().split("**Exit codes**", 1)[1].split("\n\n", 2)[1]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert code in documented_exit_codes()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _bad(*argv: str, code: int = 2) -> str:
    return _one_line_error(kprobe(*argv, ok=(code,)), code)


def test_the_exit_codes_are_documented() -> None:
    assert documented_exit_codes() == {0, 1, 2, 70, 130}


def test_a_wrong_lake_is_one_line_and_creates_nothing(world: World) -> None:
    typo = world.tmp / "typo"
    for argv in (["sql", "select count(*) from spans"], ["explain", PAYMENT],
                 ["graph", "root-cause", PAYMENT], ["failures"],
                 ["analyze", "--from=-15m", "--to=now", "--executor", "local"]):
        line = _bad(*argv, "--lake", str(typo))
        assert f"no kprobe tables at file://{typo}" in line, line
    # forgetting KPROBE_LAKE (the default lake is not this one either)
    proc = kprobe("sql", "select 1", env={"KPROBE_LAKE": str(typo)}, ok=(2,))
    assert "from $KPROBE_LAKE" in _one_line_error(proc, 2)
    assert not typo.exists()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("cpu_s", [1.0, 0.0], ids=["statement running", "as it starts"])
def test_ctrl_c_cancels_the_statement(world: World, cpu_s: float) -> None:
    sql = "SELECT sum(a.range * b.range) FROM range(100000) a, range(1000000) b"
    proc = subprocess.Popen(hears_ctrl_c([*KPROBE, "sql", "--lake", str(world.recorded), sql]),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # GIVEN DuckDB's threads are up (the lake's tables are open) and the process has
        # burnt another cpu_s of CPU since: the statement runs. With 0 s, Ctrl-C can come
        # before the statement begins (a CI run hung there: the interrupt did not stick)
        deadline = time.monotonic() + deadline_s(180)
        started: float | None = None
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "kprobe sql never got its statement running"
            if started is None and len(os.listdir(f"/proc/{proc.pid}/task")) >= 10:
                started = _cpu_s(proc.pid)
            if started is not None and _cpu_s(proc.pid) - started >= cpu_s:
                break
            time.sleep(0.1)
        # WHEN Ctrl-C
        proc.send_signal(signal.SIGINT)
        # THEN it stops (before: still running 120 s later), 130, one line
        out, err = proc.communicate(timeout=deadline_s(90))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    line = _one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                           130)
    # (as it starts, Ctrl-C may come while the tables open, before there is a statement)
    assert line == "kprobe sql: interrupted: the statement was cancelled" or (
        cpu_s == 0 and line == "kprobe sql: interrupted"), line


def test_bad_inputs_are_one_line(world: World) -> None:
    lake = str(world.analysed)
    missing = world.tmp / "missing-dir" / "out.csv"
    assert "directory" in _bad("sql", "--lake", lake, "--format", "csv", "-o", str(missing),
                               "select 1")
    assert "must be at least 1" in _bad("lake", "compact", "--lake", lake,
                                        "--target-size-mb", "0")
    assert "'UNKNOWN-ID'" in _bad("graph", "--lake", lake, "root-cause", "UNKNOWN-ID")
    assert "unbound parameter $svc" in _bad(
        "graph", "--lake", lake, "--cypher", "MATCH (s:Span) WHERE s.service = $svc RETURN s")
    assert "no graph snapshots" in _bad("graph", "--lake", lake, "windows",  # an hour later
                                        "--from", f"{WINDOW_END + 3_600_000_000_000}ns")
    assert "nothing recorded" in _bad("analyze", "--lake", lake, "--from",
                                      "2020-01-01T00:00:00Z", "--to", "2020-01-01T00:01:00Z",
                                      "--executor", "local")
    assert "not a time" in _bad("explain", "--lake", lake, PAYMENT, "--from", "yesterday")
    # CSV with an INTERVAL column: written (before: a traceback)
    proc = kprobe("sql", "--lake", lake, "--format", "csv", "select interval 90 minute as i")
    assert proc.stdout.splitlines() == ['"i"', '"0 months 0 days 5400000000000 ns"']
    # JSON stays JSON
    proc = kprobe("sql", "--lake", lake, "--format", "json", "select 'nan'::double x")
    assert json.loads(proc.stdout) == [{"x": None}]

