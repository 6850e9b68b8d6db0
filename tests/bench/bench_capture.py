"""What capture costs the traced programs, and what the agent costs the node (root; by hand).

    sudo .venv/bin/python -m tests.bench.bench_capture [--rounds 5] [--sustain 30]

Everything goes through the real agent (`kprobe record`, a separate process, writing a
real lake in a temp dir), as a user would run it. Prints figures; asserts nothing.
Every configuration prints what it lost (the agent's kernel drops and sink losses from its
summary; bpftrace's "Lost N events"): a tracer that drops events looks cheaper than it is.

1. Added cost per syscall of a getppid() loop (tests/programs/null_syscalls.c): targeted,
   untargeted (agent running, targeting another process), and the same capture by peers:
   bpftrace (enter+exit merged per thread, one line out per syscall) and strace -f.
   Configurations alternate round by round, the baseline between them (A/B/A/B: CPU speed
   drifts up to 2x here), each agent started and stopped around its own run; medians.
   Then clock_gettime() through libc (the vDSO, no syscall) with a payload recording
   running: untargeted (its clock uprobes must not trap other processes), targeted (libc's
   clock_gettime trapped by uprobes), targeted with its vDSO rewritten into syscalls
   (--vdso-patch), and, the peer that stands on, the clock_gettime syscall recorded.
2. A realistic request/response service at full rate: payment authorisation over HTTP/1.1
   keep-alive (tests/programs/authorize_server.py: Python's stdlib server, a forked worker
   per connection, JSON, HMAC, a ledger append), driven by 8 connections of
   tests/programs/http_load.c, with the
   agent as shipped (all families): not targeting it, targeting it, targeting it with
   payloads. Throughput relative to no agent, and the agent's CPU. (A one-connection
   ping-pong measured the VM's idle-exit latency instead: the agent made it 1.7x faster.)
   Each configuration runs with every capture mode of --captures (default both: `full`, a
   row per switch, waking and TCP send/receive; `evidence`, rows only where they bound an
   off-CPU interval of >= 1 ms and per-slice sums for the rest), side by side in each
   round (the order of the modes reversed every other round), with the rows each mode
   wrote per request.
3. The targeted loop at full speed for --sustain seconds: events per second the agent
   wrote and events lost (kernel drops + sink losses, from the agent's own summary).
4. Agent CPU (fraction of one core) and peak RSS while a paced loop makes ~100k syscall
   events per second, for --agent-seconds (past two minutes, per minute as well: the cost
   must not creep up as the tables age; every commit costs more the more files a table
   has, so `kprobe lake compact` runs every --compact-every seconds, as the chart's CronJob
   does, and its own cost is printed).
5. BPF run time per event of each program (the kernel's own accounting: the
   kernel.bpf_stats_enabled sysctl on for this part only, then restored; read from the
   agent's program descriptors' fdinfo): the getppid loop and the payment service,
   untargeted and targeted, per program runs/s and ns/run, and all programs' share of a core;
   the payment service under each capture mode of --captures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
CAPTURES = ("full", "evidence")  # `kprobe record --capture` modes parts 2 and 5 compare
KPROBE = [sys.executable, "-P", "-m", "kprobe"]
TICK = os.sysconf("SC_CLK_TCK")


def build(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "tests/programs"), f"OUT={out}"], check=True)
    subprocess.run(["make", "-s", "-C", str(REPO / "capture_agent/bpf")], check=True)
    return out


class Recorder:
    """`kprobe record` in the background, ready when it has said so on stderr."""

    def __init__(self, work: Path, *args: str) -> None:
        self.log = work / f"agent-{time.monotonic_ns()}.log"
        self._err = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*KPROBE, "record", "--lake", str(work / "lake"), "--spool-dir",
             str(work / "spool"), "--no-otlp", "--no-metrics", "--format", "json", *args],
            stdout=subprocess.PIPE, stderr=self._err, text=True)
        deadline = time.monotonic() + 60
        while "recording" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def prog_stats(self) -> dict[str, tuple[int, int]]:
        """name -> (run_time_ns, run_cnt) of the agent's BPF programs, from its descriptors'
        fdinfo (counted only while kernel.bpf_stats_enabled is 1)."""
        by_id: dict[int, tuple[int, int]] = {}
        fds = Path(f"/proc/{self.proc.pid}/fdinfo")
        for info in fds.iterdir():
            try:
                fields = dict(line.split(":\t", 1) for line in info.read_text().splitlines()
                              if ":\t" in line)
            except OSError:  # closed meanwhile
                continue
            if "prog_id" in fields and "run_cnt" in fields:
                by_id[int(fields["prog_id"])] = (int(fields["run_time_ns"]),
                                                 int(fields["run_cnt"]))
        names = {p["id"]: p.get("name", str(p["id"])) for p in json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
            check=True).stdout)}
        return {names.get(i, str(i)): v for i, v in sorted(by_id.items())}

    def stop(self) -> dict[str, object]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=300)
        self._err.close()
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def lost(summary: dict[str, object]) -> int:
    """Events the agent lost: kernel drops (ring or map full) plus rows its sink lost."""
    return sum(losses_by_source(summary).values())


LOSS_SOURCES: dict[str, int] = {}  # every loss of this run by source, printed at the end


def losses_by_source(summary: dict[str, object]) -> dict[str, int]:
    """Nonzero losses of one agent run: "kernel <source>" (drops) and "sink <table>"."""
    out: dict[str, int] = {}
    for key, what in (("kernel_drops", "kernel"), ("lost", "sink")):
        counts = summary.get(key)
        if isinstance(counts, dict):
            out |= {f"{what} {k}": int(v) for k, v in counts.items() if int(v)}
    for source, n in out.items():
        LOSS_SOURCES[source] = LOSS_SOURCES.get(source, 0) + n
    return out


def event_counts(summary: dict[str, object]) -> dict[str, int]:
    """Events the agent read, per ring."""
    counts = summary.get("events")
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the block (BPF run time per program), then restored."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(old)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def null_loop(binary: Path, iterations: int, wrap: list[str] | None = None,
              before_go: object = None, mode: str = "getppid") -> tuple[float, object]:
    """ns per call of one run, and what ``before_go(pid)``'s handle returned: before_go
    runs once the loop waits to start and returns a callable run after the loop."""
    proc = subprocess.Popen([*(wrap or []), str(binary), mode, str(iterations), "3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout
    ready = proc.stdout.readline().split()
    pid = int(ready[1]) if len(ready) > 1 else proc.pid
    handle = before_go(pid) if callable(before_go) else None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out = proc.stdout.read()
    proc.wait()
    result = handle() if callable(handle) else None
    return float(out.split()[-1]), result


def recorded_loop(binary: Path, iterations: int, work: Path, agent_args: list[str],
                  target: bool, mode: str = "getppid") -> tuple[float, int]:
    """ns per call with an agent running (``--pid`` the loop if ``target``), and its loss."""
    if target:
        def targeted(pid: int) -> object:
            rec = Recorder(work, *agent_args, "--pid", str(pid))
            return lambda: lost(rec.stop())

        ns, loss = null_loop(binary, iterations, before_go=targeted, mode=mode)
        return ns, int(loss)  # type: ignore[call-overload]
    rec = Recorder(work, *agent_args)
    ns, _ = null_loop(binary, iterations, mode=mode)
    return ns, lost(rec.stop())


BPFTRACE_LOST = re.compile(rb"Lost (\d+) events")


def _count_lost(stream: IO[bytes], found: list[int]) -> None:
    """Read bpftrace's output as fast as it comes (as our agent reads its rings: a full
    pipe would make bpftrace lose events, not pay) and add up its "Lost N events" lines
    (bpftrace 0.17 writes them among the output, on stdout)."""
    tail = b""
    while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
        buf = tail + chunk
        cut = buf.rfind(b"\n") + 1
        found.extend(int(n) for n in BPFTRACE_LOST.findall(buf[:cut]))
        tail = buf[cut:]
    found.extend(int(n) for n in BPFTRACE_LOST.findall(tail))


def bpftrace_loop(binary: Path, iterations: int, work: Path, script: str) -> tuple[float, int]:
    """ns per call under bpftrace running ``script`` on the loop, and the events it lost
    (its perf buffer overflowed: "Lost N events" on stdout, or stderr in other versions)."""
    err_path = work / f"bpftrace-{time.monotonic_ns()}.err"
    found: list[int] = []

    def attach(pid: int) -> object:
        err = open(err_path, "wb")  # noqa: SIM115 (closed below)
        bt = subprocess.Popen(["bpftrace", "-e", script, str(pid)],
                              stdout=subprocess.PIPE, stderr=err)
        assert bt.stdout
        bt.stdout.readline()  # "Attaching 2 probes...": attached
        reader = threading.Thread(target=_count_lost, args=(bt.stdout, found), daemon=True)
        reader.start()

        def done() -> None:
            _stop(bt)
            reader.join(30)
            err.close()
        return done

    ns, _ = null_loop(binary, iterations, before_go=attach)
    return ns, sum(found) + sum(int(n) for n in BPFTRACE_LOST.findall(err_path.read_bytes()))


def bench_syscall_cost(progs: Path, work: Path, rounds: int, iterations: int) -> None:
    binary = progs / "null_syscalls"
    sleeper = subprocess.Popen(["sleep", "3600"])
    names = ("baseline", "untargeted", "targeted", "bpftrace", "strace")
    results: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, list[int]] = {k: [] for k in names}
    bt_script = ("tracepoint:raw_syscalls:sys_enter /pid == $1/ { @s[tid] = nsecs; }"
                 " tracepoint:raw_syscalls:sys_exit /@s[tid]/ {"
                 " printf(\"%d %d %d %d\\n\", tid, args->id, args->ret, nsecs - @s[tid]);"
                 " delete(@s[tid]); }")
    agent = ["--families", "syscalls"]
    try:
        # round by round, every configuration once: the baseline sits between the others
        # (A/B/A/B), so a drift of the CPU's speed shows in both
        for _ in range(rounds):
            results["baseline"].append(null_loop(binary, iterations)[0])
            ns, loss = recorded_loop(binary, iterations, work,
                                     [*agent, "--pid", str(sleeper.pid)], target=False)
            results["untargeted"].append(ns)
            losses["untargeted"].append(loss)
            ns, loss = recorded_loop(binary, iterations, work, agent, target=True)
            results["targeted"].append(ns)
            losses["targeted"].append(loss)
            ns, loss = bpftrace_loop(binary, iterations, work, bt_script)
            results["bpftrace"].append(ns)
            losses["bpftrace"].append(loss)
            results["strace"].append(null_loop(binary, max(iterations // 50, 1000),
                                               wrap=["strace", "-f", "-qq", "-o",
                                                     "/dev/null"])[0])
    finally:
        sleeper.kill()
        sleeper.wait()
    base = statistics.median(results["baseline"])
    print(f"1. getppid loop, median of {rounds} runs (interleaved): kernel alone {base:.0f} "
          f"ns/call")
    print(f"   {'configuration':<11} {'added ns/syscall':>16}  events lost (per run)")
    for name in names[1:]:
        added = statistics.median(results[name]) - base
        loss_text = ("n/a (strace stops the process: it cannot lose)" if name == "strace"
                     else " ".join(f"{n:,}" for n in losses[name]))
        print(f"   {name:<11} {'+' if added >= 0 else ''}{added:>15,.0f}  {loss_text}")
    ours = statistics.median(results["targeted"]) - base
    strace = statistics.median(results["strace"]) - base
    print(f"   strace / kprobe targeted: {strace / ours:,.0f}x;"
          f" bpftrace / kprobe targeted: "
          f"{(statistics.median(results['bpftrace']) - base) / ours:.1f}x"
          + ("  (bpftrace LOST events: it did less work than it was asked)"
             if any(losses["bpftrace"]) else ""))
    if any(losses["targeted"]) or any(losses["untargeted"]):
        print("   kprobe LOST events: its figures above are for less than a full capture")


def bench_clock_cost(progs: Path, work: Path, rounds: int, iterations: int) -> None:
    binary = progs / "null_syscalls"
    sleeper = subprocess.Popen(["sleep", "3600"])
    names = ("baseline", "untargeted", "targeted", "rewritten", "syscall")
    results: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, list[int]] = {k: [] for k in names[1:]}
    agent = ["--payloads", "--families", "syscalls"]
    targeted = max(iterations // 100, 1000)
    try:
        for _ in range(rounds):  # interleaved, as in part 1
            results["baseline"].append(null_loop(binary, iterations, mode="clock")[0])
            ns, loss = recorded_loop(binary, iterations, work,
                                     [*agent, "--pid", str(sleeper.pid)], target=False,
                                     mode="clock")
            results["untargeted"].append(ns)
            losses["untargeted"].append(loss)
            # libc's clock_gettime trapped by uprobes (the default)
            ns, loss = recorded_loop(binary, targeted, work, agent, target=True, mode="clock")
            results["targeted"].append(ns)
            losses["targeted"].append(loss)
            # the target's vDSO rewritten into syscalls (--vdso-patch)
            ns, loss = recorded_loop(binary, targeted, work, [*agent, "--vdso-patch"],
                                     target=True, mode="clock")
            results["rewritten"].append(ns)
            losses["rewritten"].append(loss)
            # the peer that rewrite stands on: the clock_gettime syscall itself, recorded
            ns, loss = recorded_loop(binary, targeted, work, agent, target=True,
                                     mode="clocksys")
            results["syscall"].append(ns)
            losses["syscall"].append(loss)
    finally:
        sleeper.kill()
        sleeper.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"   clock_gettime via libc+vDSO, payload recording running: alone "
          f"{med['baseline']:.0f} ns, untargeted {med['untargeted']:.0f} ns; recorded "
          f"(targeted) by uprobes {med['targeted']:,.0f} ns, with the vDSO rewritten "
          f"(--vdso-patch) {med['rewritten']:,.0f} ns "
          f"({med['targeted'] / med['rewritten']:.1f}x cheaper), a direct clock_gettime "
          f"syscall recorded {med['syscall']:,.0f} ns per call; lost "
          + ", ".join(f"{k} {sum(v)}" for k, v in losses.items()))


class AuthorizeService:
    """tests/programs/authorize_server.py, listening on a free loopback port."""

    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/programs/authorize_server.py"),
             str(work / "ledger.jsonl")], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout
        self.port = int(self.proc.stdout.readline().split()[1])

    def load(self, progs: Path, seconds: float, connections: int = 8) -> float:
        out = subprocess.run([str(progs / "http_load"), str(self.port), str(connections),
                              str(int(seconds * 1000))], capture_output=True, text=True,
                             check=True).stdout.split()
        if int(out[1]):
            raise RuntimeError(f"authorize service refused {out[1]} requests")
        return float(out[0])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_realistic(progs: Path, work: Path, rounds: int, seconds: float = 4.0,
                    captures: tuple[str, ...] = CAPTURES) -> None:
    service = AuthorizeService(work)
    sleeper = subprocess.Popen(["sleep", "3600"])
    shapes = {  # name -> agent arguments (all families: the agent as shipped)
        "agent running, service not targeted": ["--pid", str(sleeper.pid)],
        "service targeted, no payloads": ["--pid", str(service.proc.pid)],
        "service fully targeted with payloads": ["--payloads", "--pid", str(service.proc.pid)],
        # the same, its clock reads recorded by its rewritten vDSO instead of libc uprobes
        "payloads, vDSO rewritten": ["--payloads", "--vdso-patch",
                                     "--pid", str(service.proc.pid)],
    }
    # every shape under every capture mode, interleaved round by round
    configs = {(name, mode): [*args, "--capture", mode]
               for name, args in shapes.items() for mode in captures}
    base: list[float] = []
    traced: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    cpu: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    losses: dict[tuple[str, str], list[int]] = {c: [] for c in configs}
    gaps: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    rows: dict[tuple[str, str], list[float]] = {c: [] for c in configs}  # rows per request
    by_table: dict[tuple[str, str], dict[str, float]] = {c: {} for c in configs}  # summed
    try:
        service.load(progs, 1.0)  # warm-up
        for round_ in range(rounds):
            base.append(service.load(progs, seconds))
            # odd rounds run the capture modes of each shape in the reverse order: a mode
            # always run second inherits the first one's writeback and a larger lake
            order = [(name, mode) for name in shapes
                     for mode in (captures if round_ % 2 == 0 else captures[::-1])]
            for config in order:
                agent_args = configs[config]
                rec = Recorder(work, *agent_args)
                cpu0, t0 = rec.cpu_seconds(), time.monotonic()
                rate = service.load(progs, seconds)
                traced[config].append(rate)
                cpu[config].append((rec.cpu_seconds() - cpu0) / (time.monotonic() - t0))
                summary = rec.stop()
                losses[config].append(lost(summary))
                gaps[config].append(float(summary.get("drain_gap_max_s", 0.0)))  # type: ignore[arg-type]
                written = summary.get("rows")
                if isinstance(written, dict):
                    requests = max(rate * seconds, 1.0)
                    rows[config].append(sum(int(v) for v in written.values()) / requests)
                    for table, n in written.items():
                        by_table[config][table] = (by_table[config].get(table, 0.0)
                                                   + int(n) / requests / rounds)
    finally:
        service.stop()
        sleeper.kill()
        sleeper.wait()
    b = statistics.median(base)
    print(f"2. payment authorisation service (HTTP/JSON, forked workers, 8 connections), "
          f"{b:,.0f} req/s without agent; with the agent (all families), median of {rounds}:")
    for name, mode in configs:
        t = statistics.median(traced[(name, mode)])
        per_request = statistics.median(rows[(name, mode)]) if rows[(name, mode)] else 0.0
        print(f"   {name:<38} {mode:<8} {t:>9,.0f} req/s = {t / b:.3f} of baseline; agent "
              f"{statistics.median(cpu[(name, mode)]) * 100:.0f} % of a core; "
              f"{per_request:.1f} rows/request (rows of every process over the run); lost "
              f"{sum(losses[(name, mode)]):,}; rings undrained for {max(gaps[(name, mode)]):.2f}"
              f" s at most")
        top = sorted(by_table[(name, mode)].items(), key=lambda kv: -kv[1])[:6]
        print("        rows/request by table: " + ", ".join(f"{t} {v:.2f}" for t, v in top))


def bench_sustained(work: Path, seconds: int, rate: int = 1_000_000) -> None:
    gen = _paced_generator(seconds, rate)
    rec = Recorder(work, "--families", "syscalls", "--pid", str(gen.pid))
    assert gen.stdin
    gen.stdin.write("go\n")
    gen.stdin.flush()
    gen.wait()
    summary = rec.stop()
    events = event_counts(summary).get("syscall_events", 0)
    print(f"3. paced {rate / 1e6:.1f} M syscalls/s for {seconds} s, targeted: "
          f"{events / seconds / 1e6:.2f} M events/s recorded, {lost(summary)} lost")


def _paced_generator(seconds: int, rate: int) -> subprocess.Popen[str]:
    """getppid() at ``rate`` per second in 10 ms steps, after a line on stdin."""
    code = (f"import os, sys, time\nsys.stdin.readline()\n"
            f"end = time.monotonic() + {seconds}\nnext_t = time.monotonic()\n"
            "g = os.getppid\n"
            "while time.monotonic() < end:\n"
            f"    for _ in range({rate // 100}): g()\n"
            "    next_t += 0.01\n    d = next_t - time.monotonic()\n"
            "    if d > 0: time.sleep(d)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)


def bench_agent_cost(work: Path, seconds: int, rate: int = 100_000,
                     compact_every: int = 0) -> None:
    """Over ``seconds``; past two minutes, also the cost per minute (it must not creep up
    as the tables age) and, with ``compact_every``, `kprobe lake compact` run that often
    as the chart's CronJob does (infra/helm), with its own cost."""
    gen = _paced_generator(seconds + 2, rate)
    assert gen.stdin
    rec = Recorder(work, "--families", "syscalls,sched", "--pid", str(gen.pid))
    gen.stdin.write("go\n")
    gen.stdin.flush()
    time.sleep(2)
    cpu0, t0 = rec.cpu_seconds(), time.monotonic()
    minutes: list[float] = []
    compactions: list[tuple[float, float, int]] = []  # (wall s, CPU s, files removed)
    next_compact = t0 + compact_every
    while gen.poll() is None and seconds > 120:
        c, t = rec.cpu_seconds(), time.monotonic()
        if compact_every and t >= next_compact:
            compactions.append(_compact(work / "lake"))
            next_compact += compact_every
        try:
            gen.wait(max(t + 60 - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
        if gen.poll() is None:
            minutes.append((rec.cpu_seconds() - c) / (time.monotonic() - t))
    gen.wait()
    cpu = (rec.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    rss = rec.peak_rss_mb()
    summary = rec.stop()
    events = sum(event_counts(summary).values())
    rate_k = events / (seconds + 2) / 1e3  # the generator ran 2 s before the measurement
    print(f"4. agent at ~{rate // 1000}k syscall events/s ({rate_k:.0f}k events/s "
          f"incl. sched) for {seconds} s: {cpu * 100:.1f} % of a core, peak RSS {rss:.0f} MB,"
          f" {lost(summary)} lost")
    if minutes:
        print("   % of a core per minute: " + " ".join(f"{m * 100:.1f}" for m in minutes))
    for wall, cpu_s, removed in compactions:
        print(f"   lake compaction: {removed} files merged in {wall:.1f} s, {cpu_s:.1f} s of CPU"
              f" (= {cpu_s / compact_every * 100:.1f} % of a core over {compact_every} s)")


def bench_prog_cost(progs: Path, work: Path, seconds: float = 4.0,
                    iterations: int = 1_000_000, captures: tuple[str, ...] = CAPTURES) -> None:
    """BPF run time per event of each program, from the kernel's own accounting
    (kernel.bpf_stats_enabled, on for this part only: it adds two clock reads per run, so
    parts 1-4 run without it). Untargeted runs count every process's events."""
    binary = progs / "null_syscalls"
    service = AuthorizeService(work)
    sleeper = subprocess.Popen(["sleep", "3600"])
    loop_agent = ["--families", "syscalls"]
    cases: list[tuple[str, list[str], str]] = [
        ("getppid loop, untargeted", [*loop_agent, "--pid", str(sleeper.pid)], "loop"),
        ("getppid loop, targeted", loop_agent, "loop-target"),
    ]
    for mode in captures:
        cases += [
            (f"payment service, untargeted, {mode} capture",
             ["--pid", str(sleeper.pid), "--capture", mode], "service"),
            (f"payment service, targeted, {mode} capture",
             ["--pid", str(service.proc.pid), "--capture", mode], "service"),
            (f"payment service, targeted with payloads, {mode} capture",
             ["--payloads", "--pid", str(service.proc.pid), "--capture", mode], "service"),
        ]
    print("5. BPF run time per program (kernel.bpf_stats_enabled=1 during this part only)")
    try:
        with bpf_stats():
            for title, agent_args, load in cases:
                t0 = time.monotonic()
                if load == "loop-target":
                    def targeted(pid: int, args: list[str] = agent_args) -> object:
                        rec = Recorder(work, *args, "--pid", str(pid))
                        before = rec.prog_stats()

                        def done() -> tuple[dict[str, tuple[int, int]], int]:
                            stats = _diff(before, rec.prog_stats())
                            return stats, lost(rec.stop())
                        return done

                    t0 = time.monotonic()
                    res = null_loop(binary, iterations, before_go=targeted)[1]
                    stats, loss = res  # type: ignore[misc]
                else:
                    rec = Recorder(work, *agent_args)
                    before, t0 = rec.prog_stats(), time.monotonic()
                    if load == "loop":
                        null_loop(binary, iterations)
                    else:
                        service.load(progs, seconds)
                    stats = _diff(before, rec.prog_stats())
                    loss = lost(rec.stop())
                _print_prog_stats(title, stats, time.monotonic() - t0, loss)
    finally:
        service.stop()
        sleeper.kill()
        sleeper.wait()


def _diff(before: dict[str, tuple[int, int]],
          after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {name: (ns - before.get(name, (0, 0))[0], cnt - before.get(name, (0, 0))[1])
            for name, (ns, cnt) in after.items()}


def _print_prog_stats(title: str, stats: dict[str, tuple[int, int]], wall: float,
                      loss: int) -> None:
    """One table: runs per second and ns per run of each program that ran."""
    total_ns = sum(ns for ns, _ in stats.values())
    print(f"   {title}: {wall:.1f} s, BPF {total_ns / wall / 1e7:.1f} % of a core, "
          f"{loss} lost")
    print(f"     {'program':<30} {'runs/s':>10} {'ns/run':>8}")
    for name, (ns, cnt) in sorted(stats.items(), key=lambda kv: -kv[1][0]):
        if cnt:
            print(f"     {name:<30} {cnt / wall:>10,.0f} {ns / cnt:>8,.0f}")


def _compact(lake_dir: Path) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    out = subprocess.run([*KPROBE, "lake", "compact", "--lake", str(lake_dir), "--format",
                          "json"], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    removed = sum(r["removed_files"] for r in json.loads(out))
    return time.monotonic() - t, cpu, removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--sustain", type=int, default=30)
    parser.add_argument("--only", default="12345")
    parser.add_argument("--captures", default=",".join(CAPTURES), metavar="MODES",
                        help="capture modes parts 2 and 5 run the payment service under, "
                        "side by side (default full,evidence)")
    parser.add_argument("--agent-seconds", type=int, default=20,
                        help="length of part 4 (600 shows the cost of a table 10 minutes old)")
    parser.add_argument("--compact-every", type=int, default=240, metavar="SECONDS",
                        help="in a part 4 longer than 2 minutes, run `kprobe lake compact` "
                        "this often, as deployed (0: never)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_capture: needs root")
    # bpftrace's tracepoint probes need tracefs (ours do not): mount it for the run only.
    tracefs = Path("/sys/kernel/tracing")
    mounted = False
    if "1" in args.only and not (tracefs / "events").exists():
        mounted = subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracefs)]).returncode == 0
    try:
        run_all(args)
    finally:
        if mounted:
            subprocess.run(["umount", str(tracefs)], check=False)


def run_all(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kprobe-bench-") as tmp:
        work = Path(tmp)
        progs = build(work / "programs")
        if "1" in args.only:
            bench_syscall_cost(progs, work, args.rounds, args.iterations)
            bench_clock_cost(progs, work, args.rounds, args.iterations)
        captures = tuple(m.strip() for m in args.captures.split(",") if m.strip())
        if "2" in args.only:
            bench_realistic(progs, work, args.rounds, captures=captures)
        if "3" in args.only:
            bench_sustained(work, args.sustain)
        if "4" in args.only:
            bench_agent_cost(work, args.agent_seconds, compact_every=args.compact_every)
        if "5" in args.only:
            bench_prog_cost(progs, work, iterations=args.iterations, captures=captures)
        print("losses of all parts by source: " + (", ".join(
            f"{k} {v:,}" for k, v in sorted(LOSS_SOURCES.items())) or "none"))


if __name__ == "__main__":
    main()
