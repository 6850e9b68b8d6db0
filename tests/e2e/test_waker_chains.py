"""Accuracy beyond the engine's own scenarios: waits no stack rule names, faults one or
more hops away behind real third-party servers nobody instrumented, spans without a
``thread.id``, and decoys everywhere (a bigger allocator in another cgroup, a hog on the
other CPU, a second lock holder). Each affected payment must get the right root cause
kind and the right culprit; the decoy is never named.

Ground truth is what the test did (the culprit's pid, started by the test) and what the
kernel measured for each payment (durations, schedstat run-queue waits).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kprobe.compute.graph.queries import run_cypher
from kprobe.compute.graph.store import list_snapshots
from kprobe.compute.settings import ComputeSettings
from tests.cgroups import TestCgroup
from tests.e2e.scenarios.faults import cpu_cgroup, culprit, zram_swap
from tests.e2e.scenarios.harness import ScenarioRun, record
from tests.e2e.scenarios.servers import Postgres, nginx_proxy, postgres_server, redis_server
from tests.support import free_port, require_root

MB = 1 << 20
WAITS = ("lock_wait", "thread_wait", "remote_call")


def _cpu_time(pid: int) -> int:
    """Nanoseconds the process's threads have run on a CPU (their schedstat, by the
    kernel)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that exited meanwhile
    return total


def _spans(run: ScenarioRun, service: str) -> list[dict[str, Any]]:
    snaps = list_snapshots(run.location)
    table = run_cypher(run.location, snaps, f"""
        MATCH (s:Span) WHERE s.service = '{service}' AND s.origin = 'otel'
        RETURN s.name AS name, s.mapped_by AS mapped_by, s.tid AS tid""", {},
                       ComputeSettings())
    return list(table.to_pylist())


@pytest.mark.parametrize("ipc", ["sem", "eventfd"])
def test_unnamed_wait_followed_into_the_workers_memory_pressure(tmp_path: Path,
                                                                ipc: str) -> None:
    """GIVEN a payment that hands its settlement batch to a worker process and waits for it
    on a System V semaphore (or an eventfd): stacks no wait-reason rule names; the worker
    (on CPU 0) in a memory cgroup where a batch job cycles more than the limit through
    zram; a bigger allocator in another cgroup (the decoy), on CPU 1: a decoy that shared
    the worker's CPU delayed it for real, holding that CPU while reclaiming in its own
    cgroup (ciF, 2026-12-08: 32 ms of that against 31 ms of the worker's own reclaim, and
    the verdict went to the decoy's episode)
    WHEN payments run (deadline 60 ms; ~15 ms without the batch job)
    THEN each late one is explained by memory pressure driven by the batch job's pid, found
    through the wait for the worker (the payment's own thread only waited)."""
    require_root()
    with zram_swap(1 << 30), TestCgroup(memory_limit=192 * MB, swap=True) as cg, \
            TestCgroup(memory_limit=256 * MB, swap=True) as other, cpu_cgroup() as cpu, \
            culprit("allocator", "--mb", "256", "--cgroup", str(cg.path),
                    "--cgroup", str(cpu)) as batch, \
            culprit("allocator", "--mb", "384", "--cgroup", str(other.path),
                    "--cgroup", str(cpu), "--cpu", "1") as decoy:
        # deadline 60 ms: under the batch job's pressure a payment takes 70-180 ms here
        # (ci11: 72-92 ms in 8 of 10, so a 100 ms deadline saw only 2 of them late)
        run = record(tmp_path, "waits", "--ipc", ipc, "--worker-cgroup", str(cg.path),
                     "--worker-cpu", "0", "--cgroup", str(cpu), "--ops", "10",
                     "--deadline-ms", "60", "--interval-ms", "300", "--batch-mb", "32")
    with run.judged(at_least=3) as verdicts:
        for v in verdicts:
            assert v.failed and v.covers_lateness(), v.text
            assert (v.kind, v.culprit_pid) == ("memory_pressure", batch.pid), v.text
            assert v.culprit_pid != decoy.pid
            assert "thread_wait" in v.kernel_causes, v.text  # the wait for the worker


def test_redis_memory_pressure_inside_the_server(tmp_path: Path) -> None:
    """GIVEN Debian's redis-server (uninstrumented) in a memory cgroup where a batch job
    cycles more than the limit; a bigger allocator in another cgroup (decoy); a payment
    client that stores a 16 MiB settlement batch per payment, single-threaded, whose spans
    carry no thread.id
    (redis and the client on CPU 0, the allocators and the recording agent on CPU 1: a
    memory fault without a CPU one; sharing CPUs, the batch job's run-queue waits on redis
    outgrew its reclaim, and in one CI run the agent's own threads took redis's CPU for
    123 ms, as long as its reclaim)
    WHEN payments run (deadline 80 ms)
    THEN the late ones are explained by memory pressure in redis, driven by the batch job;
    the payment spans were mapped as the process's only thread, the redis calls by
    socket."""
    require_root()
    with zram_swap(1 << 30), TestCgroup(memory_limit=192 * MB, swap=True) as cg, \
            TestCgroup(memory_limit=256 * MB, swap=True) as other, cpu_cgroup() as cpu, \
            redis_server([cg.path, cpu], cpu=0) as redis, \
            culprit("allocator", "--mb", "256", "--cgroup", str(cg.path),
                    "--cgroup", str(cpu), "--cpu", "1") as batch, \
            culprit("allocator", "--mb", "384", "--cgroup", str(other.path),
                    "--cgroup", str(cpu), "--cpu", "1") as decoy:
        run = record(tmp_path, "thirdparty", "--server", "redis", "--port", str(redis.port),
                     "--cgroup", str(cpu), "--cpu", "0", "--ops", "12", "--deadline-ms", "80",
                     "--interval-ms", "300", "--value-mb", "16", agent_cpu=1)
    with run.judged(at_least=3) as verdicts:
        for v in verdicts:
            assert v.failed and v.covers_lateness(), v.text
            assert (v.kind, v.culprit_pid) == ("memory_pressure", batch.pid), v.text
            assert v.culprit_pid != decoy.pid
        mapped = {(s["name"], s["mapped_by"]) for s in _spans(run, "settlement-cache-client")}
        assert mapped == {("POST /payments", "single_thread"), ("redis SET", "net_tuple"),
                          ("redis DEL", "net_tuple")}, mapped


def test_postgres_row_lock_held_by_a_session_whose_client_computes(tmp_path: Path) -> None:
    """GIVEN Debian's postgres (uninstrumented); a batch session that keeps account 1's row
    locked (an UPDATE in an open transaction) while its client computes for 250 ms, then
    commits; two decoy sessions fighting over account 2's row lock (each holds it 280 ms, idle)
    WHEN payments credit account 1 (deadline 100 ms; a few ms without the batch)
    THEN the late ones are explained by the wait for the batch's client process: the
    payment waited for its backend, which waited for the batch's backend (the row lock),
    which waited for its client (three hops, across four processes)."""
    require_root()
    with postgres_server() as pg, cpu_cgroup() as cpu:
        setup = Postgres(pg.port)
        setup.query("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
        setup.query("INSERT INTO accounts VALUES (1, 0), (2, 0)")
        setup.close()
        with culprit("pg-locker", "--port", str(pg.port), "--row", "1", "--hold-ms", "250",
                     "--every-ms", "300") as locker, \
                culprit("pg-locker", "--port", str(pg.port), "--row", "2", "--hold-ms", "280",
                        "--every-ms", "300", "--hold-by", "sleep") as decoy, \
                culprit("pg-locker", "--port", str(pg.port), "--row", "2", "--hold-ms", "280",
                        "--every-ms", "300", "--hold-by", "sleep") as decoy2:
            run = record(tmp_path, "thirdparty", "--server", "postgres", "--port",
                         str(pg.port), "--cgroup", str(cpu), "--ops", "15",
                         "--deadline-ms", "100", "--interval-ms", "200")
    with run.judged(at_least=3) as verdicts:
        for v in verdicts:
            assert v.failed and v.covers_lateness(), v.text
            # the wait for the batch's client, or (when that client itself waited for
            # a CPU meanwhile) the CPU taken from it: either way the culprit is it
            assert v.kind in (*WAITS, "cpu_contention"), v.text
            if v.kind in WAITS:
                assert v.culprit_pid == locker.pid, v.text
            assert v.culprit_pid not in (decoy.pid, decoy2.pid), v.text


def test_nginx_upstream_shares_its_cpu_with_hogs(tmp_path: Path) -> None:
    """GIVEN Debian's nginx as a reverse proxy in front of an uninstrumented upstream that
    prices each payment (10 ms of CPU), everything on CPU 1 where a hog's threads spin;
    a bigger hog on CPU 0 (decoy), with the recording agent (on CPU 1 its threads were a
    CPU holder of their own: twice the verdict named the agent)
    WHEN payments POST through nginx (deadline 25 ms)
    THEN the late ones are explained by CPU contention from the hog on CPU 1 (behind the
    proxy: the payment waited for nginx, which waited for the upstream, which waited for
    the CPU), never the decoy."""
    require_root()
    port = free_port()
    with cpu_cgroup() as cpu, \
            culprit("hog", "--threads", "2", "--cpu", "1", "--cgroup", str(cpu)) as hog, \
            culprit("hog", "--threads", "3", "--cpu", "0", "--cgroup", str(cpu)) as decoy, \
            culprit("upstream", "--port", str(port), "--cpu", "1", "--work-ms", "10") as up, \
            nginx_proxy(port, [cpu], cpu=1) as nginx:
        (cpu / "cgroup.procs").write_text(str(up.pid))
        run = record(tmp_path, "thirdparty", "--server", "nginx", "--port", str(nginx.port),
                     "--cgroup", str(cpu), "--cpu", "1", "--ops", "15", "--deadline-ms", "25",
                     "--interval-ms", "150", agent_cpu=0)
    with run.judged(at_least=3) as verdicts:
        for v in verdicts:
            assert v.failed and v.covers_lateness(), v.text
            assert (v.kind, v.culprit_pid) == ("cpu_contention", hog.pid), v.text
            assert v.culprit_pid != decoy.pid


def test_two_concurrent_faults_are_both_reported_ranked_by_delay(tmp_path: Path) -> None:
    """GIVEN two faults at once on each payment: its settlement handoff waits (on a System V
    semaphore) for a worker in a memory cgroup where a batch job cycles more than the
    limit (the worker on CPU 0, where the batch job may also run), then it prices the
    payment on CPU 1 where a hog's threads spin
    WHEN payments run (deadline 60 ms)
    THEN each late one names the larger of the faults the kernel measured as its root
    cause, with its culprit and most of that fault's measured delay: the batch job (the
    handoff: the worker's reclaim, and its wait for a CPU the batch job held), the hog
    (the payment's schedstat run-queue wait), or a neighbour of this shared machine that
    took the worker's CPU, only when the worker's
    measured wait for a CPU was that large; and it also reports the other culprit when
    its fault was material (>= 10 ms)."""
    require_root()
    with zram_swap(1 << 30), TestCgroup(memory_limit=192 * MB, swap=True) as cg, \
            cpu_cgroup() as cpu, \
            culprit("allocator", "--mb", "256", "--cgroup", str(cg.path),
                    "--cgroup", str(cpu)) as batch, \
            culprit("hog", "--threads", "3", "--cpu", "1", "--cgroup", str(cpu)) as hog:
        hog_cpu_ns, started = _cpu_time(hog.pid), time.monotonic_ns()
        # deadline 60 ms, as for the single fault above: both faults at once took 82-115
        # ms in a clean-clone run here (ciE), so a 100 ms deadline saw only 2 of 12 late
        run = record(tmp_path, "waits", "--ipc", "sem", "--worker-cgroup", str(cg.path),
                     "--cgroup", str(cpu), "--ops", "12", "--deadline-ms", "60",
                     "--interval-ms", "300", "--batch-mb", "32", "--price-paths", "40000",
                     "--price-cpu", "1", "--worker-cpu", "0")
        # the hog's threads' share of CPU 1 over the run (its schedstat): the part of the
        # payment's wait for CPU 1 the hog is expected to have caused; neighbours of this
        # shared machine took the rest
        hog_share = (_cpu_time(hog.pid) - hog_cpu_ns) / (time.monotonic_ns() - started)
        print(f"hog's share of CPU 1: {hog_share:.2f}")
    with run.judged(at_least=3) as verdicts:
        steps = run.truth.facts["steps"]
        ops = {op.payment_id: op for op in run.truth.operations}
        for v in verdicts:
            step, op = steps[v.payment_id], ops[v.payment_id]
            # what the kernel measured: the handoff, of which the worker waited for a
            # CPU (held by the batch job or by neighbours: at most that), and the
            # payment's own wait for CPU 1 (the hog's threads, at most that)
            handoff, worker_cpu = step["handoff_ns"], step["worker_runqueue_ns"]
            hog_ns = op.runqueue_ns * hog_share
            measured = {"batch": (handoff - worker_cpu, handoff),
                        "hog": (hog_ns, op.runqueue_ns),
                        "neighbour": (0, max(worker_cpu, op.runqueue_ns))}
            # (at least, at most)
            print(v.payment_id, {k: [round(x / 1e6) for x in m]
                                 for k, m in measured.items()}, v.others)
            assert v.failed, v.text
            fault = ("batch" if v.culprit_pid == batch.pid and v.kind in (
                         "memory_pressure", "cpu_contention") else
                     "hog" if (v.kind, v.culprit_pid) == ("cpu_contention", hog.pid) else
                     "neighbour" if v.kind == "cpu_contention" else None)
            assert fault is not None, (v.text, measured)
            # the larger fault wins when it is clearly larger
            largest = max(at_least for at_least, _ in measured.values())
            assert measured[fault][1] * 1.5 >= largest, (v.text, fault, measured)
            # and the delay attributed to it is most of what was measured for it (not
            # of the whole lateness: at a load of 24 on 2 cores, thirty neighbours
            # together took the worker's CPU longer than the batch job did)
            assert (v.delay_ns or 0) >= measured[fault][0] / 2, (v.text, measured)
            # the other culprit is reported too when its fault was material
            others = {(k, p) for k, p, _ in v.others}
            if fault != "batch" and measured["batch"][0] >= 10e6:
                assert {("memory_pressure", batch.pid),
                        ("cpu_contention", batch.pid)} & others, (v.text, v.others)
            if fault != "hog" and hog_ns >= 10e6:
                assert ("cpu_contention", hog.pid) in others, (v.text, v.others)
