"""Loading one process's recording from the lake with DuckDB.

The process is chosen by pid and node; among the execs of that pid (pids are reused), the
last one at or before ``from_ns`` (default: the last one). Its syscalls run from that exec
to the next exec of the pid, cut at ``to_ns``. Rows are read through ``lake.scan``, so
the Delta partitions of other nodes and hours are never read.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.lake import LakeLocation, connect, partition_filter, payload_keys, scan
from kprobe.lake import blobs as lake_blobs
from kprobe.lake.sealing import open_blob, sealing_error
from kprobe.replay_sandbox.context import CONTEXT, CWD, FD_PATH, FDS, ProcessContext, descriptors
from kprobe.replay_sandbox.errors import RecordingError
from kprobe.replay_sandbox.peers import load_peer_streams
from kprobe.replay_sandbox.recording import ProcessInfo, Recording

_SYSCALL_COLUMNS = "ts_ns, dur_ns, pid, tid, cpu, comm, nr, name, ret, fd, args, seq"
_NO_END = 2**63 - 1
_DATA_COLUMNS = ("ts_ns, pid, tid, seq, nr, arg_index, \"offset\", data, total_len, truncated, "
                 "blob, blob_offset")


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
         to_ns: int | None = None, with_peers: bool = True, tree: bool = False) -> Recording:
    """The recording of ``pid``'s exec (see the module doc); ``with_peers``: also what the
    other ends of its connections sent (what-if replays serve it, see ``peers``); ``tree``:
    also every process it forked, and theirs, each from its fork to its exit (their later
    execs too), and ``pid`` itself to its exit."""
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
        nxt = _one(con, f"""SELECT min(ts_ns) AS ts FROM processes
                           WHERE node = ? AND pid = ? AND kind = '{"exit" if tree else "exec"}'
                             AND ts_ns > ?""",
                   [node, pid, start])
        end = int(nxt["ts"]) + int(tree) if nxt and nxt["ts"] is not None else None
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
        children = _descendants(con, node, pid, start, end) if tree else {}
        last = end
        if children and end is not None:
            ends = [c.end_ns for c in children.values()]
            last = None if None in ends else max([end, *(e for e in ends if e is not None)])
        pids = [pid, *children]
        where = f"pid IN ({', '.join('?' * len(pids))})"
        syscalls = con.sql(f"SELECT {_SYSCALL_COLUMNS} FROM "
                           f"{_window('syscalls', node, start, last)} WHERE {where}",
                           params=pids).to_arrow_table()
        data = con.sql(f"SELECT {_DATA_COLUMNS} FROM "
                       f"{_window('syscall_data', node, start, last)} WHERE {where}",
                       params=pids).to_arrow_table()
        peers = load_peer_streams(con, node, pid, start, end) if with_peers else {}
        contents = _blob_contents(location, _as_table(data), start)
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
        cwd=image.get(CWD) or exec_row["cwd"] or "/", start_ns=start,
        comm=exec_row["comm"] or "",
        exit_code=None if exit_row is None else exit_row["exit_code"],
        context=ProcessContext.parse(image[CONTEXT]) if CONTEXT in image else None,
        descriptors=(descriptors(image[FDS], {a - FD_PATH: v for a, v in image.items()
                                               if isinstance(a, int) and a >= FD_PATH})
                     if FDS in image else None))
    if not process.exe:
        raise RecordingError(f"the exec of pid {pid} on {node} has no exe recorded")
    if syscalls.num_rows == 0:
        raise RecordingError(f"no syscalls of pid {pid} on {node} in the lake: was it "
                             f"recorded with payload capture (kprobe run --payloads)?")
    recording = Recording.from_tables(process, _as_table(syscalls), _as_table(data),
                                      mono_to_epoch_ns=meta["mono_to_epoch_ns"] if meta
                                      else None, blobs=contents,
                                      children={p: c.info for p, c in children.items()})
    recording.peers = peers
    return recording


def _exec_image(con: Any, node: str, pid: int, exec_ns: int) -> dict[int, Any]:
    """The file, argv and environment of the exec at ``exec_ns`` as the kernel read them
    (execve payloads: 0 = file, 1 = argv, 2 = env), or {} when it was recorded without
    payloads; /proc, read by the agent after the event, may show a later image."""
    since = exec_ns - 60 * 10**9
    call = _one(con, f"""SELECT tid, seq FROM {scan("syscalls", [node], since, exec_ns + 1)}
                         WHERE pid = ? AND nr = 59 ORDER BY ts_ns DESC LIMIT 1""", [pid])
    if call is None:
        return {}
    cursor = con.execute(f"""SELECT arg_index, list(data ORDER BY "offset")
                             FROM syscall_data
                             WHERE {partition_filter([node], since, exec_ns + 1)} AND pid = ?
                               AND tid = ? AND seq = ? AND nr = 59
                             GROUP BY arg_index""", [pid, call["tid"], call["seq"]])
    image: dict[int, Any] = {}
    for arg, parts in cursor.fetchall():
        raw = b"".join(bytes(p) for p in parts if p is not None)
        if arg in (0, CWD):
            image[arg] = raw.decode(errors="surrogateescape")
        elif arg in (1, 2):
            image[arg] = [p.decode(errors="surrogateescape") for p in raw.split(b"\0") if p]
        else:  # the context, the descriptor table and its paths (replay_sandbox.context)
            image[arg] = raw
    return image


def _blob_contents(location: LakeLocation, data: pa.Table, start_ns: int) -> dict[str, bytes]:
    """The contents the reads by identity of ``data`` name, opened and checked against
    their names (lake/sealing.py); a name the lake does not hold is left out (the replay
    says which calls it leaves without their bytes)."""
    if "blob" not in data.column_names:
        return {}
    names = {n for n in data.column("blob").to_pylist() if n}
    if not names:
        return {}
    # a row's content is stored in its hour or a later one (lake/blobs.py): the next one
    # at most, for the agent stores it within seconds
    times = pc.min_max(data.column("ts_ns"))
    first, last = times["min"].as_py() or start_ns, times["max"].as_py() or start_ns
    stored = lake_blobs.fetch(location, names, lake_blobs.hours_between(first, last))
    keys = payload_keys.load(location.payload_key_file) if location.payload_key_file else None
    return {name: open_blob(data_, seal, name, keys) for name, (data_, seal) in stored.items()}


def _window(table: str, node: str, start: int, end: int | None) -> str:
    """``table``'s rows on ``node`` from ``start`` to ``end`` (None: no end)."""
    return scan(table, [node], start, end if end is not None else _NO_END)


@dataclass(frozen=True)
class _Child:
    info: ProcessInfo
    end_ns: int | None  # its exit, if recorded


def _descendants(con: Any, node: str, pid: int, start: int, end: int | None
                 ) -> dict[int, _Child]:
    """Every process ``pid`` forked after ``start`` (before ``end``), and theirs: each
    from its fork, with the image of its first exec (or its parent's) and its exit."""
    parts = partition_filter([node], start, _NO_END)
    root = _exec_image(con, node, pid, start)
    rows = con.execute(f"""
        WITH RECURSIVE tree(pid, ppid, ts) AS (
            SELECT pid, ppid, ts_ns FROM processes
            WHERE {parts} AND kind = 'fork' AND ppid = ? AND ts_ns >= ?
              {'AND ts_ns < ?' if end is not None else ''}
            UNION
            SELECT f.pid, f.ppid, f.ts_ns FROM processes f JOIN tree t ON f.ppid = t.pid
            WHERE {parts} AND f.kind = 'fork' AND f.ts_ns >= t.ts
        )
        SELECT t.pid, t.ppid, min(t.ts) AS forked,
               (SELECT min(x.ts_ns) FROM processes x WHERE {parts}
                  AND x.pid = t.pid AND x.kind = 'exit' AND x.ts_ns >= min(t.ts)) AS ended
        FROM tree t GROUP BY t.pid, t.ppid ORDER BY forked""",
        [pid, start] + ([end] if end is not None else [])).fetchall()
    children: dict[int, _Child] = {}
    # pid -> exe, argv (a fork that does not exec runs its parent's image)
    images: dict[int, tuple[str, list[str]]] = {pid: (root.get(0, ""), root.get(1, []))}
    for child, parent, forked, ended in rows:
        if child == pid or child in children:
            continue
        exit_row = _one(con, f"""SELECT exit_code FROM processes WHERE {parts}
                                 AND pid = ? AND kind = 'exit' AND ts_ns >= ?
                                 ORDER BY ts_ns LIMIT 1""", [child, forked])
        exec_row = _one(con, f"""SELECT ts_ns, comm, exe, argv FROM processes
                                 WHERE {parts} AND pid = ? AND kind = 'exec'
                                   AND ts_ns >= ? {'AND ts_ns <= ?' if ended else ''}
                                 ORDER BY ts_ns LIMIT 1""",
                        [child, forked] + ([ended] if ended else []))
        image = _exec_image(con, node, child, int(exec_row["ts_ns"])) if exec_row else {}
        exe = image.get(0) or (exec_row["exe"] if exec_row else "") or ""
        argv = image.get(1) or (list(exec_row["argv"] or []) if exec_row else [])
        if not exe and parent in images:
            exe, argv = images[parent]
        images[child] = (exe, argv)
        info = ProcessInfo(pid=child, node=node, exe=exe, argv=argv, env=[], cwd="",
                           start_ns=int(forked), comm=exec_row["comm"] if exec_row else "",
                           exit_code=None if exit_row is None else exit_row["exit_code"])
        children[child] = _Child(info, int(ended) if ended is not None else None)
    return children


def _one(con: Any, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cursor = con.execute(sql, params)
    rows = cursor.fetchall()  # finish the result: a pending one blocks the next con.sql()
    if not rows:
        return None
    row = rows[0]
    return dict(zip([d[0] for d in cursor.description], row))


def _as_table(data: pa.Table | pa.RecordBatchReader) -> pa.Table:
    return data if isinstance(data, pa.Table) else data.read_all()
