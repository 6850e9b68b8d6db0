"""Loading one process's recording from the lake with DuckDB.

The process is chosen by pid and node; among the execs of that pid (pids are reused), the
last one at or before ``from_ns`` (default: the last one). Its syscalls run from that exec
to the next exec of the pid, cut at ``to_ns``. Filters name ``node`` and ``hour`` so the
Delta partitions of other nodes and hours are never read.
"""

from __future__ import annotations

import posixpath
from typing import Any

import duckdb
import pyarrow as pa

from lake.batches import NS_PER_HOUR, hour_label
from lake.reader import connect
from lake.sealing import sealing_error
from lake.storage import LakeLocation
from replay_sandbox.errors import RecordingError
from replay_sandbox.peers import load_peer_streams
from replay_sandbox.recording import ProcessInfo, Recording

_SYSCALL_COLUMNS = "ts_ns, dur_ns, pid, tid, cpu, comm, nr, name, ret, fd, args, seq"
_DATA_COLUMNS = "ts_ns, pid, tid, seq, nr, arg_index, \"offset\", data, total_len, truncated"


def parse_process(text: str) -> tuple[int, str]:
    """``PID@NODE`` -> (pid, node)."""
    pid_text, sep, node = text.partition("@")
    if not sep or not node:
        raise RecordingError(f"--process {text!r}: expected PID@NODE")
    try:
        return int(pid_text), node
    except ValueError:
        raise RecordingError(f"--process {text!r}: the pid must be an integer") from None


def load(location: LakeLocation, pid: int, node: str, from_ns: int | None = None,
         to_ns: int | None = None, with_peers: bool = True) -> Recording:
    """The recording of ``pid``'s exec (see the module doc); ``with_peers``: also what the
    other ends of its connections sent (what-if replays serve it, see ``peers``)."""
    con = connect(location, ["processes", "syscalls", "syscall_data", "agent_meta", "net"])
    try:
        exec_row = _one(con, f"""
            SELECT ts_ns, comm, exe, argv, env, cwd FROM processes
            WHERE node = ? AND pid = ? AND kind = 'exec'
              {'AND ts_ns <= ?' if from_ns is not None else ''}
            ORDER BY ts_ns DESC LIMIT 1""",
                        [node, pid] + ([from_ns] if from_ns is not None else []))
        if exec_row is None:
            raise RecordingError(
                f"no exec of pid {pid} recorded on {node}"
                + (" at or before --from" if from_ns is not None else "")
                + ": replay starts at an exec (processes seen already running cannot be "
                  "replayed)")
        start = int(exec_row["ts_ns"])
        nxt = _one(con, """SELECT min(ts_ns) AS ts FROM processes
                           WHERE node = ? AND pid = ? AND kind = 'exec' AND ts_ns > ?""",
                   [node, pid, start])
        end = int(nxt["ts"]) if nxt and nxt["ts"] is not None else None
        if to_ns is not None:
            end = min(end, to_ns + 1) if end is not None else to_ns + 1
        exit_row = _one(con, f"""SELECT exit_code FROM processes
                                WHERE node = ? AND pid = ? AND kind = 'exit' AND ts_ns >= ?
                                {'AND ts_ns < ?' if end is not None else ''}
                                ORDER BY ts_ns LIMIT 1""",
                        [node, pid, start] + ([end] if end is not None else []))
        meta = _one(con, """SELECT mono_to_epoch_ns FROM agent_meta
                            WHERE node = ? AND ts_ns <= ? AND mono_to_epoch_ns IS NOT NULL
                            ORDER BY ts_ns DESC LIMIT 1""", [node, start])
        image = _exec_image(con, node, pid, start)
        where, params = _window(node, pid, start, end)
        syscalls = con.sql(f"SELECT {_SYSCALL_COLUMNS} FROM syscalls WHERE {where}",
                           params=params).to_arrow_table()
        data = con.sql(f"SELECT {_DATA_COLUMNS} FROM syscall_data WHERE {where}",
                       params=params).to_arrow_table()
        peers = load_peer_streams(con, node, pid, start, end) if with_peers else {}
    except duckdb.Error as err:  # sealed payloads this key file cannot open: one line
        sealing = sealing_error(err)
        if sealing is None:
            raise
        raise sealing from None
    finally:
        con.close()
    exe = image.get(0) or exec_row["exe"] or ""
    if exe and not exe.startswith("/"):  # execve("./prog"): relative to its cwd
        exe = posixpath.normpath(posixpath.join(exec_row["cwd"] or "/", exe))
    process = ProcessInfo(
        pid=pid, node=node, exe=exe,
        argv=image[1] if 1 in image else list(exec_row["argv"] or []),
        env=image[2] if 2 in image else list(exec_row["env"] or []),
        cwd=exec_row["cwd"] or "/", start_ns=start,
        comm=exec_row["comm"] or "",
        exit_code=None if exit_row is None else exit_row["exit_code"])
    if not process.exe:
        raise RecordingError(f"the exec of pid {pid} on {node} has no exe recorded")
    if syscalls.num_rows == 0:
        raise RecordingError(f"no syscalls of pid {pid} on {node} in the lake: was it "
                             f"recorded with payload capture (kprobe run --payloads)?")
    recording = Recording.from_tables(process, _as_table(syscalls), _as_table(data),
                                      mono_to_epoch_ns=meta["mono_to_epoch_ns"] if meta
                                      else None)
    recording.peers = peers
    return recording


def _exec_image(con: Any, node: str, pid: int, exec_ns: int) -> dict[int, Any]:
    """The file, argv and environment of the exec at ``exec_ns`` as the kernel read them
    (execve payloads: 0 = file, 1 = argv, 2 = env), or {} when it was recorded without
    payloads; /proc, read by the agent after the event, may show a later image."""
    call = _one(con, """SELECT tid, seq FROM syscalls
                        WHERE node = ? AND hour >= ? AND hour <= ? AND pid = ? AND nr = 59
                          AND ts_ns <= ? AND ts_ns >= ? - 60000000000
                        ORDER BY ts_ns DESC LIMIT 1""",
                [node, hour_label(exec_ns - 60 * 10**9), hour_label(exec_ns), pid, exec_ns,
                 exec_ns])
    if call is None:
        return {}
    cursor = con.execute("""SELECT arg_index, list(data ORDER BY "offset")
                            FROM syscall_data
                            WHERE node = ? AND hour >= ? AND hour <= ? AND pid = ? AND tid = ?
                              AND seq = ? AND nr = 59
                            GROUP BY arg_index""",
                         [node, hour_label(exec_ns - 60 * 10**9), hour_label(exec_ns), pid,
                          call["tid"], call["seq"]])
    image: dict[int, Any] = {}
    for arg, parts in cursor.fetchall():
        raw = b"".join(bytes(p) for p in parts if p is not None)
        if arg == 0:
            image[0] = raw.decode(errors="surrogateescape")
        elif arg in (1, 2):
            image[arg] = [p.decode(errors="surrogateescape") for p in raw.split(b"\0") if p]
    return image


def _window(node: str, pid: int, start: int, end: int | None) -> tuple[str, list[Any]]:
    where = "node = ? AND hour >= ? AND pid = ? AND ts_ns >= ?"
    params: list[Any] = [node, hour_label(start), pid, start]
    if end is not None:
        where += " AND hour <= ? AND ts_ns < ?"
        params += [hour_label(max(start, end - 1) // NS_PER_HOUR * NS_PER_HOUR), end]
    return where, params


def _one(con: Any, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cursor = con.execute(sql, params)
    rows = cursor.fetchall()  # finish the result: a pending one blocks the next con.sql()
    if not rows:
        return None
    row = rows[0]
    return dict(zip([d[0] for d in cursor.description], row))


def _as_table(data: pa.Table | pa.RecordBatchReader) -> pa.Table:
    return data if isinstance(data, pa.Table) else data.read_all()
