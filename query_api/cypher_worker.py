"""User Cypher runs in a confined worker process, so a statement the parser let through
still cannot reach a host file, the network or a privilege.

The API process parses and checks the statement (``cypher_guard``), resolves the snapshot
files (downloading object-store snapshots into the cache), and hands a ``CypherJob`` to one
of a few long-lived workers (``worker_main``, in ``python -c``). Each worker
imports everything it needs, then confines itself for good (``confine``: Landlock read-only
to the snapshot directories and Python's own library directories, no writes, no TCP, no
capabilities) and only then reads jobs:
it opens each snapshot read-only, runs the statement with the time limit (the engine's
``interrupt()``), cuts the rows and bytes to the limits and answers with an Arrow IPC
stream. A worker that misses its deadline by more than a grace period is killed and
replaced; one that dies is replaced.

Frames on the pipes: an 8-byte big-endian length, then the bytes. Requests are JSON; an
answer is a JSON header, then (when ``ok``) an Arrow IPC stream.

Measured on this 2-core VM (tests/bench/bench_query_api.py, ``cypher``): see the README.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from kprobe.compute.errors import GraphError, GraphNotFound, QueryNotFound
from kprobe.compute.graph import store
from kprobe.compute.graph.store import SnapshotInfo
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.query_api.errors import QueryTimeLimit, ServiceUnavailable

_READY_TIMEOUT_S = 60.0
_GRACE_S = 5.0  # beyond the statement's time limit before its worker is killed


@dataclass(frozen=True)
class SnapshotFile:
    window: str
    uri: str
    manifest: dict[str, Any]
    path: str


@dataclass(frozen=True)
class CypherJob:
    statement: str
    params: dict[str, Any]
    snapshots: list[SnapshotFile]
    max_rows: int
    max_bytes: int
    timeout_s: float
    buffer_pool_mb: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CypherJob:
        raw = json.loads(data)
        raw["snapshots"] = [SnapshotFile(**s) for s in raw["snapshots"]]
        return cls(**raw)


@dataclass(frozen=True)
class CypherResult:
    table: pa.Table
    truncated: bool


# -- running a job (in the worker; in-process when isolation is off) ---------------------------
def run_job(job: CypherJob) -> CypherResult:
    """Run ``job`` here; QueryTimeLimit, QueryNotFound or GraphError when it fails."""
    settings = ComputeSettings(graph_buffer_pool_mb=job.buffer_pool_mb)
    deadline = time.monotonic() + job.timeout_s
    parts: list[pa.Table] = []
    rows = size = 0
    truncated = False
    for snap in job.snapshots:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueryTimeLimit(f"the statement ran past the {job.timeout_s:g} s limit")
        info = SnapshotInfo(Window.parse(snap.window), snap.uri, snap.manifest)
        with store.open_snapshot_file(info, Path(snap.path), settings) as reader, \
                _time_limit(reader, remaining) as fired:
            try:
                table = reader.query(job.statement, job.params)
            except QueryNotFound as err:
                if fired.is_set() or "interrupt" in str(err).lower():
                    raise QueryTimeLimit(f"the statement ran past the {job.timeout_s:g} s "
                                         f"limit on window {snap.window}") from None
                raise QueryNotFound(f"graph query failed on window {snap.window}: "
                                    f"{str(err).removeprefix('graph query failed: ')}"
                                    ) from None
        table = table.add_column(0, "window", pa.array([snap.window] * table.num_rows,
                                                       pa.string()))
        table, cut = fit(table, job.max_rows - rows, job.max_bytes - size)
        parts.append(table)
        rows += table.num_rows
        size += table.nbytes
        if cut:
            truncated = True
            break
    result = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    return CypherResult(result, truncated)


def fit(table: pa.Table, max_rows: int, max_bytes: int) -> tuple[pa.Table, bool]:
    """The first rows of ``table`` within both limits, and whether any were cut."""
    cut = False
    if table.num_rows > max_rows:
        table, cut = table.slice(0, max(max_rows, 0)), True
    if table.nbytes > max_bytes and table.num_rows:
        n = int(table.num_rows * max(max_bytes, 0) / table.nbytes)
        while n > 0 and table.slice(0, n).nbytes > max_bytes:
            n = n * 3 // 4
        table, cut = table.slice(0, n), True
    return table, cut


@contextmanager
def _time_limit(reader: store.GraphReader, timeout_s: float) -> Iterator[threading.Event]:
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        reader.interrupt()

    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


# -- frames ---------------------------------------------------------------------------------
def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> bytes | None:
    head = _read_exact(fd, 8, deadline)
    if head is None:
        return None
    return _read_exact(fd, int.from_bytes(head, "big"), deadline)


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


# -- the worker process -----------------------------------------------------------------------
def _warm_up() -> None:
    """Load every library a job uses while files can still be read: after ``confine`` no
    module can be imported."""
    import ladybug

    Window.parse("20260101T000000Z_60s")  # datetime.strptime imports _strptime lazily
    db = ladybug.Database(":memory:")
    con = ladybug.Connection(db)
    try:
        con.execute("CREATE NODE TABLE W(id STRING, n INT64, ts TIMESTAMP, PRIMARY KEY(id))")
        con.execute("CREATE REL TABLE R(FROM W TO W, d DOUBLE)")
        con.execute("CREATE (:W {id: 'a', n: 1, ts: timestamp('2026-01-01')})")
        result = con.execute("MATCH (w:W) OPTIONAL MATCH (w)-[r:R]->(v:W) "
                             "RETURN w, r, v, w.n, [1.5] AS l, {a: 1} AS m, date('2026-01-01')"
                             " AS d, interval('1 day') AS i")
        assert not isinstance(result, list)
        table = result.get_as_arrow()
        _arrow_bytes(table.add_column(0, "window", pa.array(["w"] * table.num_rows)))
        fit(table, 0, 0)
        try:
            con.execute("RETURN nothing_such(1)")
        except RuntimeError:
            pass
    finally:
        con.close()
        db.close()


def worker_main(readable: list[Path]) -> int:
    from kprobe.query_api.confine import confine

    out = sys.stdout.fileno()
    inp = sys.stdin.fileno()
    os.nice(5)  # the server's event loop gets a core before a statement does
    try:
        _warm_up()
        # Python's library directories hold code only; readable, a module imported late
        # (a lazy import inside a library) still loads
        libraries = {Path(p) for name in ("stdlib", "platstdlib", "purelib", "platlib")
                     if (p := sysconfig.get_path(name)) and Path(p).is_dir()}
        abi = confine([*readable, *sorted(libraries)])
    except Exception as err:  # noqa: BLE001 - reported to the parent as a refusal
        _write_frame(out, json.dumps({"ready": False, "message": str(err)}).encode())
        return 1
    _write_frame(out, json.dumps({"ready": True, "landlock_abi": abi}).encode())
    while True:
        request = _read_frame(inp)
        if request is None:
            return 0
        try:
            result = run_job(CypherJob.from_json(request))
        except QueryTimeLimit as err:
            _write_frame(out, json.dumps({"ok": False, "kind": "timeout",
                                          "message": str(err)}).encode())
        except QueryNotFound as err:
            _write_frame(out, json.dumps({"ok": False, "kind": "query",
                                          "message": str(err)}).encode())
        except GraphNotFound as err:
            _write_frame(out, json.dumps({"ok": False, "kind": "missing",
                                          "message": str(err)}).encode())
        except Exception as err:  # noqa: BLE001 - the engine's other failures
            text = " ".join(str(err).split())[:300] or type(err).__name__
            _write_frame(out, json.dumps({"ok": False, "kind": "graph",
                                          "message": text}).encode())
        else:
            _write_frame(out, json.dumps({"ok": True, "truncated": result.truncated,
                                          "rows": result.table.num_rows}).encode())
            _write_frame(out, _arrow_bytes(result.table))


# -- the pool (API process) -------------------------------------------------------------------
class _Worker:
    def __init__(self, readable: list[Path]) -> None:
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C.UTF-8"}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _WORKER_MAIN, *map(str, readable)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
            start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:
            ready = _read_frame(self.stdout, time.monotonic() + _READY_TIMEOUT_S)
        except TimeoutError:
            ready = None
        answer = json.loads(ready) if ready else {"ready": False,
                                                  "message": "the worker did not start"}
        if not answer.get("ready"):
            self.kill()
            raise ServiceUnavailable(f"Cypher is unavailable on this replica: "
                                     f"{answer.get('message')}")

    def call(self, job: CypherJob) -> CypherResult:
        deadline = time.monotonic() + job.timeout_s + _GRACE_S
        _write_frame(self.stdin, job.to_json())
        header = _read_frame(self.stdout, deadline)
        if header is None:
            raise BrokenPipeError("the Cypher worker exited")
        answer = json.loads(header)
        if not answer["ok"]:
            kind, message = answer["kind"], answer["message"]
            raise {"timeout": QueryTimeLimit, "query": QueryNotFound,
                   "missing": GraphNotFound}.get(kind, GraphError)(message)
        body = _read_frame(self.stdout, deadline)
        if body is None:
            raise BrokenPipeError("the Cypher worker exited")
        return CypherResult(ipc.open_stream(body).read_all(), bool(answer["truncated"]))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class CypherPool:
    """Up to ``size`` confined workers, started on first use; a request waits up to
    ``wait_s`` for a free one (then 503 with Retry-After)."""

    def __init__(self, readable: list[Path], size: int, wait_s: float) -> None:
        self.readable = readable
        self.size = size
        self.wait_s = wait_s
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False

    def run(self, job: CypherJob) -> CypherResult:
        worker = self._acquire()
        healthy = False
        try:
            result = worker.call(job)
            healthy = True
            return result
        except TimeoutError:
            raise QueryTimeLimit(f"the statement ran past the {job.timeout_s:g} s limit "
                                 "(its worker was stopped)") from None
        except BrokenPipeError:
            raise GraphError("the Cypher worker stopped while running the statement "
                             "(over its memory or an engine crash); retry") from None
        except (QueryTimeLimit, QueryNotFound, GraphError):
            healthy = worker.alive()
            raise
        finally:
            self._release(worker, healthy)

    def _acquire(self) -> _Worker:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                worker = self._idle.get_nowait()
                if worker.alive():
                    return worker
                self._discard(worker)
                continue
            except queue.Empty:
                pass
            with self._lock:
                start = self._started < self.size
                if start:
                    self._started += 1
            if start:
                try:
                    return _Worker(self.readable)
                except BaseException:
                    with self._lock:
                        self._started -= 1
                    raise
            wait = deadline - time.monotonic()
            try:
                worker = self._idle.get(timeout=max(wait, 0.001))
            except queue.Empty:
                raise ServiceUnavailable(
                    f"every Cypher worker of this replica stayed busy for {self.wait_s:g} s;"
                    " retry", {"Retry-After": "1"}) from None
            if worker.alive():
                return worker
            self._discard(worker)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if healthy and not self._closed:
            self._idle.put(worker)
        else:
            self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started -= 1

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return


def snapshot_files(location: Any, snapshots: list[SnapshotInfo],
                   settings: ComputeSettings) -> list[SnapshotFile]:
    """The job's view of ``snapshots``: their files on this machine."""
    return [SnapshotFile(s.window_id, s.uri, dict(s.manifest),
                         str(store.snapshot_file(location, s, settings))) for s in snapshots]


_WORKER_MAIN = ("import sys, pathlib; from kprobe.query_api.cypher_worker import worker_main; "
                "sys.exit(worker_main([pathlib.Path(p) for p in sys.argv[1:]]))")
