"""What the syscalls family costs a syscall, per attach strategy (root; run by hand).

    sudo .venv/bin/python -m tests.bench.bench_syscall_overhead [--iterations N] [--repeat R]

A C loop of getppid() (tests/programs/null_syscalls.c) is timed with no program
attached (the kernel's own cost), then under each strategy, once untargeted (the price
every other process on the node pays) and once targeted (fully captured):

  tp_btf          the family as shipped: tp_btf/sys_enter + tp_btf/sys_exit
  per_tp          the same logic on every syscalls/sys_enter_* and sys_exit_* tracepoint
                  (needs tracefs at /sys/kernel/tracing)
  empty_tp_btf    tp_btf programs that return at once: the floor of any BPF approach

and a read(/dev/zero, 64) loop targeted with payloads on (the cost of copying one small
payload). Each figure is the median over ``repeat`` runs of the best of 5 rounds; runs
of all configurations are interleaved because CPU speed drifts here (ARCHITECTURE.md,
Measured facts).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.sensor import BPF_DIR, Sensor

REPO = Path(__file__).resolve().parents[2]
TRACEFS_SYSCALLS = Path("/sys/kernel/tracing/events/syscalls")

libbpf._lib.bpf_program__attach_tracepoint.restype = ctypes.c_void_p
libbpf._lib.bpf_program__attach_tracepoint.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                      ctypes.c_char_p]


def build(out: Path) -> tuple[Path, Path]:
    """The test programs, and the variants object (as ``syscalls.bpf.o`` in its own dir)."""
    subprocess.run(["make", "-s", "-C", str(REPO / "tests/programs"), f"OUT={out}"], check=True)
    subprocess.run(["make", "-s", "-C", str(BPF_DIR)], check=True)
    objdir = out / "variants"
    objdir.mkdir(exist_ok=True)
    subprocess.run(
        ["make", "-s", "-C", str(BPF_DIR), "object",
         f"SRC={Path(__file__).with_name('syscalls_attach_variants.bpf.c').resolve()}",
         f"OBJ={(objdir / 'syscalls.bpf.o').resolve()}"], check=True)
    return out / "null_syscalls", objdir


def run_loop(binary: Path, mode: str, iterations: int,
             target: Callable[[int], None] | None) -> float:
    with subprocess.Popen([str(binary), mode, str(iterations), "5"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        word, pid = proc.stdout.readline().split()
        assert word == "ready"
        if target is not None:
            target(int(pid))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        word, ns = proc.stdout.readline().split()
        assert word == "ns" and proc.wait(30) == 0
    return float(ns)


def targeter(sensor: Sensor | None) -> Callable[[int], None] | None:
    if sensor is None:
        return None
    return lambda pid: sensor.add_targets([pid])


@contextmanager
def nothing() -> Iterator[Sensor | None]:
    yield None


@contextmanager
def shipped(payloads: bool, wakeup_fill_pct: int = 50,
            ring_bytes: int | None = None) -> Iterator[Sensor | None]:
    config = syscalls.SyscallsConfig(capture_payloads=payloads, wakeup_fill_pct=wakeup_fill_pct)
    if ring_bytes is not None:
        config = dataclasses.replace(config, events_ring_bytes=ring_bytes,
                                     data_ring_bytes=ring_bytes,
                                     small_data_ring_bytes=ring_bytes)
    with Sensor(syscalls.sensor_spec(config)) as sensor:
        yield sensor


@contextmanager
def variant(objdir: Path, programs: str) -> Iterator[Sensor | None]:
    spec = dataclasses.replace(syscalls.sensor_spec(), object_dir=objdir)
    sensor = Sensor(spec)
    sensor.load()
    links: list[int] = []
    try:
        if programs == "empty":
            sensor.attach_program("empty_enter")
            sensor.attach_program("empty_exit")
        else:
            obj = sensor._require()  # noqa: SLF001 - attach one program many times
            for kind, prog in (("enter", "per_tp_enter"), ("exit", "per_tp_exit")):
                ptr = obj.program(prog).ptr
                for tp in sorted(TRACEFS_SYSCALLS.glob(f"sys_{kind}_*")):
                    link = libbpf._lib.bpf_program__attach_tracepoint(ptr, b"syscalls",
                                                                       tp.name.encode())
                    if link:
                        links.append(link)
            print(f"  per_tp: {len(links)} tracepoints attached")
        yield sensor
    finally:
        for link in links:
            libbpf._lib.bpf_link__destroy(ctypes.c_void_p(link))
        sensor.close()


@contextmanager
def draining(sensor: Sensor | None) -> Iterator[None]:
    """Drain the rings while the loop runs, as the agent would: a full ring would make
    the captured syscalls cheaper (a failed reserve is faster than a record)."""
    if sensor is None:
        yield
        return
    stop = threading.Event()
    rings = [sensor.ring(name) for name in syscalls.FAMILY.rings]

    def drain() -> None:
        while not stop.is_set():
            for ring in rings:
                ring.drain()
            time.sleep(0.005)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    with tempfile.TemporaryDirectory() as tmp:
        binary, objdir = build(Path(tmp))
        have_tracefs = TRACEFS_SYSCALLS.is_dir()
        setups: list[tuple[str, Callable[[], AbstractContextManager[Sensor | None]], str,
                           bool]] = [
            ("baseline", nothing, "getppid", False),
            ("empty_tp_btf untargeted", lambda: variant(objdir, "empty"), "getppid", False),
            ("tp_btf untargeted", lambda: shipped(False), "getppid", False),
            ("tp_btf targeted", lambda: shipped(False), "getppid", True),
            ("tp_btf targeted, payloads on", lambda: shipped(True), "getppid", True),
            ("tp_btf targeted, wakeup_fill_pct=100", lambda: shipped(False, 100), "getppid",
             True),
            ("baseline read 64B", nothing, "read:64", False),
            ("tp_btf untargeted read 64B", lambda: shipped(True), "read:64", False),
            ("tp_btf targeted read 64B, payloads", lambda: shipped(True), "read:64", True),
            # 64 MiB rings: the drain keeps up (at ~3 M payloads/s a 4 MiB ring fills in
            # 5 ms); then with no forced wakeups: over wakeup_fill_pct, every record forces
            # one (an IPI, a VM exit here) until the ring is drained
            ("  same, 64 MiB rings", lambda: shipped(True, 50, 64 << 20), "read:64", True),
            ("  same, 64 MiB rings, wakeup_fill_pct=100", lambda: shipped(True, 100, 64 << 20),
             "read:64", True),
        ]
        if have_tracefs:
            setups += [
                ("per_tp untargeted", lambda: variant(objdir, "per_tp"), "getppid", False),
                ("per_tp targeted", lambda: variant(objdir, "per_tp"), "getppid", True),
            ]
        else:
            print(f"{TRACEFS_SYSCALLS} missing: per-syscall tracepoints not measured")
        results: dict[str, list[float]] = {name: [] for name, *_ in setups}
        for round_no in range(args.repeat):
            print(f"round {round_no + 1}/{args.repeat}")
            for name, setup, mode, targeted in setups:
                with setup() as sensor, draining(sensor):
                    ns = run_loop(binary, mode, args.iterations,
                                  targeter(sensor) if targeted else None)
                    if sensor is not None and sensor.drops():
                        print(f"  {name}: records lost {sensor.drops()}")
                results[name].append(ns)
    base = statistics.median(results["baseline"])
    base_read = statistics.median(results["baseline read 64B"])
    print(f"\n{'configuration':40} {'ns/syscall':>10} {'added':>8}")
    for name, values in results.items():
        med = statistics.median(values)
        ref = base_read if "read" in name else base
        print(f"{name:40} {med:10.1f} {med - ref:+8.1f}   (runs: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
