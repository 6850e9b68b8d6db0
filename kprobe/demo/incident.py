"""The ₹50,000 payment incident, staged for real on this machine, recorded and explained.

    config = IncidentConfig(lake="/tmp/lake", workdir=Path("/tmp/work"))
    record = record_incident(config, say=print, cutoffs="14:00,16:30")
    analyze(config, record, ray=False)
    text, doc = explain(config, record.failed_payment["payment_id"])

What happens, in order, and why each step is there:

1. A zram swap device, a memory cgroup with a limit and a CPU cgroup weighted above the
   machine's other work are made (``kprobe.demo.host``). Reclaim is only slow when it has
   real work: compressing anonymous pages out to swap. The CPU weight keeps neighbours on
   a shared machine from adding CPU delays of their own.
2. The three services are started *held*: ``sh`` waits on a pipe before it execs the
   service, so its pid is known before the service runs. The agent (``kprobe record``)
   starts targeting those pids with payload capture, then the services are released: the
   agent records each service from its exec, which a replay needs (it starts at an exec).
   While held, the settlement service is placed in the memory cgroup and on a CPU of its
   own; the agent and, later, the batch job share the other CPU.
3. The load driver sends a steady stream of everyday payments: the healthy baseline.
4. The stream pauses and the nightly reconciliation batch job starts in the settlement
   service's cgroup (on the other CPU). The demo waits until the job has gone through its
   whole working set once, the cgroup is at its limit and pages sit in zram: from then on,
   every page the settlement service charges must first be reclaimed from the batch job.
   Waiting for that state, instead of firing at a random moment, is what makes the delay
   reproducible run after run.
5. The ₹50,000 payment is sent. The settlement write (building its batch in fresh memory)
   now reclaims page after page and takes 0.8-0.9 s; the gateway gives up at 750 ms
   and answers 504. The demo stops the load, the batch job and the services, and the agent
   flushes everything to the lake.
6. ``kprobe analyze`` builds the causal graph of the time range and ``kprobe explain``
   tells the failed payment's story, both as a user would run them.

Everything made is undone in ``finally`` blocks (processes, cgroup, zram), also on Ctrl-C
and SIGTERM, and ``leftovers()`` checks that nothing remains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from kprobe.demo.host import (
    CpuCgroup,
    MemoryCgroup,
    ZramSwap,
    active_swaps,
    free_ports,
    zram_device_exists,
    zram_swap,
)
from kprobe.errors import CommandError

MB = 1 << 20
PYTHON = [sys.executable, "-P"]
KPROBE = [*PYTHON, "-m", "kprobe"]
# sh holds the pid until we write a line, then becomes the program ("$0" is sh's own name).
HOLD = ["/bin/sh", "-c", 'read _ && exec "$@"', "kprobe-hold"]

Say = Callable[[str], None]


class IncidentError(CommandError):
    """The incident could not be staged or did not happen (the message says what)."""


@dataclass(frozen=True)
class Tuning:
    """The knobs that make the incident happen here, measured on this 2-vCPU VM (README,
    "The incident demo"): the settlement write takes 52-61 ms without the batch job and
    810-870 ms (20 runs of 20) while the batch job holds the cgroup at its limit, against
    the gateway's 750 ms timeout. The write's duration hardly grows with its size above
    ~100 MiB (the batch job's own reclaim hands it part of the pages), so the size is the
    smallest that stays well clear of 750 ms: 60 MiB took 640-670 ms and did not fail."""

    memory_limit_mb: int = 384  # the settlement service's cgroup
    batch_mb: int = 640  # the batch job's working set: 1.7x the limit, cycled through zram
    settlement_pages_mb: int = 120  # fresh memory each settlement write builds its batch in
    # The services, the agent and the load driver share a CPU cgroup this many times a
    # default group's weight: on a shared machine a neighbour's busy process would otherwise
    # take CPU from the settlement thread (a CPU delay mixed into the memory one).
    cpu_weight: float = 32.0
    zram_mb: int = 1024  # swap for what does not fit (~260 MiB of records, ~3:1 in zram)
    interval_ms: float = 250.0  # the steady payment stream
    healthy_payments: int = 12  # before the batch job starts
    settlement_timeout_ms: int = 750
    incident_amount_inr: int = 50_000
    pressure_timeout_s: float = 60.0  # for the cgroup to fill and swap
    incident_attempts: int = 3  # ₹50,000 payments sent until one times out


@dataclass(frozen=True)
class IncidentConfig:
    lake: str
    workdir: Path
    lake_env: dict[str, str] = field(default_factory=dict)  # KPROBE_S3_* for an S3 lake
    tuning: Tuning = Tuning()
    keep: bool = False  # leave the services (and the agent, cgroup, swap) running
    # in every payment id: a lake that keeps several runs never sees one id twice
    run_id: int = field(default_factory=lambda: int(time.time()) % 1_000_000)


@dataclass
class Child:
    """A process the demo started (and must stop)."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path | None = None
    lines: list[str] = field(default_factory=list)  # stdout lines, when read

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 600) -> str:
        text = ""
        if self.log is not None and self.log.exists():
            text = self.log.read_bytes()[-chars:].decode(errors="replace")
        return text or "\n".join(self.lines)[-chars:]


@dataclass
class IncidentRecord:
    """What the staged incident produced: who ran, which payment failed, and when."""

    lake: str
    run_id: int
    started_ns: int
    ended_ns: int = 0
    pids: dict[str, int] = field(default_factory=dict)
    gateway_argv: list[str] = field(default_factory=list)
    timeout_arg_index: int = 0
    cgroup: str = ""
    cgroup_id: int = 0
    cpu_cgroup: str = ""
    zram_device: str = ""
    payments: list[dict[str, Any]] = field(default_factory=list)
    incident_payment: dict[str, Any] = field(default_factory=dict)  # the ₹50,000 one
    failed_payment: dict[str, Any] | None = None  # the same, when it failed (504)
    incident_attempts: list[str] = field(default_factory=list)  # ids of each ₹50,000 sent
    pressure: dict[str, Any] = field(default_factory=dict)
    agent_summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # what --keep left running

    def healthy_ms(self) -> list[float]:
        """The everyday payments that settled (not a ₹50,000 one that did in time)."""
        return [p["ms"] for p in self.payments
                if p["status"] == 200 and p["payment_id"] not in self.incident_attempts]


# -- processes --------------------------------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without OTel settings of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra or {})
    return env


def hold(name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path,
         stdout_pipe: bool = False) -> Child:
    """Start ``argv`` held: its pid exists (as ``sh``) but it execs only on ``release``,
    so it can be placed in a cgroup and made a capture target before it runs. Its output
    goes to ``log`` (stdout to a pipe instead, with ``stdout_pipe``)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([*HOLD, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE if stdout_pipe else out,
                                stderr=out if stdout_pipe else subprocess.STDOUT,
                                env=env, cwd=cwd)
    return Child(name, argv, proc, log)


def place(child: Child, cgroups: Sequence[MemoryCgroup | CpuCgroup] = (),
          cpu: int | None = None) -> None:
    """Deploy a held process: into ``cgroups``, pinned to ``cpu``; its exec inherits both."""
    for cgroup in cgroups:
        cgroup.add(child.pid)
    if cpu is not None:
        os.sched_setaffinity(child.pid, {cpu})


def release(child: Child) -> None:
    """Let a held process exec its program."""
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"go\n")
    child.proc.stdin.close()


def read_lines(child: Child) -> threading.Thread:
    """Collect a child's stdout lines in ``child.lines`` (a daemon thread)."""
    assert child.proc.stdout is not None
    stream = child.proc.stdout

    def pump() -> None:
        for raw in stream:
            child.lines.append(raw.decode(errors="replace").rstrip("\n"))

    thread = threading.Thread(target=pump, name=f"{child.name}-stdout", daemon=True)
    thread.start()
    return thread


def wait_until(what: str, check: Callable[[], bool], timeout_s: float,
               children: Sequence[Child] = (), poll_s: float = 0.05) -> None:
    """Poll ``check`` until true; fail early (with its output) when a child dies."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for child in children:
            if not child.alive():
                raise IncidentError(f"{child.name} exited ({child.proc.returncode}) while "
                                    f"waiting for {what}: {child.tail().strip()[-400:]}")
        if time.monotonic() > deadline:
            raise IncidentError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def stop(child: Child, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
    """Signal a child and reap it; SIGKILL when it does not exit in time."""
    if child.alive():
        try:
            child.proc.send_signal(sig)
            child.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=30)
    for stream in (child.proc.stdin, child.proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    return child.proc.returncode


def healthy(port: int) -> bool:
    """The service on ``port`` answers (and so has finished the request before, too)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# -- the agent --------------------------------------------------------------------------------
def start_agent(config: IncidentConfig, pids: list[int], otlp_port: int,
                cpu: CpuCgroup) -> Child:
    """``kprobe record`` targeting ``pids`` with payloads, its OTLP receiver on
    ``otlp_port``; returns once it says it records (its probes are attached).

    It runs in the services' weighted CPU cgroup (a starved agent answers the services'
    span exports late and drains its rings late), on the batch job's CPU: its flushes
    never take the settlement service's CPU from it."""
    work = config.workdir
    argv = [*KPROBE, "record", "--lake", config.lake, "--payloads",
            "--payload-cap", "1M",  # replay serves whole reads (Python .pyc files: 100s of KiB)
            *(a for pid in pids for a in ("--pid", str(pid))), "--otlp-port", str(otlp_port),
            "--no-metrics", "--spool-dir", str(work / "spool"), "--format", "json"]
    log = work / "agent.log"
    with open(log, "wb") as err, open(work / "agent.json", "wb") as out:
        proc = subprocess.Popen([*HOLD, *argv], stdin=subprocess.PIPE, stdout=out, stderr=err,
                                cwd=work, env=child_env(config.lake_env))
    agent = Child("agent", argv, proc, log)
    place(agent, [cpu], cpus()[0])  # held: every thread it starts inherits both
    release(agent)
    wait_until("the agent to attach its probes",
               lambda: b"recording " in log.read_bytes(), 120, [agent])
    return agent


def stop_agent(agent: Child, workdir: Path) -> dict[str, Any]:
    """SIGTERM: the agent flushes every row it holds to the lake; its summary."""
    code = stop(agent, signal.SIGTERM, timeout_s=120)
    if code != 0:
        raise IncidentError(f"the agent exited with {code}: {agent.tail().strip()[-400:]}")
    lines = (workdir / "agent.json").read_text().strip().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return summary


# -- the system -------------------------------------------------------------------------------
@dataclass
class System:
    """The running services and their ports."""

    gateway: Child
    risk: Child
    settlement: Child
    ports: dict[str, int]

    @property
    def services(self) -> list[Child]:
        return [self.gateway, self.risk, self.settlement]


def cpus() -> tuple[int | None, int | None]:
    """(batch job CPU, settlement CPU): different CPUs when there are two or more, so the
    settlement's delay is reclaim work and not waiting for the batch job's CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[-1]


def hold_services(config: IncidentConfig, memory: MemoryCgroup, cpu: CpuCgroup,
                  otlp_port: int, cutoffs: str) -> System:
    """The three services, held (not yet exec'd), all in the weighted ``cpu`` cgroup, the
    settlement one in the ``memory`` cgroup and on a CPU of its own."""
    work = config.workdir
    gw, risk, settle = free_ports(3)
    env = child_env({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"})
    clearing = ["--clearing-cutoffs", cutoffs]
    risk_child = hold("risk", [*PYTHON, "-m", "kprobe.demo.risk", "--port", str(risk),
                               *clearing], env, work, work / "risk.log")
    settlement = hold("settlement", [
        *PYTHON, "-m", "kprobe.demo.settlement", "--port", str(settle),
        "--ledger", str(work / "ledger.db"),
        "--ledger-pages-mb", str(config.tuning.settlement_pages_mb), *clearing],
        env, work, work / "settlement.log")
    gateway = hold("gateway", [
        *PYTHON, "-m", "kprobe.demo.gateway", "--port", str(gw),
        "--risk", f"127.0.0.1:{risk}", "--settlement", f"127.0.0.1:{settle}",
        "--settlement-timeout-ms", str(config.tuning.settlement_timeout_ms), *clearing],
        env, work, work / "gateway.log")
    place(risk_child, [cpu])
    place(gateway, [cpu])
    place(settlement, [memory, cpu], cpus()[1])
    return System(gateway, risk_child, settlement,
                  {"gateway": gw, "risk": risk, "settlement": settle})


def start_load(config: IncidentConfig, system: System, cpu: CpuCgroup) -> Child:
    """The load driver, in the services' CPU cgroup: a starved client would measure its own
    wait for a CPU, not the gateway's answer."""
    argv = [*PYTHON, "-m", "kprobe.demo.load", "--gateway",
            f"127.0.0.1:{system.ports['gateway']}", "--interval-ms",
            str(config.tuning.interval_ms), "--run", str(config.run_id)]
    with open(config.workdir / "load.log", "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=child_env(), cwd=config.workdir)
    load = Child("load driver", argv, proc, config.workdir / "load.log")
    cpu.add(load.pid)
    read_lines(load)
    return load


def command(load: Child, *lines: str) -> None:
    assert load.proc.stdin is not None
    load.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
    load.proc.stdin.flush()


def payments(load: Child) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(load.lines) if line.startswith("{")]


def _answered(load: Child, sent: int) -> bool:
    """The load driver has an answer for a payment sent after the first ``sent``."""
    return len(payments(load)) > sent


def start_batch_job(config: IncidentConfig, memory: MemoryCgroup, cpu: CpuCgroup) -> Child:
    """The nightly reconciliation, in the settlement service's cgroups, on the other CPU."""
    argv = [*PYTHON, "-m", "kprobe.demo.batch_job", "--mb", str(config.tuning.batch_mb)]
    batch = hold("batch job", argv, child_env(), config.workdir, config.workdir / "batch.log",
                 stdout_pipe=True)
    place(batch, [memory, cpu], cpus()[0])
    read_lines(batch)
    release(batch)
    return batch


def wait_for_pressure(batch: Child, cgroup: MemoryCgroup, swap: ZramSwap,
                      tuning: Tuning) -> dict[str, Any]:
    """Until the batch job has cycled through its whole working set once, the cgroup is at
    its limit and its pages sit in zram: the state in which every charge reclaims."""
    limit = tuning.memory_limit_mb * MB
    started = time.monotonic()

    def under_pressure() -> bool:
        passes = [line for line in batch.lines if line.startswith("pass ")]
        return (bool(passes) and cgroup.usage_bytes() >= limit - 8 * MB
                and swap.stored_bytes() >= 64 * MB)

    wait_until("the batch job to fill the cgroup and swap", under_pressure,
               tuning.pressure_timeout_s, [batch])
    return {"waited_s": round(time.monotonic() - started, 2),
            "usage_mb": cgroup.usage_bytes() // MB, "limit_mb": tuning.memory_limit_mb,
            "swapped_mb": swap.stored_bytes() // MB, "limit_hits": cgroup.limit_hits()}


# -- the incident -----------------------------------------------------------------------------
@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C, so every ``finally`` runs and cleans up."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_incident(config: IncidentConfig, say: Say, cutoffs: str) -> IncidentRecord:
    """Stage the incident under the agent (steps 1-5 of the module's docstring); every
    resource is released on the way out unless ``config.keep``."""
    stage = Stage(config, say, IncidentRecord(config.lake, config.run_id, time.time_ns()))
    with ExitStack() as stack, signals_interrupt():
        stage.host(stack)
        stack.callback(_stop_all, stage.children)
        stage.start_system(cutoffs)
        stage.healthy_load()
        stage.batch_job()
        stage.incident()
        if stage.wind_down():
            stack.pop_all()  # --keep: services, agent, cgroups and zram stay
    if not config.keep:
        stage.lap("cleanup")
    return stage.record


class Stage:
    """The incident's moving parts, started phase by phase (one method each)."""

    def __init__(self, config: IncidentConfig, say: Say, record: IncidentRecord) -> None:
        self.config, self.tuning, self.say, self.record = config, config.tuning, say, record
        self.children: list[Child] = []
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        """Record how long the phase that just ended took."""
        now = time.monotonic()
        self.record.timings[name] = round(now - self._clock, 2)
        self._clock = now

    def _child(self, name: str, child: Child) -> Child:
        self.children.append(child)
        self.record.pids[name] = child.pid
        return child

    def host(self, stack: ExitStack) -> None:
        """zram swap, the settlement's memory cgroup and the weighted CPU cgroup."""
        tuning, record = self.tuning, self.record
        self.swap = stack.enter_context(zram_swap(tuning.zram_mb * MB))
        self.memory = stack.enter_context(
            MemoryCgroup("kprobe-demo", tuning.memory_limit_mb * MB))
        self.cpu = stack.enter_context(CpuCgroup("kprobe-demo", tuning.cpu_weight))
        record.zram_device, record.cgroup = self.swap.path, str(self.memory.path)
        record.cgroup_id, record.cpu_cgroup = self.memory.id, str(self.cpu.path)
        self.say(f"zram swap {self.swap.path} ({tuning.zram_mb} MiB), memory cgroup "
                 f"{self.memory.path} (limit {tuning.memory_limit_mb} MiB)")

    def start_system(self, cutoffs: str) -> None:
        """The services held, the agent targeting them, then the services released: the
        agent sees each one from its exec."""
        otlp_port = free_ports(1)[0]
        system = self.system = hold_services(self.config, self.memory, self.cpu, otlp_port,
                                             cutoffs)
        for child in system.services:
            self._child(child.name, child)
        self.record.gateway_argv = system.gateway.argv
        self.record.timeout_arg_index = system.gateway.argv.index(
            "--settlement-timeout-ms") + 1
        self.lap("setup")
        agent = self.agent = self._child("agent", start_agent(
            self.config, [c.pid for c in system.services], otlp_port, self.cpu))
        self.say(f"agent (kprobe record) pid {agent.pid}: payloads of gateway "
                 f"{system.gateway.pid}, risk {system.risk.pid}, settlement "
                 f"{system.settlement.pid}; OTLP on 127.0.0.1:{otlp_port}")
        self.lap("agent_start")
        for child in system.services:
            release(child)
        for child in system.services:
            wait_until(f"the {child.name} service", partial(healthy, system.ports[child.name]),
                       60, [child, agent])
        ports = system.ports
        self.say(f"services up: gateway :{ports['gateway']}, risk :{ports['risk']}, "
                 f"settlement :{ports['settlement']} (in the cgroup)")
        self.lap("services_start")

    def healthy_load(self) -> None:
        """The steady stream, before the batch job: the baseline the incident stands out
        from. Then the stream pauses while the batch job ramps up."""
        load = self.load = self._child("load", start_load(self.config, self.system, self.cpu))
        wait_until(f"{self.tuning.healthy_payments} healthy payments",
                   lambda: len(payments(load)) >= self.tuning.healthy_payments, 120,
                   [load, *self.system.services, self.agent])
        command(load, "pause")
        self.record.payments = payments(load)
        ms = sorted(self.record.healthy_ms())
        self.say(f"{len(self.record.payments)} payments, {len(ms)} settled, "
                 f"{ms[len(ms) // 2] if ms else 0:.0f} ms median (the healthy baseline)")
        self.lap("healthy_load")

    def batch_job(self) -> None:
        """The batch job starts; wait until every charge in the cgroup has to reclaim."""
        batch = self.batch = self._child("batch_job",
                                         start_batch_job(self.config, self.memory, self.cpu))
        self.say(f"nightly reconciliation batch job pid {batch.pid} starts in the settlement "
                 f"service's cgroup ({self.tuning.batch_mb} MiB of records)")
        pressure = self.record.pressure = wait_for_pressure(batch, self.memory, self.swap,
                                                            self.tuning)
        self.say(f"the cgroup is at its limit ({pressure['usage_mb']} MiB) and "
                 f"{pressure['swapped_mb']} MiB of the batch job's pages are in zram")
        self.lap("batch_ramp")

    def incident(self) -> None:
        """The ₹50,000 payment, and what the client saw. A payment that still settled in
        time (the write took 0.7-0.75 s: the margin over the timeout is thin on a busy
        machine) is reported as such and, once the cgroup is back at its limit, the payment
        is sent again, at most ``incident_attempts`` times, each a real payment under the
        same pressure."""
        load, record = self.load, self.record
        for attempt in range(1, self.tuning.incident_attempts + 1):
            sent = len(payments(load))
            command(load, f"send {self.tuning.incident_amount_inr}", "pause")
            wait_until("the incident payment's answer", partial(_answered, load, sent),
                       60, [load, *self.system.services, self.agent])
            record.payments = payments(load)
            incident = record.incident_payment = record.payments[sent]
            record.incident_attempts.append(incident["payment_id"])
            answer = incident["answer"]
            self.say(f"payment {incident['payment_id']} of ₹{incident['amount']:,}: HTTP "
                     f"{incident['status']} after {incident['ms']:.0f} ms "
                     f"{json.dumps(answer.get('error') or answer.get('status'))}")
            if incident["status"] == 504:
                record.failed_payment = incident
                break
            if attempt < self.tuning.incident_attempts:
                # The write just freed its batch: until the batch job fills the cgroup
                # again, the next write would find free pages (CI once answered a resend
                # sent at once in 199 ms).
                self.say("it settled within the timeout: the batch job had not slowed this "
                         "write enough; once the cgroup is at its limit again, sending "
                         f"another ₹{self.tuning.incident_amount_inr:,} payment")
                wait_for_pressure(self.batch, self.memory, self.swap, self.tuning)
        record.ended_ns = time.time_ns()
        self.lap("incident")

    def wind_down(self) -> bool:
        """Stop the load and the batch job; let the services finish (the settlement write
        and every span export: a service answers /healthz only after the request before);
        stop them and the agent, which flushes everything. With --keep, services and agent
        stay up; True then."""
        command(self.load, "stop")
        stop(self.load)
        stop(self.batch, signal.SIGKILL)
        system = self.system
        for child in (system.settlement, system.gateway, system.risk):
            wait_until(f"the {child.name} service to finish",
                       partial(healthy, system.ports[child.name]), 60, system.services)
        if self.config.keep:
            self.record.kept = [f"{c.name} {c.pid}" for c in (*system.services, self.agent)]
            failed = self.record.failed_payment
            if failed is not None:  # the agent keeps running: wait for its flush instead
                location = lake_location(self.config.lake, self.config.lake_env)
                wait_until("the incident's spans to reach the lake",
                           partial(spans_landed, location, failed["payment_id"]), 60,
                           [self.agent], poll_s=0.5)
        else:
            for child in system.services:
                stop(child, signal.SIGTERM)  # a clean exit (status 0) for the replay
            self.record.agent_summary = stop_agent(self.agent, self.config.workdir)
        self.lap("stop_and_flush")
        return self.config.keep


def _stop_all(children: list[Child]) -> None:
    """On the way out (also after an error or Ctrl-C): every child still running is
    stopped, the agent last and gently so it flushes what it recorded."""
    agents = [c for c in children if c.name == "agent"]
    for child in reversed([c for c in children if c.name != "agent"]):
        stop(child, signal.SIGKILL, timeout_s=10)
    for agent in agents:
        stop(agent, signal.SIGTERM, timeout_s=120)


# -- analysis ---------------------------------------------------------------------------------
def kprobe(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    """Run a ``kprobe`` command as a user would; its stdout."""
    proc = subprocess.run([*KPROBE, *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise IncidentError(f"kprobe {args[0]} failed ({proc.returncode}): "
                            f"{proc.stderr.strip()[-600:]}")
    return proc.stdout


def analysis_env(config: IncidentConfig, ray: bool) -> dict[str, str]:
    env = child_env(config.lake_env)
    if ray:  # a small local cluster of kprobe's own (Ray's token auth on), files in the work dir
        env.setdefault("KPROBE_COMPUTE_RAY_OBJECT_STORE_MB", "128")
        env["RAY_TMPDIR"] = str(config.workdir / "ray")
    return env


def analyze(config: IncidentConfig, record: IncidentRecord, ray: bool) -> dict[str, Any]:
    """``kprobe analyze`` over the whole incident, in-process or on a local Ray cluster."""
    start, end = record.started_ns - 10**9, record.ended_ns + 5 * 10**9
    executor = ["--executor", "ray", "--num-cpus", "2"] if ray else ["--executor", "local"]
    out = kprobe(["analyze", "--lake", config.lake, f"--from={start}", f"--to={end}",
                  *executor, "--format", "json"], analysis_env(config, ray))
    result: dict[str, Any] = json.loads(out)
    return result


def explain(config: IncidentConfig, payment_id: str) -> tuple[str, dict[str, Any]]:
    """``kprobe explain`` of the payment: (text, JSON document)."""
    env = analysis_env(config, False)
    text = kprobe(["explain", payment_id, "--lake", config.lake], env)
    doc: dict[str, Any] = json.loads(kprobe(["explain", payment_id, "--lake", config.lake,
                                             "--format", "json"], env))
    return text, doc


# -- checks -----------------------------------------------------------------------------------
def leftovers(record: IncidentRecord, workdir: Path) -> dict[str, list[str]]:
    """What this run left behind: its processes (and any process whose command line names
    its work dir, e.g. a Ray worker), its cgroup, its zram device and swap."""
    alive = []
    for name, pid in record.pids.items():
        if _running(pid):
            alive.append(f"{name} {pid}")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(workdir) in cmdline and _running(int(entry.name)):
                alive.append(f"{cmdline.strip()[:80]} {entry.name}")
    device = record.zram_device.removeprefix("/dev/zram")
    return {
        "processes": sorted(set(alive)),
        "cgroups": [path for path in (record.cgroup, record.cpu_cgroup)
                    if path and Path(path).exists()],
        "zram": [record.zram_device] if device.isdigit() and (
            zram_device_exists(int(device)) or record.zram_device in active_swaps()) else [],
    }


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- reading the outcome ----------------------------------------------------------------------
def lake_location(lake: str, lake_env: dict[str, str]) -> Any:
    """The lake the demo records into; ``lake_env`` holds an S3 lake's KPROBE_S3_*
    variables (LakeSettings takes them by those names)."""
    from kprobe.lake import LakeSettings, resolve

    settings: dict[str, Any] = {k: v for k, v in lake_env.items() if k != "KPROBE_LAKE"}
    return resolve(LakeSettings(lake=lake, **settings))


def spans_landed(location: Any, payment_id: str) -> bool:
    """The payment's gateway span and settlement write are both in the lake."""
    try:
        spans = payment_spans(location, payment_id)
    except IncidentError:  # not flushed yet
        return False
    return spans["settlement"] is not None


def payment_spans(location: Any, payment_id: str) -> dict[str, Any]:
    """Every span of the payment's trace(s) in the lake; ``gateway`` is its POST /payments
    span and ``settlement`` its settlement write (None when missing)."""
    from kprobe.lake import connect

    con = connect(location, ["spans"])
    try:
        cursor = con.execute("""
            SELECT trace_id, span_id, parent_span_id, node, service, name, kind, start_ns,
                   end_ns, dur_ns, status, status_message, pid, tid
            FROM spans
            WHERE trace_id IN (SELECT trace_id FROM spans
                               WHERE json_extract_string(attributes, '$."payment.id"') = ?)
            QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY end_ns) = 1
            ORDER BY start_ns""", [payment_id])
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()

    def first(service: str, name: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["service"] == service and r["name"] == name), None)

    gateway = first("payment-gateway", "POST /payments")
    if gateway is None:
        raise IncidentError(f"no gateway span of {payment_id} in the lake")
    return {"gateway": gateway, "settlement": first("settlement-service", "settlement.write"),
            "all": rows}


def verdict(explanation: dict[str, Any], spans: dict[str, Any]) -> dict[str, Any]:
    """What ``kprobe explain`` concluded, reduced to what the ground truth can check: the
    root cause's kind, the culprit process it names, and the delay it attributes to the
    settlement write against that span's measured duration."""
    results = explanation.get("transactions") or []
    result = next((r for r in results if r.get("failed")), results[0] if results else {})
    root = result.get("root_cause") or {}
    steps = result.get("steps") or []
    culprit = None
    if root.get("target_label") == "KernelEpisode":
        drivers = [s["driver"] for s in steps if s.get("kind") == "kernel"
                   and s.get("target") == root.get("target") and s.get("driver")]
        culprit = int(drivers[0]["pid"]) if drivers else None
    settlement = spans.get("settlement")
    attributed = None
    settlement_ms = None
    if settlement is not None:
        key = f"{settlement['trace_id']}:{settlement['span_id']}"
        settlement_ms = round(settlement["dur_ns"] / 1e6, 1)
        delays = [s.get("delay_ns") or 0 for s in steps if s.get("kind") == "kernel"
                  and s.get("cause") == "memory_pressure" and s.get("span") == key]
        attributed = round(sum(delays) / 1e6, 1) if delays else None
    return {"root_cause_kind": root.get("kind"), "root_cause": root or None,
            "culprit_pid": culprit, "settlement_span_ms": settlement_ms,
            "attributed_delay_ms": attributed,
            "root_cause_delay_ms": round(root["delay_ns"] / 1e6, 1)
            if root.get("delay_ns") is not None else None,
            "gateway_span_ms": round(spans["gateway"]["dur_ns"] / 1e6, 1)}


def settlement_writes(location: Any) -> list[dict[str, Any]]:
    """Every settlement write in the lake, in order: payment id and duration (ms)."""
    from kprobe.lake import connect

    con = connect(location, ["spans"])
    try:
        rows = con.execute("""
            SELECT json_extract_string(attributes, '$."payment.id"') AS payment_id,
                   round(dur_ns / 1e6, 1) AS ms, start_ns
            FROM spans WHERE service = 'settlement-service' AND name = 'settlement.write'
            ORDER BY start_ns""").fetchall()
    finally:
        con.close()
    return [{"payment_id": p, "ms": ms, "start_ns": s} for p, ms, s in rows]
