"""Run a scenario end to end as a user would, and read back what kprobe concluded.

    run = record(tmp_path, "memory", "--cgroup", cg)     # kprobe run -- the service
    run.analyze()                                        # kprobe analyze --from --to
    verdict = run.explain(op)                            # kprobe explain ID --format json

``Verdict`` is the root cause of one operation as ``explain`` states it, reduced to what the
ground truth can check: the cause's kind, the culprit pid (the process that drove the
memory or disk episode, or owns the thread that held the CPU or the lock), the culprit
thread, the connection of a network episode, and the delay attributed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kprobe.commands._explain_text import chain_lines
from kprobe.compute.explain import explain
from kprobe.compute.explain_model import ExplainedTransaction
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, connect, resolve
from tests.e2e.scenarios.telemetry import GroundTruth, Operation
from tests.support import REPO, stacks_of

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
_PID = re.compile(r"\bPID (\d+)")
KEEP_DIR = Path(os.environ.get("KPROBE_TEST_KEEP_DIR", "/var/tmp/kprobe-test-failures"))


@dataclass
class Verdict:
    payment_id: str
    failed: bool
    kind: str | None = None
    culprit_pid: int | None = None
    culprit_tid: int | None = None
    conn: str | None = None
    delay_ns: int | None = None
    sufficient: bool | None = None
    dur_ns: int = 0
    over_ns: int | None = None
    kernel_causes: list[str] = field(default_factory=list)
    # every kernel line of the explanation (any span, nested holders too): (kind, delay)
    kernel_delays: list[tuple[str, int]] = field(default_factory=list)
    # the other ranked causes: (kind, culprit pid or None, delay)
    others: list[tuple[str, int | None, int]] = field(default_factory=list)
    text: str = ""

    def covers_lateness(self) -> bool:
        """The root cause accounts for most of how late the operation was (all of it when
        ``sufficient``; on a loaded machine the run queue may add the rest)."""
        return bool(self.delay_ns and self.over_ns and self.delay_ns >= self.over_ns / 2)

    def line(self) -> str:
        """One line for the report: what kprobe said, against the measured duration."""
        who = (f"pid {self.culprit_pid}" if self.culprit_pid else
               f"conn {self.conn}" if self.conn else "-")
        if self.culprit_tid:
            who += f" tid {self.culprit_tid}"
        delay = f"{self.delay_ns / 1e6:.0f} ms" if self.delay_ns is not None else "-"
        return (f"{self.payment_id}: span {self.dur_ns / 1e6:.0f} ms, root cause "
                f"{self.kind or 'none'} ({who}), attributed {delay}"
                f"{'' if self.sufficient is not False else ' (not sufficient alone)'}")


def kprobe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``kprobe ARGS``, which must succeed; one that outlives ``timeout`` fails with what
    each of its threads was doing (a hang is diagnosed from the failure alone)."""
    child = subprocess.Popen([*KPROBE, *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = stacks_of(child.pid)
        child.kill()
        out, err = child.communicate()
        raise AssertionError(f"kprobe {args[0]} did not finish in {timeout:.0f} s; its "
                             f"threads:\n{stacks}\nstderr: {err[-3000:]}") from None
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    assert proc.returncode == 0, f"kprobe {args[0]} failed ({proc.returncode}): " \
                                 f"{proc.stderr[-3000:]}"
    return proc


@dataclass
class ScenarioRun:
    tmp: Path
    truth: GroundTruth
    lake: Path
    agent_summary: dict[str, Any]
    analysis: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> Any:
        return resolve(LakeSettings(lake=str(self.lake)))

    def analyze(self) -> dict[str, Any]:
        """``kprobe analyze`` over the operations' time range, in this process's windows."""
        start = min(op.start_ns for op in self.truth.operations) - 1_000_000_000
        end = max(op.end_ns for op in self.truth.operations) + 1_000_000_000
        proc = kprobe("analyze", "--lake", str(self.lake), f"--from={start}", f"--to={end}",
                      "--executor", "local", "--format", "json")
        self.analysis = json.loads(proc.stdout)
        return self.analysis

    def explain_cli(self, op: Operation) -> Verdict:
        """``kprobe explain <payment id> --format json``, as a user runs it."""
        proc = kprobe("explain", op.payment_id, "--lake", str(self.lake), "--format", "json")
        (result,) = json.loads(proc.stdout)["transactions"]
        return verdict(op, result)

    def explain(self, op: Operation) -> Verdict:
        """The same explanation through compute's API (no interpreter start per operation)."""
        (result,) = explain(self.location, op.payment_id, ComputeSettings())
        return verdict(op, result.model_dump(mode="json"))

    @contextmanager
    def judged(self, *, at_least: int) -> Iterator[list[Verdict]]:
        """The verdicts of every operation that missed its deadline (``explain_missed``),
        for the assertions inside; on a failed one, the lake is kept (``kept_on_failure``),
        also when fewer than ``at_least`` operations missed."""
        verdicts: list[Verdict] = []
        with self.kept_on_failure(verdicts):
            verdicts += explain_missed(self, at_least=at_least)
            yield verdicts

    @contextmanager
    def kept_on_failure(self, verdicts: list[Verdict] | None = None) -> Iterator[None]:
        """On a failed assertion inside, keep the lake, the ground truth and a diagnosis of
        every operation that missed its deadline (``diagnose``) in a directory that outlives
        the test (``$KPROBE_TEST_KEEP_DIR``, default /var/tmp/kprobe-test-failures), and add
        its path and the diagnosis to the failure message."""
        try:
            yield
        except AssertionError as err:
            kept = KEEP_DIR / f"{self.truth.scenario}-{time.strftime('%Y%m%dT%H%M%S')}"
            kept.mkdir(parents=True, exist_ok=True)
            try:
                text = self.diagnose(self.truth.missed(), verdicts or [])
            except Exception as failed:  # noqa: BLE001 - never hide the test's own failure
                text = f"(diagnosis failed: {failed!r})\n"
            (kept / "diagnosis.txt").write_text(text)
            shutil.copytree(self.lake, kept / "lake")
            shutil.copy(self.tmp / "truth.json", kept / "truth.json")
            raise AssertionError(f"{err}\n(lake, ground truth and diagnosis kept in {kept})"
                                 f"\n{text[-6000:]}") from err

    @staticmethod
    def _untraced_switch_ins(con: Any, op: Operation) -> list[str]:
        """Switch-outs of the thread with no switch-in since its previous one: the kernel
        did not trace the switch that put it on the CPU (seen here: the switch out of a
        thread of PID 1), so its off-CPU interval, emitted at switch-in, is missing too.
        Names the task the CPU's previous traced switch put on it."""
        rows = con.execute("""
            WITH mine AS (
                SELECT ts_ns, cpu, prev_tid = ? AS out_,
                       lag(prev_tid = ?) OVER (ORDER BY ts_ns) AS out_before
                FROM sched WHERE kind = 'switch' AND (prev_tid = ? OR next_tid = ?)
                  AND ts_ns BETWEEN ? AND ?)
            SELECT (m.ts_ns - ?) / 1e6, m.cpu,
                   (SELECT next_comm || '(' || next_pid || ')' FROM sched x
                    WHERE x.kind = 'switch' AND x.cpu = m.cpu AND x.ts_ns < m.ts_ns
                    ORDER BY x.ts_ns DESC LIMIT 1)
            FROM mine m WHERE m.out_ AND m.out_before AND m.ts_ns >= ?
            ORDER BY m.ts_ns""",
                           [op.tid, op.tid, op.tid, op.tid, op.start_ns - 10**9, op.end_ns,
                            op.start_ns, op.start_ns]).fetchall()
        return [f"  UNTRACED SWITCH-IN before the switch-out at +{at:.3f} ms on cpu {cpu}: "
                f"the CPU's last traced switch put {holder} on it" for at, cpu, holder in rows]

    def diagnose(self, ops: list[Operation], verdicts: list[Verdict]) -> str:
        """What the lake holds about each operation's thread while it ran: its off-CPU
        intervals (state, wait reason, waker, kernel stack), its switches, the block requests
        in flight (by process), and what the agent lost; then what explain said."""
        con = connect(self.location)
        out = [f"scenario {self.truth.scenario}, service pid {self.truth.pid}, agent "
               f"{json.dumps(self.agent_summary)}"]
        lost = con.execute("SELECT source, reason, sum(count) FROM lost GROUP BY ALL"
                           " ORDER BY ALL").fetchall()
        out.append(f"lost rows of the whole recording: {lost or 'none'}")
        said = {v.payment_id: v for v in verdicts}
        for op in ops:
            s, e = op.start_ns, op.end_ns
            out.append(f"\n== {op.payment_id}: {op.dur_ns / 1e6:.2f} ms (deadline "
                       f"{op.deadline_ms:g} ms), thread {op.tid}; by the kernel's schedstat: "
                       f"{op.oncpu_ns / 1e6:.2f} ms on CPU, {op.runqueue_ns / 1e6:.2f} ms "
                       f"waiting for one")
            v = said.get(op.payment_id)
            if v is not None:
                out.append(f"explain: {v.line()}; kernel causes {v.kernel_causes}")
                out.append(v.text)
            rows = con.execute("""
                SELECT (o.ts_ns - ?) / 1e6 AS at_ms, o.dur_ns / 1e6 AS ms, o.state,
                       o.wait_reason, o.waker_comm, o.waker_pid,
                       list_filter(k.frames, lambda f: NOT regexp_matches(
                           f, '^(bpf_|__traceiter_|__schedule|schedule\\+)'))[1:8] AS stack,
                       least(o.ts_ns + o.dur_ns, ?) - greatest(o.ts_ns, ?) AS overlap_ns
                FROM offcpu o LEFT JOIN (SELECT DISTINCT ON (node, stack_id) * FROM kstacks)
                     k ON k.node = o.node AND k.stack_id = o.kstack_id
                WHERE o.tid = ? AND o.ts_ns < ? AND o.ts_ns + o.dur_ns > ?
                ORDER BY o.ts_ns""", [s, e, s, op.tid, e, s]).fetchall()
            covered = sum(r[7] for r in rows)
            out.append(f"off-CPU intervals of the thread ({len(rows)}, covering "
                       f"{covered / 1e6:.2f} ms of the span):")
            out += [f"  +{r[0]:.3f} ms {r[1]:.3f} ms {r[2]} {r[3]} waker {r[4]}({r[5]})"
                    f" {r[6]}" for r in rows[:40]]
            switches = con.execute("""
                SELECT (ts_ns - ?) / 1e6, kind, cpu, prev_tid, prev_state, next_tid
                FROM sched WHERE (prev_tid = ? OR next_tid = ? OR wakee_tid = ?)
                  AND ts_ns BETWEEN ? AND ? ORDER BY ts_ns""",
                                   [s, op.tid, op.tid, op.tid, s, e]).fetchall()
            out.append(f"sched rows of the thread ({len(switches)}):")
            out += [f"  +{r[0]:.3f} ms {r[1]} cpu {r[2]} prev {r[3]} ({r[4]}) next {r[5]}"
                    for r in switches[:40]]
            out += self._untraced_switch_ins(con, op)
            block = con.execute("""
                SELECT pid, comm, dev, count(*), sum(bytes), max(dur_ns) / 1e6,
                       min(ts_ns - ?) / 1e6, max(ts_ns + dur_ns - ?) / 1e6
                FROM block_io WHERE ts_ns < ? AND ts_ns + dur_ns > ?
                GROUP BY ALL ORDER BY 5 DESC""", [s, s, e, s]).fetchall()
            out.append("block requests in flight during the span (pid comm dev requests "
                       "bytes longest_ms first_ms last_ms):")
            out += [f"  {r}" for r in block[:20]] or ["  none"]
        con.close()
        return "\n".join(out) + "\n"


def record(tmp: Path, scenario: str, *service_args: str, timeout: float = 240,
           agent_cpu: int | None = None) -> ScenarioRun:
    """``kprobe run -- python -m tests.e2e.scenarios.<scenario> ...``: the real agent
    records the service (and everything else on the node) and receives its spans.
    ``agent_cpu``: the agent runs on that CPU only (a scenario that keeps one CPU for the
    service, so that the agent's own work is not a CPU fault there; the service pins
    itself)."""
    lake, truth = tmp / "lake", tmp / "truth.json"
    started = time.monotonic()
    pin = ["taskset", "-c", str(agent_cpu)] if agent_cpu is not None else []
    proc = subprocess.run(
        [*pin, *KPROBE, "run", "--lake", str(lake), "--spool-dir", str(tmp / "spool"), "--format",
         "json", "--", sys.executable, "-m", f"tests.e2e.scenarios.{scenario}", "--truth",
         str(truth), *service_args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    assert proc.returncode == 0, f"scenario {scenario} failed: {proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not summary["spooled_batches"], summary
    run = ScenarioRun(tmp, GroundTruth.load(truth), lake, summary)
    run.agent_summary["seconds"] = round(time.monotonic() - started, 1)
    return run


def explain_missed(run: ScenarioRun, *, at_least: int) -> list[Verdict]:
    """Verdicts for every operation that missed its deadline (the first one via the CLI)."""
    missed = run.truth.missed()
    assert len(missed) >= at_least, (
        f"only {len(missed)} of {len(run.truth.operations)} operations missed their deadline: "
        f"{[round(op.dur_ns / 1e6) for op in run.truth.operations]} ms")
    run.analyze()
    verdicts = [run.explain_cli(missed[0])] + [run.explain(op) for op in missed[1:]]
    for v in verdicts:
        print(v.line())
    return verdicts


def verdict(op: Operation, result: dict[str, Any]) -> Verdict:
    """The root cause ``explain`` gives for one operation, with the culprit it names."""
    text = "\n".join(chain_lines(ExplainedTransaction.model_validate(result)))
    v = Verdict(op.payment_id, bool(result["failed"]), dur_ns=result["dur_ns"], text=text)
    failure = result.get("failure") or {}
    v.over_ns = failure.get("over_ns")
    v.kernel_causes = sorted({s["cause"] for s in result["steps"] if s["kind"] == "kernel"})
    v.kernel_delays = [(s["cause"], int(s.get("delay_ns") or 0)) for s in result["steps"]
                       if s["kind"] == "kernel"]
    root = result.get("root_cause")
    for other in result.get("other_causes") or []:
        found = _PID.findall(other.get("driver") or "")
        v.others.append((other["kind"], int(found[-1]) if found else None,
                         int(other.get("delay_ns") or 0)))
    if not root:
        return v
    v.kind, v.delay_ns, v.sufficient = root["kind"], root["delay_ns"], root["sufficient"]
    target: str = root["target"]
    if root["target_label"] == "Thread":
        v.culprit_tid = int(target.rsplit(":", 1)[1])
        found = _PID.findall(root.get("driver") or "")
        v.culprit_pid = int(found[-1]) if found else None
    elif root["target_label"] == "KernelEpisode":
        # the kernel line of that episode names its driver (memory, disk) or connection
        steps = [s for s in result["steps"] if s["kind"] == "kernel" and s["target"] == target]
        drivers = [s["driver"] for s in steps if s.get("driver")]
        v.culprit_pid = int(drivers[0]["pid"]) if drivers else None
        v.conn = next((s["conn"] for s in steps if s.get("conn")), None)
    return v
