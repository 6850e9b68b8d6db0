"""The mem sensor on the real kernel, with tiny programs whose memory behaviour is known.

Root only. tests/programs/mem_pressure.c reads a file through the page cache inside a
memory cgroup whose limit is below the file's size (memcg reclaim, in its thread);
page_toucher.c touches N fresh anonymous pages (N user page faults).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import mem
from kprobe.capture_agent.layouts import EventKind
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.cgroups import TestCgroup
from tests.support import require, require_root

LIMIT = 64 << 20
FILE_BYTES = 256 << 20
PAGE = os.sysconf("SC_PAGESIZE")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file four times the cgroup's limit, on a disk-backed file system (not tmpfs:
    shmem pages cannot be reclaimed without swap)."""
    path = tmp_path_factory.mktemp("mem") / "big"
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(FILE_BYTES >> 20):
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    yield path
    path.unlink()


def require_root_and_objects() -> None:
    require_root()
    path = object_path(mem.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


class Workload:
    """A test program that prints "ready <pid> <tid>" and waits for a line on stdin."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        word, pid, tid = self.proc.stdout.readline().split()
        assert word == "ready"
        self.pid, self.tid = int(pid), int(tid)

    def go(self, timeout: float = 60) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=timeout)
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_a_memcg_limit_reclaims_in_the_allocating_thread_and_names_the_driver(
        programs: Path, big_file: Path) -> None:
    require_root_and_objects()
    # GIVEN a 64 MiB memory cgroup, the mem sensor, and a reader of a 256 MiB file in it
    with TestCgroup(memory_limit=LIMIT) as cgroup, Sensor(mem.sensor_spec()) as sensor:
        mem.collect_maps(sensor, sample_offset())  # start the counts from here
        reader = Workload([str(programs / "mem_pressure"), str(big_file)])
        try:
            cgroup.add(reader.pid)
            # WHEN it reads the file through the page cache
            done = reader.go()
        finally:
            reader.stop()
        assert reader.proc.returncode == 0 and done.split() == ["done", str(FILE_BYTES)]
        clock = sample_offset()
        events = mem.mem_table(sensor.ring("mem_events").drain(), clock)
        counts = mem.collect_maps(sensor, clock)["mem"]
        drops = sensor.drops()
    assert drops == {}

    # THEN the kernel reclaimed for the cgroup in the reader's own thread: merged
    # begin+end episodes with a duration and the pages they freed
    reclaims = events.filter(pc.and_(pc.equal(events["kind"], "memcg_reclaim"),
                                     pc.equal(events["tid"], reader.tid)))
    assert reclaims.num_rows > 0
    durations = np.array(reclaims["dur_ns"].to_pylist())
    pages = np.array(reclaims["nr_reclaimed"].to_pylist())
    assert np.all(durations > 0) and np.all(durations < 10_000_000_000)
    assert pages.sum() > 0
    # enough freed to read the file through a cache a quarter of its size
    assert pages.sum() * PAGE >= (FILE_BYTES - 2 * LIMIT)
    assert set(reclaims["memcg"].to_pylist()) == {cgroup.id}
    assert set(reclaims["pid"].to_pylist()) == {reader.pid}
    assert set(reclaims["comm"].to_pylist()) == {"mem_pressure"}
    print(f"\nmemcg reclaim in a {LIMIT >> 20} MiB cgroup reading {FILE_BYTES >> 20} MiB:"
          f" {len(durations)} episodes, dur_us min {durations.min() / 1e3:.1f}"
          f" median {np.median(durations) / 1e3:.1f} max {durations.max() / 1e3:.1f},"
          f" pages/episode median {int(np.median(pages))}")

    # and the reader is the top page-allocating process of that memcg
    allocs = counts.filter(pc.and_(pc.equal(counts["kind"], "page_alloc"),
                                   pc.equal(counts["memcg"], cgroup.id)))
    top = allocs.sort_by([("count", "descending")]).to_pylist()
    assert top and top[0]["pid"] == reader.pid and top[0]["comm"] == "mem_pressure"
    assert top[0]["count"] >= 0.9 * FILE_BYTES / PAGE


def test_page_faults_are_counted_per_thread_and_cleared_at_each_read(programs: Path) -> None:
    require_root_and_objects()
    n_pages = 5000
    # GIVEN the mem sensor with nothing but page faults, and a program about to touch pages
    config = mem.MemConfig(record_page_alloc=False, record_reclaim=False)
    with Sensor(mem.sensor_spec(config)) as sensor:
        toucher = Workload([str(programs / "page_toucher"), str(n_pages)])
        try:
            # WHEN it touches N fresh pages
            word, minor_faults = toucher.go().split()
        finally:
            toucher.stop()
        assert word == "done" and int(minor_faults) >= n_pages
        clock = sample_offset()
        first = mem.collect_maps(sensor, clock)["mem"]
        second = mem.collect_maps(sensor, clock)["mem"]
        drops = sensor.drops()
    assert drops.get(EventKind.MEM_FAULT, 0) == 0

    # THEN its thread has one fault row counting at least N faults
    rows = first.filter(pc.equal(first["tid"], toucher.tid)).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["kind"] == "fault" and row["pid"] == toucher.pid
    assert row["count"] >= n_pages and row["comm"] == "page_toucher"
    assert row["dur_ns"] >= 0 and row["address"] > 0
    assert row["memcg"] is not None
    # and faults are user space's to read once: the map was emptied by the first read
    assert toucher.tid not in second["tid"].to_pylist()
    assert set(first["kind"].to_pylist()) == {"fault"}


def test_an_oom_kill_in_a_memcg_names_its_victim(programs: Path) -> None:
    require_root_and_objects()
    # GIVEN a 32 MiB cgroup without swap and a program about to touch 128 MiB of anon memory
    with TestCgroup(memory_limit=32 << 20) as cgroup, Sensor(mem.sensor_spec()) as sensor:
        hog = Workload([str(programs / "page_toucher"), str((128 << 20) // PAGE)])
        try:
            cgroup.add(hog.pid)
            # WHEN it touches them THEN the kernel kills it
            hog.go()
        finally:
            hog.stop()
        assert hog.proc.returncode == -9
        events = mem.mem_table(sensor.ring("mem_events").drain(), sample_offset())
    kills = events.filter(pc.equal(events["kind"], "oom_kill")).to_pylist()
    mine = [k for k in kills if k["pid"] == hog.pid]
    assert len(mine) == 1, kills
    assert mine[0]["comm"] == "page_toucher" and mine[0]["memcg"] == cgroup.id
    # reclaim was tried first, in the same thread
    tried = events.filter(pc.and_(pc.equal(events["kind"], "memcg_reclaim"),
                                  pc.equal(events["tid"], hog.tid)))
    assert tried.num_rows > 0
    assert isinstance(events, pa.Table)
