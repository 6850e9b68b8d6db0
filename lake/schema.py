"""Lake schema v1: every table, defined once.

Every other module imports these definitions; nothing else spells a column list.
Column names are the contract (DESIGN.md "Lake"): add columns freely, never change a
meaning without bumping ``SCHEMA_VERSION``.

All timestamps are Unix-epoch nanoseconds (UTC) in int64 columns named ``*_ns``.
Delta has no unsigned integers, so pids, tids, cpus and ports are signed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1
SCHEMA_VERSION_TAG = "kprobe schema v"  # prefix of every table's Delta description

# Columns the writer adds to every row; the first two are the Delta partition columns.
PARTITION_COLUMNS: tuple[str, ...] = ("node", "hour")
BATCH_ID_COLUMN = "batch_id"

_I32 = pa.int32()
_I64 = pa.int64()
_STR = pa.string()


def _f(name: str, typ: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


# Envelope encryption at rest (lake/sealing.py), written by the writer, never by producers:
# the envelope of the row's sealed segment (key id, wrapped data key, nonce, tag), and the
# row's byte position in the segment's plaintext. Null when the row is stored in the clear.
SEAL_FIELDS: tuple[pa.Field, ...] = (_f("seal", pa.binary()), _f("seal_pos", _I64))
SEAL_COLUMNS: tuple[str, ...] = tuple(f.name for f in SEAL_FIELDS)


@dataclass(frozen=True)
class TableSpec:
    """One lake table: its payload columns and the column that decides its hour."""

    name: str
    fields: tuple[pa.Field, ...]
    time_column: str
    doc: str
    # Columns holding what programs exchanged (payload bytes, environments): readable
    # only with the ``payloads`` scope (lake.reader hides them otherwise).
    sensitive: tuple[str, ...] = ()
    # The binary column the writer may encrypt at rest (lake/sealing.py); the table then
    # stores SEAL_FIELDS too, written by the writer (null when stored in the clear).
    sealed_column: str | None = None
    # All payload (what programs exchanged), kept only as long as payloads are
    # (``kprobe lake retain --keep-payloads``): syscall_data, blobs.
    all_payload: bool = False

    @property
    def payload_schema(self) -> pa.Schema:
        """Columns a producer supplies (no node/hour/batch_id)."""
        return pa.schema(list(self.fields))

    @property
    def schema(self) -> pa.Schema:
        """Columns as stored: payload, the seal (if sealable), then batch id, then the
        partition columns."""
        return pa.schema(
            [
                *self.fields,
                *(SEAL_FIELDS if self.sealed_column else ()),
                _f(BATCH_ID_COLUMN, _STR, nullable=False),
                _f("node", _STR, nullable=False),
                _f("hour", _STR, nullable=False),
            ]
        )

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)


_SPECS: tuple[TableSpec, ...] = (
    TableSpec(
        "sched",
        (
            _f("ts_ns", _I64, False),
            _f("cpu", _I32),
            _f("kind", _STR),  # switch | wakeup | waking | wakeup_new
            _f("prev_pid", _I32),
            _f("prev_tid", _I32),
            _f("prev_comm", _STR),
            _f("prev_state", _STR),  # R, S, D, T, t, X, Z, P, I (task state letter)
            _f("next_pid", _I32),
            _f("next_tid", _I32),
            _f("next_comm", _STR),
            _f("waker_pid", _I32),
            _f("waker_tid", _I32),
            _f("wakee_pid", _I32),
            _f("wakee_tid", _I32),
            _f("target_cpu", _I32),
            # switch: how long prev ran since it was switched in (its CPU time in this
            # run, fair-class tasks; null: unknown); dates a switch in that left no row
            _f("prev_run_ns", _I64),
        ),
        "ts_ns",
        "sched_switch / sched_waking / sched_wakeup_new (sched_wakeup: agent option)",
    ),
    TableSpec(
        "offcpu",
        (
            _f("ts_ns", _I64, False),  # when the thread switched out
            _f("dur_ns", _I64),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("cpu", _I32),
            _f("comm", _STR),
            _f("state", _STR),
            _f("wait_reason", _STR),  # reclaim, page_fault_io, disk, futex, socket, ...
            _f("kstack_id", _I64),
            _f("waker_pid", _I32),
            _f("waker_tid", _I32),
            _f("waker_comm", _STR),
            # the switch back onto a CPU was not traced (the kernel fires no sched_switch
            # for some switches): the interval ends at the thread's waking
            _f("ends_at_waking", pa.bool_()),
        ),
        "ts_ns",
        "blocked interval of a watched thread above a threshold",
    ),
    TableSpec(
        "cpu_slices",
        (
            _f("ts_ns", _I64, False),  # span start (a slice, or less; see dur_ns)
            _f("dur_ns", _I64),
            _f("cpu", _I32),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("comm", _STR),
            _f("oncpu_ns", _I64),  # on this CPU within the span
            _f("runq_ns", _I64),  # run-queue waits that ended on this CPU in the span
            _f("switches", _I64),  # times switched out on this CPU
            _f("waits", _I64),  # run-queue waits counted in runq_ns
        ),
        "ts_ns",
        "evidence capture: a thread's time on one CPU over a slice (rows per switch are "
        "kept only where they bound a long off-CPU interval)",
    ),
    TableSpec(
        "net_slices",
        (
            _f("ts_ns", _I64, False),  # the first send or receive counted
            _f("dur_ns", _I64),  # to the last one
            _f("pid", _I32),  # the socket's owner (who last sent or received)
            _f("tid", _I32),
            _f("comm", _STR),
            _f("family", _I32),
            _f("saddr", _STR),  # local end
            _f("sport", _I32),
            _f("daddr", _STR),  # remote end
            _f("dport", _I32),
            _f("sends", _I64),
            _f("recvs", _I64),
            _f("sent_bytes", _I64),
            _f("recv_bytes", _I64),
            _f("sock_id", _I64),
        ),
        "ts_ns",
        "evidence capture: a socket's TCP sends and receives by non-targets within one "
        "slice (targets keep a `net` row each)",
    ),
    TableSpec(
        "syscalls",
        (
            _f("ts_ns", _I64, False),
            _f("dur_ns", _I64),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("cpu", _I32),
            _f("comm", _STR),
            _f("nr", _I32),
            _f("name", _STR),
            _f("ret", _I64),
            _f("fd", _I64),
            _f("args", pa.list_(_I64)),
            _f("seq", _I64),  # per-thread sequence number; joins syscall_data
        ),
        "ts_ns",
        "completed syscall (enter+exit merged in the kernel)",
    ),
    TableSpec(
        "syscall_data",
        (
            _f("ts_ns", _I64, False),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("seq", _I64),
            _f("nr", _I32),
            _f("arg_index", _I32),
            _f("offset", _I64),
            _f("data", pa.binary()),
            _f("total_len", _I64),  # bytes the syscall produced, before the cap
            _f("truncated", pa.bool_()),
            # A read of a regular file recorded by identity: its bytes are
            # content[blob_offset:blob_offset + total_len] of table `blobs`' row `blob`
            # (data then holds the file's identity, capture_agent/families/syscalls.py
            # FILE_ID). Null blob: bytes in `data`. Empty: the content could not be stored
            # (the file changed or went away first: `truncated` is true).
            _f("blob", _STR),
            _f("blob_offset", _I64),
        ),
        "ts_ns",
        "bytes a syscall wrote into user memory (replay input)",
        sensitive=("data", *SEAL_COLUMNS),
        sealed_column="data",
        all_payload=True,
    ),
    TableSpec(
        "blobs",
        (
            _f("ts_ns", _I64, False),  # when stored
            # the content's name: hex SHA-256 of `data` (keyed when sealed, lake/sealing.py)
            _f("blob", _STR, False),
            _f("size", _I64),
            _f("data", pa.binary()),  # masked as payloads are; sealed when a key is set
            _f("seal", pa.binary()),  # the envelope of a sealed blob; null in the clear
        ),
        "ts_ns",
        "a file version's content, stored once per hour for the reads that name it",
        sensitive=("data", "seal"),
        all_payload=True,
    ),
    TableSpec(
        "net",
        (
            _f("ts_ns", _I64, False),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("comm", _STR),
            _f("kind", _STR),  # send | recv | retransmit | state | reset
            _f("family", _I32),
            _f("saddr", _STR),
            _f("sport", _I32),
            _f("daddr", _STR),
            _f("dport", _I32),
            _f("bytes", _I64),
            _f("state", _STR),
            _f("old_state", _STR),
            _f("srtt_us", _I64),
            _f("sock_id", _I64),
        ),
        "ts_ns",
        "TCP send/recv/retransmit/state/reset",
    ),
    TableSpec(
        "mem",
        (
            _f("ts_ns", _I64, False),
            _f("dur_ns", _I64),
            _f("pid", _I32),
            _f("tid", _I32),
            _f("comm", _STR),
            # fault | direct_reclaim | memcg_reclaim | kswapd_wake | oom_kill | page_alloc
            _f("kind", _STR),
            _f("nr_reclaimed", _I64),
            _f("count", _I64),  # aggregated rows (faults, page allocations) per flush
            _f("memcg", _I64),  # cgroup id
            _f("address", _I64),
        ),
        "ts_ns",
        "page fault, reclaim (begin+end merged), kswapd, OOM kill, page allocations",
    ),
    TableSpec(
        "block_io",
        (
            _f("ts_ns", _I64, False),  # issue time
            _f("dur_ns", _I64),  # issue -> complete
            _f("pid", _I32),
            _f("tid", _I32),
            _f("comm", _STR),
            _f("dev", _STR),  # major:minor
            _f("sector", _I64),
            _f("bytes", _I64),
            _f("rwbs", _STR),
            _f("error", _I32),
        ),
        "ts_ns",
        "block request (issue+complete merged)",
    ),
    TableSpec(
        "processes",
        (
            _f("ts_ns", _I64, False),
            _f("kind", _STR),  # exec | fork | exit | seen (already running at start)
            _f("pid", _I32),
            _f("tid", _I32),
            _f("ppid", _I32),
            _f("comm", _STR),
            _f("exe", _STR),
            _f("argv", pa.list_(_STR)),
            _f("env", pa.list_(_STR)),
            _f("cwd", _STR),
            _f("cgroup", _STR),
            _f("cgroup_id", _I64),
            _f("container_id", _STR),
            _f("exit_code", _I32),
        ),
        "ts_ns",
        "exec / fork / exit",
        sensitive=("env",),
    ),
    TableSpec(
        "kstacks",
        (
            _f("ts_ns", _I64, False),  # first seen
            _f("stack_id", _I64),
            _f("frames", pa.list_(_STR)),
        ),
        "ts_ns",
        "kernel stack id -> symbolised frames",
    ),
    TableSpec(
        "spans",
        (
            _f("trace_id", _STR, False),  # 32 hex digits
            _f("span_id", _STR, False),  # 16 hex digits
            _f("parent_span_id", _STR),
            _f("service", _STR),
            _f("name", _STR),
            _f("kind", _STR),  # INTERNAL | SERVER | CLIENT | PRODUCER | CONSUMER | UNSPECIFIED
            _f("start_ns", _I64, False),
            _f("end_ns", _I64),
            _f("dur_ns", _I64),
            _f("status", _STR),  # UNSET | OK | ERROR
            _f("status_message", _STR),
            _f("pid", _I32),
            _f("tid", _I64),
            _f("client_address", _STR),
            _f("client_port", _I32),
            _f("server_address", _STR),
            _f("server_port", _I32),
            _f("peer_address", _STR),
            _f("peer_port", _I32),
            _f("attributes", _STR),  # JSON object
            _f("resource", _STR),  # JSON object
            _f("events", _STR),  # JSON array
        ),
        "start_ns",
        "OpenTelemetry span",
    ),
    TableSpec(
        "lost",
        (
            _f("ts_ns", _I64, False),
            _f("source", _STR),
            _f("count", _I64),
            _f("reason", _STR),
        ),
        "ts_ns",
        "loss report per flush",
    ),
    TableSpec(
        "agent_meta",
        (
            _f("ts_ns", _I64, False),
            _f("kind", _STR),  # start | clock | flush (the follower's watermark) | stop
            _f("kernel", _STR),
            _f("agent_version", _STR),
            _f("boot_id", _STR),
            _f("mono_to_epoch_ns", _I64),
            _f("config", _STR),  # JSON
        ),
        "ts_ns",
        "agent start / clock sample",
    ),
    TableSpec(
        "causal_edges",
        (
            _f("window", _STR, False),
            _f("window_start_ns", _I64, False),
            _f("window_end_ns", _I64),
            _f("src", _STR),
            _f("dst", _STR),
            _f("kind", _STR),
            _f("delay_ns", _I64),
            _f("evidence", _STR),  # JSON
        ),
        "window_start_ns",
        "edge of the causal graph (written by compute)",
    ),
)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in _SPECS}
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)
# table -> its sensitive columns, for the tables that have any
SENSITIVE_COLUMNS: dict[str, tuple[str, ...]] = {
    s.name: s.sensitive for s in _SPECS if s.sensitive}

# What a redacted secret is stored as (an environment value, a command-line value, the
# password of a connection string): the capture agent writes it, a replay names the
# variables and arguments that hold it.
REDACTED = "[kprobe-redacted]"


def spec(table: str) -> TableSpec:
    """The spec of ``table``; KeyError names the known tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLE_NAMES)}") from None
