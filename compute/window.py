"""A time window of one or more nodes, and loading its rows from the lake into DuckDB.

A window owns the spans that *start* in ``[start_ns, end_ns)``; each span is analysed (and
its edges written) by exactly one window. To analyse those spans the loader also brings:

- spans of the same traces that started up to ``span_context_ns`` before the window or
  after it while an owned span was still running (parents, late children; ``owned=false``);
- kernel rows from ``lookback_ns`` before the window (a thread's state at the window start
  comes from its last switch) to the end of the last loaded span;
- intervals (offcpu, reclaim, block I/O) that started up to ``long_interval_ns`` earlier and
  were still running.

Everything lands in temporary DuckDB tables named ``w_<table>``; rows are read through
``lake.scan``, which prunes the Delta partitions (node, hour), so a window reads only its hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from kprobe import lake
from kprobe.compute.errors import WindowError
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import scalar_row, sql_list

NS = 1_000_000_000
_ID = re.compile(
    r"^(?P<ts>\d{8}T\d{6})(?:\.(?P<frac>\d{9}))?Z_(?P<dur>\d+)(?P<unit>ns|ms|s)"
    r"(?:@(?P<nodes>[A-Za-z0-9._+-]+))?$"
)
_NODE_OK = re.compile(r"^[A-Za-z0-9._-]+$")
_UNITS = {"s": NS, "ms": 1_000_000, "ns": 1}

# Columns loaded per kernel table (the analysis never needs the others).
KERNEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "sched": ("node", "ts_ns", "cpu", "kind", "prev_pid", "prev_tid", "prev_comm", "prev_state",
              "next_pid", "next_tid", "next_comm", "waker_pid", "waker_tid", "wakee_pid",
              "wakee_tid", "target_cpu", "prev_run_ns"),
    "offcpu": ("node", "ts_ns", "dur_ns", "pid", "tid", "cpu", "comm", "state", "wait_reason",
               "kstack_id", "waker_pid", "waker_tid", "waker_comm"),
    "mem": ("node", "ts_ns", "dur_ns", "pid", "tid", "comm", "kind", "nr_reclaimed", "count",
            "memcg"),
    "block_io": ("node", "ts_ns", "dur_ns", "pid", "tid", "comm", "dev", "sector", "bytes",
                 "rwbs", "error"),
    "net": ("node", "ts_ns", "pid", "tid", "comm", "kind", "saddr", "sport", "daddr", "dport",
            "bytes", "state", "old_state", "srtt_us", "sock_id"),
    # evidence capture: who held each CPU, per slice (compute/timeline.py cpu_intervals)
    "cpu_slices": ("node", "ts_ns", "dur_ns", "cpu", "pid", "tid", "comm", "oncpu_ns",
                   "runq_ns", "switches"),
}
# Tables whose rows are intervals [ts_ns, ts_ns + dur_ns): load those that started earlier.
_INTERVAL_TABLES = ("offcpu", "mem", "block_io", "cpu_slices")
SPAN_COLUMNS = ("node", "trace_id", "span_id", "parent_span_id", "service", "name", "kind",
                "start_ns", "end_ns", "dur_ns", "status", "status_message", "pid", "tid",
                "client_address", "client_port", "server_address", "server_port",
                "peer_address", "peer_port", "attributes", "events")
PROCESS_COLUMNS = ("node", "ts_ns", "kind", "pid", "ppid", "comm", "exe", "argv", "cgroup",
                   "cgroup_id")


@dataclass(frozen=True)
class Window:
    """Nodes (empty: all) and a half-open range of epoch nanoseconds."""

    start_ns: int
    end_ns: int
    nodes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise WindowError(f"window end {self.end_ns} is not after its start {self.start_ns}")
        for node in self.nodes:
            if not _NODE_OK.match(node):
                raise WindowError(f"node name {node!r} has characters a window id cannot hold")

    @property
    def id(self) -> str:
        """Stable, path-safe and parseable: ``20260101T140000Z_60s@node1+node2``."""
        secs, frac = divmod(self.start_ns, NS)
        text = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y%m%dT%H%M%S")
        if frac:
            text += f".{frac:09d}"
        dur = self.end_ns - self.start_ns
        unit = next(u for u in ("s", "ms", "ns") if dur % _UNITS[u] == 0)
        text += f"Z_{dur // _UNITS[unit]}{unit}"
        if self.nodes:
            text += "@" + "+".join(sorted(self.nodes))
        return text

    @property
    def node_label(self) -> str:
        """The ``node`` written with this window's causal edges."""
        return "+".join(sorted(self.nodes)) if self.nodes else "all"

    @classmethod
    def parse(cls, window_id: str) -> Window:
        match = _ID.match(window_id)
        if not match:
            raise WindowError(f"not a window id: {window_id!r} (like 20260101T140000Z_60s)")
        start = int(datetime.strptime(match["ts"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
                    .timestamp()) * NS + int(match["frac"] or 0)
        dur = int(match["dur"]) * _UNITS[match["unit"]]
        nodes = tuple(match["nodes"].split("+")) if match["nodes"] else ()
        return cls(start, start + dur, nodes)

    def contains(self, ts_ns: int) -> bool:
        return self.start_ns <= ts_ns < self.end_ns


def split(start_ns: int, end_ns: int, window_ns: int, nodes: tuple[str, ...] = (),
          max_windows: int = 10_000) -> list[Window]:
    """Windows of ``window_ns`` aligned to multiples of it, covering ``[start_ns, end_ns)``.

    Alignment makes window ids stable: analysing 14:00-14:05 today and 14:02-14:03 tomorrow
    produce (and replace) the same windows.
    """
    if end_ns <= start_ns:
        raise WindowError("--to must be after --from")
    first = start_ns // window_ns * window_ns
    count = -(-(end_ns - first) // window_ns)
    if count > max_windows:
        raise WindowError(f"{count} windows of {window_ns / NS:g} s in that range "
                          f"(limit {max_windows}): use a larger window or a shorter range")
    return [Window(first + i * window_ns, first + (i + 1) * window_ns, nodes)
            for i in range(count)]


@dataclass(frozen=True)
class LoadedWindow:
    """The DuckDB connection holding ``w_*`` tables, and the time range they cover."""

    con: duckdb.DuckDBPyConnection
    window: Window
    range_start_ns: int  # kernel rows from here ...
    range_end_ns: int  # ... to here (the end of the last loaded span, at least window end)
    owned_spans: int


def load(location: lake.LakeLocation, window: Window, settings: ComputeSettings) -> LoadedWindow:
    """Open the lake, copy the window's rows into ``w_*`` tables, return the connection."""
    tables = ["spans", "processes", *KERNEL_COLUMNS]
    # The window lives in temporary tables of an in-memory database: checkpointing them
    # (DuckDB's default past 16 MB of changes) only compresses data about to be dropped,
    # and stalled a 6M-row window for seconds at a time.
    con = lake.connect(location, tables, threads=settings.duckdb_threads,
                       memory_limit=settings.duckdb_memory_limit, checkpoint_threshold="1TB")
    nodes = window.nodes
    start, end = window.start_ns, window.end_ns

    # Owned spans, then the spans of the same traces around them.
    cols = ", ".join(SPAN_COLUMNS)
    con.execute(f"""
        CREATE TEMP TABLE w_owned AS
        SELECT {cols}, true AS owned FROM {lake.scan("spans", nodes, start, end)}""")
    owned, max_end = scalar_row(
        con, "SELECT count(*), max(greatest(coalesce(end_ns, start_ns + coalesce(dur_ns, 0)),"
        " start_ns)) FROM w_owned")
    range_end = max(end, int(max_end or end))
    ctx_start = start - settings.span_context_ns
    con.execute(f"""
        CREATE TEMP TABLE w_spans AS
        SELECT * FROM w_owned
        UNION ALL
        SELECT {cols}, false AS owned FROM {lake.scan("spans", nodes, ctx_start, range_end)}
        WHERE ((start_ns >= {ctx_start} AND start_ns < {start})
               OR (start_ns >= {end} AND start_ns < {range_end}))
          AND trace_id IN (SELECT DISTINCT trace_id FROM w_owned)""")

    range_start = start - settings.lookback_ns
    for table, columns in KERNEL_COLUMNS.items():
        lo = range_start - (settings.long_interval_ns if table in _INTERVAL_TABLES else 0)
        still_running = (f"AND ts_ns + coalesce(dur_ns, 0) >= {range_start}"
                         if table in _INTERVAL_TABLES else "")
        # page_alloc/fault rows are stamped at the end of their flush interval
        hi = range_end + (settings.alloc_flush_slack_ns if table == "mem" else 0)
        con.execute(f"""
            CREATE TEMP TABLE w_{table} AS
            SELECT {", ".join(columns)} FROM {lake.scan(table, nodes, lo, hi + 1)}
            WHERE true {still_running}""")
    # Processes: the newest row per pid up to the range end. A long-running process was
    # `seen` or exec'd long ago, so there is no time bound below (the table is small).
    con.execute(f"""
        CREATE TEMP TABLE w_processes AS
        SELECT node, pid, arg_max(ppid, ts_ns) AS ppid, arg_max(comm, ts_ns) AS comm,
               arg_max(exe, ts_ns) AS exe, arg_max(array_to_string(argv, ' '), ts_ns) AS argv,
               arg_max(cgroup, ts_ns) AS cgroup, arg_max(cgroup_id, ts_ns) AS cgroup_id
        FROM processes
        WHERE ts_ns <= {range_end} {f"AND node IN {sql_list(nodes)}" if nodes else ""}
          AND pid IS NOT NULL
        GROUP BY node, pid""")
    return LoadedWindow(con, window, range_start, range_end, int(owned))
