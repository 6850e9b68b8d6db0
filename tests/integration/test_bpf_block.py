"""The block sensor on the real kernel: a program writes a known size to a file on a disk.

Root only. tests/programs/block_writer.c writes NBYTES with O_DIRECT (the writer submits
the requests) or buffered then fsync (the fsync caller submits the writeback).
Completions run in irq/softirq context: the rows must still name the writer.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent import kernel_btf
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import block
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.support import REPO, require, require_root


def require_root_and_objects() -> None:
    require_root()
    path = object_path(block.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


def on_a_block_device(path: Path) -> bool:
    dev = os.stat(path).st_dev
    return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").exists()


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a block device (tmp_path, unless that is tmpfs: then the repo's)."""
    if on_a_block_device(tmp_path):
        yield tmp_path
        return
    require(on_a_block_device(REPO), "a directory on a block device")
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".block-test-") as d:
        yield Path(d)


def dev_string(path: Path) -> str:
    dev = os.stat(path).st_dev
    return f"{os.major(dev)}:{os.minor(dev)}"


def write_and_capture(binary: Path, mode: str, path: Path, nbytes: int,
                      fallback: bool = False) -> tuple[int, pa.Table, int, int]:
    """Run block_writer under the block sensor: (its pid, block_io rows, t0, t1).
    ``fallback``: with the older kernels' program (block_getrq) instead of block_io_start."""
    t0 = time.time_ns()
    spec = dataclasses.replace(block.sensor_spec(block.BlockConfig(ring_bytes=8 << 20)),
                               prefer_fallbacks=fallback)
    with Sensor(spec) as sensor:
        # kernels before 6.5 have no block_io_start: there the fallback is the default
        old_kernel = kernel_btf.attach_point_exists("tp_btf/block_io_start") is False
        assert sensor.fallbacks_used == ({"on_block_io_start": "on_block_getrq"}
                                         if fallback or old_kernel else {})
        out = subprocess.run([str(binary), mode, str(path), str(nbytes)], check=True,
                             capture_output=True, text=True, timeout=120).stdout
        batch = sensor.ring("block_events").drain()
        drops = sensor.drops()
    t1 = time.time_ns()
    word, pid = out.split()
    assert word == "done"
    assert drops == {}
    assert batch.dtype == block.BLOCK_EVENT
    assert set(batch["hdr"]["size"].tolist()) == {block.BLOCK_EVENT.itemsize}
    return int(pid), block.block_io_table(batch, sample_offset()), t0, t1


def writes_of(rows: pa.Table, pid: int) -> pa.Table:
    mine = rows.filter(pc.equal(rows["pid"], pid))
    return mine.filter(pc.match_substring(mine["rwbs"], "W"))


@pytest.mark.parametrize(("mode", "fallback"), [("direct", False), ("fsync", False),
                                               ("direct", True), ("fsync", True)],
                         ids=["direct", "fsync", "direct-getrq", "fsync-getrq"])
def test_block_requests_of_a_writer_carry_its_pid_device_size_and_latency(
        programs: Path, disk_dir: Path, mode: str, fallback: bool) -> None:
    require_root_and_objects()
    # GIVEN the block sensor, system-wide (or as it runs on kernels before 6.5)
    nbytes = 4 << 20
    path = disk_dir / f"blocks-{mode}.bin"
    # WHEN block_writer writes 4 MiB to a file and fsyncs it
    pid, rows, t0, t1 = write_and_capture(programs / "block_writer", mode, path, nbytes,
                                          fallback)

    # THEN the write requests it created name it, on the file system's device
    mine = writes_of(rows, pid)
    assert len(mine) > 0, rows.to_pylist()[:20]
    assert set(mine["dev"].to_pylist()) == {dev_string(path)}
    assert set(mine["tid"].to_pylist()) == {pid}
    assert set(mine["comm"].to_pylist()) == {"block_writer"}
    # and together they carry at least the data written (plus metadata and journal)
    assert sum(mine["bytes"].to_pylist()) >= nbytes
    # and each has an issue time within the run and a positive issue -> complete time
    assert all(d > 0 for d in mine["dur_ns"].to_pylist())
    assert all(t0 - 1_000_000 <= ts <= t1 for ts in mine["ts_ns"].to_pylist())
    assert set(mine["error"].to_pylist()) == {0}
    assert all(s is not None and s >= 0 for s in mine["sector"].to_pylist())


def test_requests_without_a_known_task_have_no_pid(programs: Path, disk_dir: Path) -> None:
    require_root_and_objects()
    # GIVEN a writer that fsyncs (the journal commit and the cache flush are the
    # kernel's own requests: a flush sequence is created without a bio)
    pid, rows, _, _ = write_and_capture(programs / "block_writer", "fsync",
                                        disk_dir / "blocks.bin", 1 << 20)
    # THEN rows whose task is unknown have pid, tid and comm all null, never a guess
    unknown = rows.filter(pc.is_null(rows["pid"]))
    assert unknown["tid"].null_count == len(unknown) == unknown["comm"].null_count
    assert pid in rows["pid"].to_pylist()
    # and a data-less flush has no sector
    flushes = rows.filter(pc.equal(rows["bytes"], 0))
    assert all(s is None for s in flushes["sector"].to_pylist())
