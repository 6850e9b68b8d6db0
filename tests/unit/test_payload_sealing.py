"""Payloads sealed at rest (lake/sealing.py, lake/payload_keys.py) and what each reader sees
of the sensitive columns (lake/access.py), on real local Delta tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kprobe.lake import LakeSettings, LakeWriter, payload_keys, resolve
from kprobe.lake._batches import conform
from kprobe.lake.errors import PayloadIntegrityError, PayloadKeyError
from kprobe.lake.maintenance import compact, retain
from kprobe.lake.query import run_query
from kprobe.lake.reader import LakeDatabase, connect
from kprobe.lake.schema import spec
from kprobe.lake.sealing import SegmentOpener, open_segment, seal_table

HOUR_NS = 3_600_000_000_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
SECRET = b"card 4111111111111111 key sk_live_abc"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(readers' file, agents' file) of one fresh key."""
    readers, agents = tmp_path / "readers.json", tmp_path / "agents.json"
    payload_keys.new_key(readers, agents)
    return readers, agents


def _rows(n: int, pid: int = 7, ts: int = T0, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    data: list[bytes | None] = [SECRET + bytes(rng.integers(0, 256, int(rng.integers(0, 200)),
                                                        dtype=np.uint8)) for _ in range(n)]
    data[1] = None  # a fault row: no bytes
    data[2] = b""
    return pa.table({"ts_ns": np.arange(n, dtype=np.int64) + ts, "pid": np.full(n, pid),
                     "tid": np.full(n, pid), "seq": np.arange(n), "nr": np.zeros(n, int),
                     "arg_index": np.ones(n, int), "offset": np.zeros(n, int),
                     "data": pa.array(data, pa.binary())})


def _sealed(rows: pa.Table, agents: Path) -> pa.Table:
    batch = conform(spec("syscall_data"), rows, node="n1", batch_id="w-1")
    return seal_table(batch, payload_keys.load(agents))


def _open_all(table: pa.Table, readers: Path) -> list[bytes | None]:
    opener = SegmentOpener(payload_keys.load(readers), lambda batch: table)
    opened: pa.Array = opener.open(table.column("data"), table.column("seal"),
                                   table.column("seal_pos"), table.column("batch_id"))
    return opened.to_pylist()


# -- the crypto ----------------------------------------------------------------------------------


def test_seal_then_open_round_trips_every_row_and_keeps_lengths(keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    rows = _rows(500)
    sealed = _sealed(rows, agents)
    # THEN no row holds its plaintext, every row keeps its length, nulls stay null
    assert not any(SECRET in (v or b"") for v in sealed.column("data").to_pylist())
    assert [None if v is None else len(v) for v in sealed.column("data").to_pylist()] == [
        None if v is None else len(v) for v in rows.column("data").to_pylist()]
    # and the key file's holder gets every row back
    assert _open_all(sealed, readers) == rows.column("data").to_pylist()


def test_a_subset_of_rows_in_any_order_opens_through_the_whole_segment(
        keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    rows = _rows(300)
    sealed = _sealed(rows, agents)
    fetched: list[str] = []

    def fetch(batch: str) -> pa.Table:
        fetched.append(batch)
        return sealed

    opener = SegmentOpener(payload_keys.load(readers), fetch)
    pick = pa.array(np.random.default_rng(3).permutation(300)[:40])
    part = sealed.take(pick)
    opened = opener.open(part.column("data"), part.column("seal"), part.column("seal_pos"),
                         part.column("batch_id")).to_pylist()
    assert opened == rows.column("data").take(pick).to_pylist()
    # a second read of the same segment comes from the verified cache
    opener.open(part.column("data"), part.column("seal"), part.column("seal_pos"),
                part.column("batch_id"))
    assert fetched == ["w-1"]


@pytest.mark.parametrize("tamper", ["flip a byte", "move bytes to another syscall",
                                    "swap two rows' positions", "drop a row",
                                    "cut the tag"])
def test_any_tampering_fails_authentication(keys: tuple[Path, Path], tamper: str) -> None:
    readers, agents = keys
    sealed = _sealed(_rows(50), agents)
    columns = sealed.to_pydict()
    if tamper == "flip a byte":
        value = bytearray(columns["data"][10])
        value[3] ^= 1
        columns["data"][10] = bytes(value)
    elif tamper == "move bytes to another syscall":
        columns["seq"][10] = 999
    elif tamper == "swap two rows' positions":
        columns["seal_pos"][10], columns["seal_pos"][11] = (columns["seal_pos"][11],
                                                            columns["seal_pos"][10])
    elif tamper == "drop a row":
        columns = {k: v[:10] + v[11:] for k, v in columns.items()}
    else:
        columns["seal"] = [s[:-1] for s in columns["seal"]]
    altered = pa.table(columns, schema=sealed.schema)
    with pytest.raises(PayloadIntegrityError):
        _open_all(altered, readers)
    # control: the untouched batch opens
    assert _open_all(sealed, readers)[10] is not None


def test_the_wrong_key_is_a_one_line_error_naming_both_keys(tmp_path: Path,
                                                             keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    sealed = _sealed(_rows(20), agents)
    other = tmp_path / "other.json"
    other_id = payload_keys.new_key(other)
    with pytest.raises(PayloadKeyError) as err:
        _open_all(sealed, other)
    message = str(err.value)
    assert "\n" not in message and other_id in message
    assert payload_keys.load(agents).active.id in message
    # an agent's (public) file cannot open what it sealed
    with pytest.raises(PayloadKeyError, match="only the public half"):
        _open_all(sealed, agents)


def test_key_files_refuse_loose_modes_and_bad_content(tmp_path: Path,
                                                      keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    assert os.stat(readers).st_mode & 0o077 == 0  # made private
    os.chmod(readers, 0o644)
    with pytest.raises(PayloadKeyError, match="chmod 600"):
        payload_keys.load(readers)
    os.chmod(agents, 0o644)  # public halves only: any mode
    assert payload_keys.load(agents).active.private is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"kprobe_payload_keys": 1, "active": "x", "keys": [{"id": "x", '
                   '"public": "AAAA"}]}')
    with pytest.raises(PayloadKeyError, match="not 32"):
        payload_keys.load(bad)


def test_rotation_old_data_opens_while_the_old_private_key_is_kept(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    old = _sealed(_rows(10, seed=1), agents)
    payload_keys.new_key(readers, agents)  # rotate: a new active key, the old one kept
    new = _sealed(_rows(10, seed=2), agents)
    assert old.column("seal")[0].as_py() != new.column("seal")[0].as_py()
    assert _open_all(old, readers)[0] == _rows(10, seed=1).column("data")[0].as_py()
    assert _open_all(new, readers)[0] == _rows(10, seed=2).column("data")[0].as_py()


def test_open_segment_needs_every_row(keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    sealed = _sealed(_rows(10), agents)
    seal = sealed.column("seal")[0].as_py()
    with pytest.raises(PayloadIntegrityError, match="9 of 10 rows"):
        open_segment(sealed.slice(1), seal, payload_keys.load(readers))


# -- through the writer and the readers -----------------------------------------------------------


def _lake(lake_dir: Path, key_file: Path | None) -> LakeSettings:
    return LakeSettings(lake=str(lake_dir), node="n1",
                        payload_key_file=str(key_file) if key_file else None)


def test_the_lake_stores_ciphertext_and_sql_with_the_key_reads_plaintext(
        lake_dir: Path, keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    writer = LakeWriter.from_settings(_lake(lake_dir, agents))
    writer.direct_min_rows = 100  # both write paths: encoded here, and write_deltalake
    writer.append("syscall_data", _rows(300, pid=1))
    writer.append("syscall_data", _rows(20, pid=2, ts=T0 + HOUR_NS - 5))  # spans two hours
    # THEN no Parquet file holds the secret, not even its raw bytes
    files = list((lake_dir / "v1" / "syscall_data").rglob("*.parquet"))
    assert files and not any(SECRET[:16] in f.read_bytes() for f in files)
    assert not any(SECRET[:16] in v for f in files
                   for v in pq.read_table(f).column("data").to_pylist() if v)
    # and SQL without the key sees ciphertext; with the readers' key, the bytes
    sql = ("SELECT count(*) FROM syscall_data "
           "WHERE position('4111111111111111' IN decode(data, 'replace')) > 0")
    assert run_query(resolve(_lake(lake_dir, None)), sql).table.column(0).to_pylist() == [0]
    keyed = resolve(_lake(lake_dir, readers))
    assert run_query(keyed, sql).table.column(0).to_pylist() == [316]  # 320 minus 2 x 2 empty
    one = run_query(keyed, "SELECT data FROM syscall_data WHERE pid = 2 AND seq = 19")
    assert one.table.column(0)[0].as_py().startswith(SECRET)
    # and a lake read with another key fails in one line
    wrong = lake_dir.parent / "wrong.json"
    payload_keys.new_key(wrong)
    with pytest.raises(PayloadKeyError):
        run_query(resolve(_lake(lake_dir, wrong)), "SELECT data FROM syscall_data LIMIT 1")
    # and compaction keeps every segment whole: still verified after it
    compact(keyed, tables=["syscall_data"], vacuum_after_hours=0)
    assert run_query(keyed, sql).table.column(0).to_pylist() == [316]


def test_read_sessions_have_no_sensitive_columns_and_no_way_to_them(
        lake_dir: Path, keys: tuple[Path, Path]) -> None:
    readers, agents = keys
    writer = LakeWriter.from_settings(_lake(lake_dir, agents))
    writer.append("syscall_data", _rows(50))
    writer.append("processes", pa.table({"ts_ns": [T0], "pid": [7], "kind": ["exec"],
                                         "env": pa.array([["A=1"]], pa.list_(pa.string()))}))
    db = LakeDatabase(resolve(_lake(lake_dir, readers)))
    with db.session(["syscall_data", "processes"]) as con:
        described = {row[0] for row in con.sql("DESCRIBE syscall_data").fetchall()}
        assert {"data", "seal", "seal_pos"}.isdisjoint(described) and "seq" in described
        assert "env" not in {row[0] for row in con.sql("DESCRIBE processes").fetchall()}
        for attempt in ("SELECT data FROM syscall_data", "SELECT env FROM processes",
                        "SELECT kprobe_open_payload(NULL, NULL, NULL, NULL)",
                        "SELECT * FROM syscall_data__sealed"):
            with pytest.raises(Exception, match="not found|does not exist"):
                con.sql(attempt).fetchall()
        assert con.sql("SELECT count(*) FROM syscall_data").fetchall() == [(50,)]
    with db.session(["syscall_data", "processes"], payloads=True) as con:
        assert con.sql("SELECT data FROM syscall_data WHERE seq = 0").fetchall()[0][0].startswith(
            SECRET)
        assert con.sql("SELECT env FROM processes").fetchall() == [(["A=1"],)]
    db.close()
    # a local reader (connect) reads with payloads by default, and without when asked
    assert "data" not in connect(resolve(_lake(lake_dir, None)), ["syscall_data"],
                                 payloads=False).sql("SELECT * FROM syscall_data").columns


def test_an_older_table_gains_the_seal_columns(lake_dir: Path, keys: tuple[Path, Path]) -> None:
    from deltalake import DeltaTable

    from kprobe.lake.schema import PARTITION_COLUMNS, SCHEMA_VERSION, SCHEMA_VERSION_TAG
    from kprobe.lake.writer import TABLE_PROPERTIES

    readers, agents = keys
    old = pa.schema([f for f in spec("syscall_data").schema if not f.name.startswith("seal")])
    DeltaTable.create(str(lake_dir / "v1" / "syscall_data"), old,
                      partition_by=list(PARTITION_COLUMNS), configuration=TABLE_PROPERTIES,
                      description=f"{SCHEMA_VERSION_TAG}{SCHEMA_VERSION}: before sealing")
    LakeWriter.from_settings(_lake(lake_dir, agents)).append("syscall_data", _rows(5))
    read = run_query(resolve(_lake(lake_dir, readers)), "SELECT data FROM syscall_data")
    assert read.table.column(0)[0].as_py().startswith(SECRET)


# -- retention -------------------------------------------------------------------------------------


def test_payloads_are_kept_shorter_than_events(lake_dir: Path) -> None:
    writer = LakeWriter.from_settings(_lake(lake_dir, None))
    now = T0 + 10 * HOUR_NS
    for hours_ago in (9, 5, 1):
        ts = now - hours_ago * HOUR_NS
        writer.append("syscall_data", _rows(3, ts=ts))
        writer.append("syscalls", pa.table({"ts_ns": [ts]}))
        writer.append("processes", pa.table({
            "ts_ns": [ts], "pid": [hours_ago], "kind": ["exec"], "argv": [["prog"]],
            "env": pa.array([[f"AGE={hours_ago}"]], pa.list_(pa.string()))}))
    location = resolve(_lake(lake_dir, None))
    reports = {r.table: r for r in retain(location, 8 * HOUR_NS, keep_payloads_ns=3 * HOUR_NS,
                                          now_ns=now, vacuum_after_hours=0)}
    # THEN events are kept 8 hours, payloads 3: syscall_data keeps only the last hour
    assert len(reports["syscall_data"].dropped_hours) == 2
    assert len(reports["syscalls"].dropped_hours) == 1
    rows = run_query(location, "SELECT pid, env, argv FROM processes ORDER BY pid").table
    # and processes keeps its rows (within 8 h), with environments only within 3 h
    assert rows.to_pylist() == [{"pid": 1, "env": ["AGE=1"], "argv": ["prog"]},
                                {"pid": 5, "env": None, "argv": ["prog"]}]
    assert reports["processes"].scrubbed_hours and run_query(
        location, "SELECT count(*) FROM syscall_data").table.column(0).to_pylist() == [3]
    # and a second run has nothing left to rewrite
    again = {r.table: r for r in retain(location, 8 * HOUR_NS, keep_payloads_ns=3 * HOUR_NS,
                                        now_ns=now, vacuum_after_hours=0)}
    assert again["processes"].scrubbed_hours == [] and again["syscall_data"].dropped_hours == []
