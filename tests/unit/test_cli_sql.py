"""`kprobe sql` and `kprobe lake`: output formats, refusals and exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kprobe.cli import main
from kprobe.lake import LakeSettings, LakeWriter

T0 = 1_767_225_600_000_000_000


@pytest.fixture
def lake(lake_dir: Path) -> str:
    writer = LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node="n1"))
    writer.append("syscalls", pa.table({
        "ts_ns": [T0, T0 + 1, T0 + 2], "pid": [1, 1, 2], "name": ["read", "write", "read"],
        "args": [[1, 2], None, [3]]}))
    return str(lake_dir)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_table(lake: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sql", "--lake", lake,
                        "select name, count(*) n from syscalls group by 1 order by 1")
    assert code == 0
    assert out.splitlines()[0].split() == ["name", "n"]
    assert out.splitlines()[2].split() == ["read", "2"]
    assert "(2 rows)" in out


def test_json_and_csv(lake: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "select pid, args from syscalls order by ts_ns"
    code, out, _ = _run(capsys, "sql", "--lake", lake, "--format", "json", sql)
    assert code == 0
    assert json.loads(out) == [{"pid": 1, "args": [1, 2]}, {"pid": 1, "args": None},
                               {"pid": 2, "args": [3]}]
    code, out, _ = _run(capsys, "sql", "--lake", lake, "--format", "csv", sql)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["pid", "args"] and rows[1] == ["1", "[1, 2]"] and len(rows) == 4


def test_parquet_to_file(lake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.parquet"
    code, _, _ = _run(capsys, "sql", "--lake", lake, "--format", "parquet", "-o", str(target),
                      "select * from syscalls")
    assert code == 0
    assert pq.read_table(target).num_rows == 3


def test_write_statement_is_refused_with_exit_2(
    lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "sql", "--lake", lake, "delete from syscalls")
    assert code == 2 and out == ""
    assert err.strip() == ("kprobe sql: DELETE statements are not allowed: the lake is read-only "
                           "here (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN only)")
    code, out, _ = _run(capsys, "sql", "--lake", lake, "--format", "csv",
                        "select count(*) as n from syscalls")
    assert code == 0 and out.splitlines() == ['"n"', "3"]  # nothing was deleted


def test_file_access_from_sql_is_refused(lake: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "sql", "--lake", lake, "select * from read_csv('/etc/passwd')")
    assert code == 2
    assert "disabled by configuration" in err and len(err.strip().splitlines()) == 1


def test_sql_error_is_one_line(lake: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "sql", "--lake", lake, "select nope from syscalls")
    assert code == 2
    assert err.startswith("kprobe sql: Binder Error") and len(err.strip().splitlines()) == 1


def test_tables_not_written_yet_are_empty_not_errors(lake: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sql", "--lake", lake, "--format", "json",
                        "select count(*) as n from spans")
    assert code == 0 and json.loads(out) == [{"n": 0}]


def test_bad_lake_uri_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "sql", "--lake", "ftp://x/y", "select 1")
    assert code == 2
    assert err.strip() == "kprobe sql: unsupported lake URI scheme 'ftp': use file:// or s3://"


def test_lake_retain_rejects_bad_duration(lake: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "lake", "retain", "--lake", lake, "--keep", "tomorrow")
    assert code == 2
    assert err.count("\n") == 1 and "not a duration: 'tomorrow'" in err
