"""What capture costs the traced programs, and what the agent costs the node (root; by hand).

    sudo .venv/bin/python -m tests.bench.bench_capture [--rounds 5] [--sustain 30]

Everything goes through the real agent (`kprobe record`, a separate process, writing a
real lake in a temp dir), as a user would run it. Prints figures; asserts nothing.

1. Added cost per syscall of a getppid() loop (tests/programs/null_syscalls.c): targeted,
   untargeted (agent running, targeting another process), and the same capture by peers:
   bpftrace (enter+exit merged per thread, one line out per syscall) and strace -f.
   Configurations alternate round by round (CPU speed drifts up to 2x here); medians.
   Then clock_gettime() through libc (the vDSO, no syscall) with a payload recording
   running: untargeted (its clock uprobes must not trap other processes) and targeted.
2. A realistic request/response service at full rate: payment authorisation over HTTP/1.1
   keep-alive (tests/programs/authorize_server.py: Python's stdlib server, a forked worker
   per connection, JSON, HMAC, a ledger append), driven by 8 connections of
   tests/programs/http_load.c, with the
   agent as shipped (all families): not targeting it, targeting it, targeting it with
   payloads. Throughput relative to no agent, and the agent's CPU. (A one-connection
   ping-pong measured the VM's idle-exit latency instead: the agent made it 1.7x faster.)
3. The targeted loop at full speed for --sustain seconds: events per second the agent
   wrote and events lost (kernel drops + sink losses, from the agent's own summary).
4. Agent CPU (fraction of one core) and peak RSS while a paced loop makes ~100k syscall
   events per second, for --agent-seconds (past two minutes, per minute as well: the cost
   must not creep up as the tables age; every commit costs more the more files a table
   has, so `kprobe lake compact` runs every --compact-every seconds, as the chart's CronJob
   does, and its own cost is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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

    def stop(self) -> dict[str, object]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=300)
        self._err.close()
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def null_loop(binary: Path, iterations: int, wrap: list[str] | None = None,
              before_go: object = None, mode: str = "getppid") -> float:
    """ns per call of one run; ``before_go(pid)`` runs once the loop waits to start."""
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
    if handle is not None:
        handle()
    return float(out.split()[-1])


def bench_syscall_cost(progs: Path, work: Path, rounds: int, iterations: int) -> None:
    binary = progs / "null_syscalls"
    sleeper = subprocess.Popen(["sleep", "3600"])
    results: dict[str, list[float]] = {k: [] for k in
                                       ("baseline", "untargeted", "targeted", "bpftrace",
                                        "strace")}
    bt_script = ("tracepoint:raw_syscalls:sys_enter /pid == $1/ { @s[tid] = nsecs; }"
                 " tracepoint:raw_syscalls:sys_exit /@s[tid]/ {"
                 " printf(\"%d %d %d %d\\n\", tid, args->id, args->ret, nsecs - @s[tid]);"
                 " delete(@s[tid]); }")
    try:
        untargeted = Recorder(work, "--families", "syscalls", "--pid", str(sleeper.pid))
        for _ in range(rounds):
            results["untargeted"].append(null_loop(binary, iterations))
        untargeted.stop()
        for _ in range(rounds):
            results["baseline"].append(null_loop(binary, iterations))

            def targeted(pid: int) -> object:
                rec = Recorder(work, "--families", "syscalls", "--pid", str(pid))
                return lambda: rec.stop()

            results["targeted"].append(null_loop(binary, iterations, before_go=targeted))

            def bpftrace(pid: int) -> object:
                bt = subprocess.Popen(["bpftrace", "-e", bt_script, str(pid)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert bt.stdout
                bt.stdout.readline()  # "Attaching 2 probes...": attached
                # bpftrace's output is read (and dropped) as fast as it comes, as our agent
                # reads its rings: a full pipe would make bpftrace lose events, not pay
                threading.Thread(target=lambda: bt.stdout and bt.stdout.read(),
                                 daemon=True).start()
                return lambda: _stop(bt)

            results["bpftrace"].append(null_loop(binary, iterations, before_go=bpftrace))
            results["strace"].append(null_loop(binary, max(iterations // 50, 1000),
                                               wrap=["strace", "-f", "-qq", "-o",
                                                     "/dev/null"]))
    finally:
        sleeper.kill()
        sleeper.wait()
    base = statistics.median(results["baseline"])
    print(f"1. getppid loop, median of {rounds} runs: kernel alone {base:.0f} ns/call")
    for name in ("untargeted", "targeted", "bpftrace", "strace"):
        added = statistics.median(results[name]) - base
        print(f"   {name:<11} +{added:,.0f} ns per syscall")
    ours = statistics.median(results["targeted"]) - base
    strace = statistics.median(results["strace"]) - base
    print(f"   strace / kprobe targeted: {strace / ours:,.0f}x;"
          f" bpftrace / kprobe targeted: "
          f"{(statistics.median(results['bpftrace']) - base) / ours:.1f}x")


def bench_clock_cost(progs: Path, work: Path, rounds: int, iterations: int) -> None:
    binary = progs / "null_syscalls"
    sleeper = subprocess.Popen(["sleep", "3600"])
    results: dict[str, list[float]] = {"baseline": [], "untargeted": [], "targeted": []}
    try:
        for _ in range(rounds):
            results["baseline"].append(null_loop(binary, iterations, mode="clock"))
        rec = Recorder(work, "--payloads", "--families", "syscalls", "--pid", str(sleeper.pid))
        for _ in range(rounds):
            results["untargeted"].append(null_loop(binary, iterations, mode="clock"))
        rec.stop()
        for _ in range(rounds):
            def targeted(pid: int) -> object:
                rec = Recorder(work, "--payloads", "--families", "syscalls", "--pid", str(pid))
                return lambda: rec.stop()

            results["targeted"].append(null_loop(binary, max(iterations // 100, 1000),
                                                 before_go=targeted, mode="clock"))
    finally:
        sleeper.kill()
        sleeper.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"   clock_gettime via libc+vDSO, payload recording running: alone "
          f"{med['baseline']:.0f} ns, untargeted {med['untargeted']:.0f} ns, targeted "
          f"(recorded) {med['targeted']:,.0f} ns per call")


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


def bench_realistic(progs: Path, work: Path, rounds: int, seconds: float = 4.0) -> None:
    service = AuthorizeService(work)
    sleeper = subprocess.Popen(["sleep", "3600"])
    configs = {  # name -> agent arguments (all families: the agent as shipped)
        "agent running, service not targeted": ["--pid", str(sleeper.pid)],
        "service targeted, no payloads": ["--pid", str(service.proc.pid)],
        "service fully targeted with payloads": ["--payloads", "--pid", str(service.proc.pid)],
    }
    base: list[float] = []
    traced: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    try:
        service.load(progs, 1.0)  # warm-up
        for _ in range(rounds):
            base.append(service.load(progs, seconds))
            for name, agent_args in configs.items():
                rec = Recorder(work, *agent_args)
                cpu0, t0 = rec.cpu_seconds(), time.monotonic()
                traced[name].append(service.load(progs, seconds))
                cpu[name].append((rec.cpu_seconds() - cpu0) / (time.monotonic() - t0))
                rec.stop()
    finally:
        service.stop()
        sleeper.kill()
        sleeper.wait()
    b = statistics.median(base)
    print(f"2. payment authorisation service (HTTP/JSON, forked workers, 8 connections), "
          f"{b:,.0f} req/s without agent; with the agent (all families), median of {rounds}:")
    for name in configs:
        t = statistics.median(traced[name])
        print(f"   {name:<38} {t:>9,.0f} req/s = {t / b:.3f} of baseline; agent "
              f"{statistics.median(cpu[name]) * 100:.0f} % of a core")


def bench_sustained(work: Path, seconds: int, rate: int = 1_000_000) -> None:
    gen = _paced_generator(seconds, rate)
    rec = Recorder(work, "--families", "syscalls", "--pid", str(gen.pid))
    assert gen.stdin
    gen.stdin.write("go\n")
    gen.stdin.flush()
    gen.wait()
    summary = rec.stop()
    events = summary.get("events", {}).get("syscall_events", 0)  # type: ignore[union-attr]
    lost = sum(summary.get("lost", {}).values()) + sum(  # type: ignore[union-attr]
        summary.get("kernel_drops", {}).values())  # type: ignore[union-attr]
    print(f"3. paced {rate / 1e6:.1f} M syscalls/s for {seconds} s, targeted: "
          f"{events / seconds / 1e6:.2f} M events/s recorded, {lost} lost")


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
    events = sum(summary.get("events", {}).values())  # type: ignore[union-attr]
    rate_k = events / (seconds + 2) / 1e3  # the generator ran 2 s before the measurement
    print(f"4. agent at ~{rate // 1000}k syscall events/s ({rate_k:.0f}k events/s "
          f"incl. sched) for {seconds} s: {cpu * 100:.1f} % of a core, peak RSS {rss:.0f} MB")
    if minutes:
        print("   % of a core per minute: " + " ".join(f"{m * 100:.1f}" for m in minutes))
    for wall, cpu_s, removed in compactions:
        print(f"   lake compaction: {removed} files merged in {wall:.1f} s, {cpu_s:.1f} s of CPU"
              f" (= {cpu_s / compact_every * 100:.1f} % of a core over {compact_every} s)")


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
    parser.add_argument("--only", default="1234")
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
        if "2" in args.only:
            bench_realistic(progs, work, args.rounds)
        if "3" in args.only:
            bench_sustained(work, args.sustain)
        if "4" in args.only:
            bench_agent_cost(work, args.agent_seconds, compact_every=args.compact_every)


if __name__ == "__main__":
    main()
