"""Block family: mirror of bpf/block.h, sensor configuration, and batches -> lake `block_io`.

Ring (one record size):
  block_events  struct block_event  a block request, issue and completion merged

``pid``/``tid``/``comm`` are the task that created the request (the writer, the fsync
caller, or a writeback kworker), recorded in its context, not the completion's; null when
the request was created before the sensor loaded or without a bio (flush sequences,
passthrough commands). ``dev`` is the partition the I/O was submitted to (what
``stat().st_dev`` of a file on it gives), ``sector`` is relative to it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array
from kprobe.capture_agent.families.base import ProbeFamily
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import SensorSpec
from kprobe.lake.schema import spec as table_spec

BLOCK_LAYOUT_VERSION = 1
TASK_COMM_LEN = 16
BLOCK_RWBS_LEN = 8

BLOCK_FLAG_TASK = 0x1
BLOCK_FLAG_PARTIAL = 0x2

MINORBITS = 20  # kernel dev_t: major << 20 | minor
NO_SECTOR = (1 << 64) - 1  # a request without a position (a flush)

BLOCK_EVENT = record_dtype(
    [
        ("issue_ns", "<u8"),
        ("sector", "<u8"),
        ("bytes", "<u4"),
        ("dev", "<u4"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("rwbs", f"S{BLOCK_RWBS_LEN}"),
        ("status", "u1"),
        ("__pad", "u1", (7,)),
    ]
)

# blk_status_t -> -errno, as the kernel's blk_status_to_errno() (block/blk-core.c). The
# codes are macros (not in BTF); an unknown code counts as -EIO, as the kernel's default.
_BLK_STATUS_ERRNO = np.array(
    [
        0,
        -errno.EOPNOTSUPP,  # 1 NOTSUPP
        -errno.ETIMEDOUT,  # 2 TIMEOUT
        -errno.ENOSPC,  # 3 NOSPC
        -errno.ENOLINK,  # 4 TRANSPORT
        -errno.EREMOTEIO,  # 5 TARGET
        -errno.EBADE,  # 6 RESV_CONFLICT
        -errno.ENODATA,  # 7 MEDIUM
        -errno.EILSEQ,  # 8 PROTECTION
        -errno.ENOMEM,  # 9 RESOURCE
        -errno.EIO,  # 10 IOERR
        -errno.EREMCHG,  # 11 DM_REQUEUE
        -errno.EAGAIN,  # 12 AGAIN
        -errno.EBUSY,  # 13 DEV_RESOURCE
        -errno.ETOOMANYREFS,  # 14 ZONE_OPEN_RESOURCE
        -errno.EOVERFLOW,  # 15 ZONE_ACTIVE_RESOURCE
        -errno.ENODEV,  # 16 OFFLINE
        -errno.ETIME,  # 17 DURATION_LIMIT
    ],
    dtype=np.int32,
)

FAMILY = Family(
    name="block",
    object_file="block.bpf.o",
    structs=MappingProxyType({"block_event": BLOCK_EVENT}),
    enums=MappingProxyType(
        {
            "block_constants": {
                "BLOCK_LAYOUT_VERSION": BLOCK_LAYOUT_VERSION,
                "BLOCK_FLAG_TASK": BLOCK_FLAG_TASK,
                "BLOCK_FLAG_PARTIAL": BLOCK_FLAG_PARTIAL,
                "BLOCK_RWBS_LEN": BLOCK_RWBS_LEN,
            },
        }
    ),
    rings=MappingProxyType({"block_events": BLOCK_EVENT}),
    layout_version=BLOCK_LAYOUT_VERSION,
    # block_io_start is Linux >= 6.5; before, the submitter is taken at block_getrq
    fallbacks=MappingProxyType({"on_block_getrq": "on_block_io_start"}),
)


@dataclass(frozen=True)
class BlockConfig:
    """Sizes of the block sensor (system-wide: a few thousand requests/s at most)."""

    wakeup_fill_pct: int = 50
    ring_bytes: int = 1 << 20
    requests_in_flight: int = 16384


def sensor_spec(config: BlockConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or BlockConfig()
    return SensorSpec(
        family=FAMILY,
        config={"wakeup_fill_pct": c.wakeup_fill_pct},
        ring_bytes={"block_events": c.ring_bytes},
        map_entries={"requests": c.requests_in_flight, "bio_starts": c.requests_in_flight},
        shared_maps=shared_maps or {},
    )


def device_strings(devs: np.ndarray) -> pa.Array:
    """Kernel dev_t values -> 'major:minor', formatting each distinct device once."""
    distinct, inverse = np.unique(devs, return_inverse=True)
    texts = pa.array([f"{int(d) >> MINORBITS}:{int(d) & ((1 << MINORBITS) - 1)}"
                      for d in distinct], type=pa.string())
    return pc.take(texts, pa.array(inverse.ravel().astype(np.int32)))


def status_errno(status: np.ndarray) -> np.ndarray:
    """blk_status_t codes -> 0 or -errno (int32), vectorised."""
    known = status < len(_BLK_STATUS_ERRNO)
    return np.where(known, _BLK_STATUS_ERRNO[np.where(known, status, 0)],
                    np.int32(-errno.EIO)).astype(np.int32)


def block_io_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``BLOCK_EVENT`` -> rows of lake table ``block_io`` (vectorised)."""
    check_header(batch, FAMILY, _KINDS)
    hdr = batch["hdr"]
    issue = batch["issue_ns"]
    no_task = (hdr["flags"] & BLOCK_FLAG_TASK) == 0
    columns = {
        "ts_ns": pa.array(clock.to_epoch(issue)),
        "dur_ns": pa.array(hdr["ktime_ns"].astype(np.int64) - issue.astype(np.int64)),
        "pid": int_array(batch["pid"], null=no_task),
        "tid": int_array(batch["tid"], null=no_task),
        "comm": comm_array(batch["comm"], null=no_task),
        "dev": device_strings(batch["dev"]),
        "sector": int_array(batch["sector"], null=batch["sector"] == NO_SECTOR,
                            arrow_type=pa.int64()),
        "bytes": int_array(batch["bytes"], arrow_type=pa.int64()),
        "rwbs": pa.array(batch["rwbs"], type=pa.binary()).cast(pa.string()),
        "error": pa.array(status_errno(batch["status"]), type=pa.int32()),
    }
    return pa.table(columns, schema=table_spec("block_io").payload_schema)


_KINDS = (int(EventKind.BLOCK_RQ),)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "block_events": ("block_io", block_io_table),
}


class BlockFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        return sensor_spec(BlockConfig(), shared_maps=shared_maps)

__all__ = [
    "BlockFamily",
    "BLOCK_EVENT",
    "FAMILY",
    "RING_TABLES",
    "BlockConfig",
    "block_io_table",
    "device_strings",
    "sensor_spec",
    "status_errno",
]
