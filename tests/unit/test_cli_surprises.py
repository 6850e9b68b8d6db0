"""No silent surprises (issue 17): a wrong lake, bad input and odd values are one line and a
documented exit code; JSON is valid JSON; text shows UTC times; ``kprobe failures``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kprobe.cli import build_parser, main
from kprobe.compute.analysis import run_window
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeSettings, resolve
from tests.unit.test_compute_scenario import WINDOW_END, WINDOW_START, payment_scenario

UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> str:
    lake_dir = tmp_path_factory.mktemp("surprises") / "lake"
    lake_dir.mkdir()
    payment_scenario().write(lake_dir)
    run_window(resolve(LakeSettings(lake=str(lake_dir))), Window(WINDOW_START, WINDOW_END),
               ComputeSettings())
    return str(lake_dir)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- a wrong lake ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ("sql", "select count(*) from spans"),
    ("explain", "98721"),
    ("graph", "windows"),
    ("failures",),
    ("analyze", "--from=-1h", "--to=now", "--executor", "local"),
    ("lake", "compact"),
])
def test_a_location_without_kprobe_tables_is_refused(
        argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a typo'd lake path (and, the control, an existing empty directory)
    for typo in (tmp_path / "typo", tmp_path):
        code, out, err = _run(capsys, *argv, "--lake", str(typo))
        # THEN one line says what was looked for and where; exit 2; nothing is created
        assert code == 2 and out == ""
        line = _one_line(err)
        assert f"no kprobe tables at file://{typo}" in line and "looked for" in line
    assert not (tmp_path / "typo").exists() and list(tmp_path.iterdir()) == []


def test_kprobe_lake_from_the_environment_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPROBE_LAKE", str(tmp_path / "forgotten"))
    code, _, err = _run(capsys, "sql", "select 1")
    assert code == 2 and "(from $KPROBE_LAKE;" in _one_line(err)


def test_the_real_lake_is_read(analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sql", "--lake", analysed, "select count(*) n from spans")
    assert code == 0 and "(1 row)" in out


# -- bad input: one line, exit 2 --------------------------------------------------------------
def test_output_into_a_missing_directory(analysed: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("csv", "parquet", "json"):
        code, out, err = _run(capsys, "sql", "--lake", analysed, "--format", fmt,
                              "-o", str(tmp_path / "missing" / "out"), "select 1")
        assert code == 2 and out == ""
        assert _one_line(err) == (f"kprobe sql: cannot write {tmp_path}/missing/out: "
                                  f"directory {tmp_path}/missing does not exist")


def test_csv_with_an_interval_column(analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "sql", "--lake", analysed, "--format", "csv",
                          "select interval 1 day + interval 5 second as i, 2 as n")
    assert code == 0, err
    assert out.splitlines() == ['"i","n"', '"0 months 1 days 5000000000 ns",2']


def test_compact_target_size_zero(analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "lake", "compact", "--lake", analysed,
                          "--target-size-mb", "0")
    assert code == 2 and out == ""
    assert "--target-size-mb: must be at least 1, got 0" in _one_line(err)


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["sql"], ["no-such-command"], ["failures", "--limit", "x"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "--help)" in _one_line(err)


# -- valid JSON, UTC times in text --------------------------------------------------------------
def test_json_has_no_nan_or_infinity(analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sql", "--lake", analysed, "--format", "json",
                        "select 'nan'::double a, 'inf'::double b, '-inf'::double c, 1.5::double d")
    assert code == 0
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == [
        {"a": None, "b": None, "c": None, "d": 1.5}]
    code, out, _ = _run(capsys, "graph", "--lake", analysed, "--format", "json", "--cypher",
                        "MATCH (s:Span) RETURN s.id AS id, 0.0 / 0.0 AS x LIMIT 1")
    assert code == 0
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))[0]["x"] is None


def test_text_shows_instants_as_utc_and_json_keeps_ns(
        analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "select start_ns, dur_ns from spans order by start_ns limit 1"
    code, out, _ = _run(capsys, "sql", "--lake", analysed, sql)
    assert code == 0 and UTC_TIME.search(out.splitlines()[2])
    code, out, _ = _run(capsys, "sql", "--lake", analysed, "--format", "json", sql)
    assert isinstance(json.loads(out)[0]["start_ns"], int)


# -- graph --------------------------------------------------------------------------------------
def test_graph_root_cause_of_an_unknown_id_is_not_found(
        analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "graph", "--lake", analysed, "root-cause", "UNKNOWN-ID")
    assert code == 2 and out == ""
    assert "no failed operation of a transaction, trace or span 'UNKNOWN-ID'" in _one_line(err)
    code, out, _ = _run(capsys, "graph", "--lake", analysed, "root-cause", "98721")  # control
    assert code == 0 and "memory_pressure" in out


def test_an_unbound_cypher_parameter_is_an_error(
        analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    cypher = "MATCH (s:Span) WHERE s.service = $svc AND s.name <> '$notme' RETURN s.id"
    code, out, err = _run(capsys, "graph", "--lake", analysed, "--cypher", cypher)
    assert code == 2 and out == ""
    assert _one_line(err) == ("kprobe graph: unbound parameter $svc in the statement: pass "
                              "--param svc=VALUE")
    code, out, _ = _run(capsys, "graph", "--lake", analysed, "--cypher", cypher,
                        "--param", "svc=payment-handler")
    assert code == 0 and "(3 rows)" in out


def test_graph_windows_honours_from_and_to(
        analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "graph", "--lake", analysed, "windows")
    assert code == 0 and "(1 row)" in out and UTC_TIME.search(out)
    code, out, err = _run(capsys, "graph", "--lake", analysed, "windows",
                          "--from", f"{WINDOW_END}ns")
    assert code == 2 and out == "" and "no graph snapshots" in _one_line(err)
    code, out, _ = _run(capsys, "graph", "--lake", analysed, "windows",
                        "--from", f"{WINDOW_START}ns", "--to", f"{WINDOW_END}ns")
    assert code == 0 and "(1 row)" in out


# -- analyze -------------------------------------------------------------------------------------
def test_an_empty_analyze_range_says_so(analysed: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    graphs = sorted(p.name for p in (Path(analysed) / "graphs").iterdir())
    code, out, err = _run(capsys, "analyze", "--lake", analysed, "--from",
                          "2020-01-01T00:00:00Z", "--to", "2020-01-01T00:05:00Z",
                          "--executor", "local")
    assert code == 2 and out == ""
    assert "nothing recorded from 2020-01-01T00:00:00.000000Z to 2020-01-01T00:05:00" \
        in _one_line(err)
    assert sorted(p.name for p in (Path(analysed) / "graphs").iterdir()) == graphs


# -- kprobe failures ------------------------------------------------------------------------------
def test_failures_lists_the_failed_payment_with_root_cause_and_culprit(
        analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "failures", "--lake", analysed)
    assert code == 0
    header, _, row, count = out.splitlines()
    assert header.split()[:3] == ["start_ns", "transaction", "operation"]
    assert "98721" in row and "memory_pressure 790 ms" in row
    assert "batch job PID 4721" in row and UTC_TIME.search(row)
    assert count == "(1 row)"
    code, out, _ = _run(capsys, "failures", "--lake", analysed, "--format", "json")
    (item,) = json.loads(out)["items"]
    assert item["business_id"] == "98721" and item["failure"]["root_cause_kind"] == \
        "memory_pressure"
    assert item["failure"]["culprit"]["pid"] == 4721


def test_failures_filters(analysed: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, found in ((("--kind", "memory_pressure"), 1), (("--kind", "timeout"), 1),
                        (("--kind", "disk"), 0), (("--service", "payment-handler"), 1),
                        (("--service", "nobody"), 0),
                        (("--from", f"{WINDOW_END}ns"), 0),
                        (("--from", f"{WINDOW_START}ns", "--to", f"{WINDOW_END}ns"), 1)):
        code, out, err = _run(capsys, "failures", "--lake", analysed, "--format", "json",
                              *argv)
        assert code == 0, err
        assert len(json.loads(out)["items"]) == found, argv


def test_failures_pages_with_a_cursor(lake_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN two failed payments in one window (the older one declined, no kernel cause)
    sc = payment_scenario()
    sc.span("t2", "a", None, "payment-handler", "POST /payments", -20_000, -19_990, pid=100,
            tid=101, status="ERROR", message="card declined", kind="SERVER",
            attrs={"payment.id": 11111})
    sc.write(lake_dir)
    run_window(resolve(LakeSettings(lake=str(lake_dir))), Window(WINDOW_START, WINDOW_END),
               ComputeSettings())
    lake = str(lake_dir)
    code, out, _ = _run(capsys, "failures", "--lake", lake, "--format", "json")
    both = json.loads(out)["items"]
    assert len(both) == 2 and both[0]["start_ns"] > both[1]["start_ns"]  # newest first
    # WHEN listed a page of one at a time
    code, out, _ = _run(capsys, "failures", "--lake", lake, "--limit", "1")
    more = out.splitlines()[-1]
    assert more.startswith("more: kprobe failures --lake=") and "--cursor=" in more
    token = more.split("--cursor=")[1]
    code, out, _ = _run(capsys, "failures", "--lake", lake, "--limit", "1", "--format",
                        "json", "--cursor", token)
    page = json.loads(out)
    # THEN the second page is the older payment and the last
    assert [i["trace_id"] for i in page["items"]] == [both[1]["trace_id"]]
    assert page["items"][0]["business_id"] == "11111" and page["next_cursor"] is None
    code, out, _ = _run(capsys, "failures", "--lake", lake, "--limit", "1", "--cursor", token)
    assert "error: card declined" in out and "none found" in out
    code, _, err = _run(capsys, "failures", "--lake", lake, "--cursor", "%%%")
    assert code == 2 and "cursor" in _one_line(err)


# -- help ---------------------------------------------------------------------------------------
def test_every_command_and_option_has_help_text() -> None:
    parser = build_parser()
    missing = []
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            todo = [(name, sub)]
            while todo:
                prog, p = todo.pop()
                if not (p.description or "").strip() and prog.count(" ") == 0:
                    missing.append(f"{prog}: no description")
                for opt in p._actions:
                    if opt.choices and hasattr(opt, "_name_parser_map"):
                        todo.extend((f"{prog} {n}", s) for n, s in opt.choices.items())
                    elif not opt.help and opt.dest != "help":
                        missing.append(f"{prog} {'/'.join(opt.option_strings) or opt.dest}")
    assert missing == []
