"""--inject parsing, virtual clock helpers, the report, and the replay command's options."""

from __future__ import annotations

import json
import time

import pytest

from kprobe.cli import build_parser
from kprobe.commands.replay import duration, parse_time
from kprobe.errors import CommandError
from kprobe.replay_sandbox import clock
from kprobe.replay_sandbox.errors import SpecError
from kprobe.replay_sandbox.injection import delays_for, parse
from kprobe.replay_sandbox.report import (
    CallInfo,
    Divergence,
    ReplayReport,
    compare_outputs,
    expectation_held,
)
from kprobe.replay_sandbox.sandbox import LaunchSpec, Plan, bwrap_options
from kprobe.replay_sandbox.syscall_table import NUMBERS


def test_injection_specs_from_the_issue() -> None:
    fsync = parse("fsync:+50ms")
    assert (fsync.kind, fsync.delay_ns, fsync.fd) == ("duration", 50_000_000, None)
    recv = parse("recv fd=7:+800ms")
    assert (recv.kind, recv.fd, recv.delay_ns) == ("arrival", 7, 800_000_000)
    net = parse("net:+20ms")
    assert net.kind == "arrival" and NUMBERS["accept4"] in net.syscalls
    assert parse("disk path=/var/lib/*:+1.5s").delay_ns == 1_500_000_000
    assert parse("read:-10us").delay_ns == -10_000
    assert parse("fsync:+1m30s").delay_ns == 90 * 10**9  # the one duration grammar


@pytest.mark.parametrize("bad", ["fsync", "fsync:50ms", "nosuch:+1ms", "recv fd=x:+1ms",
                                 "recv bogus=1:+1ms", "recv fd:+1ms", ":+1ms", "fsync:+1x",
                                 "fsync:+", "fsync:1ms"])
def test_malformed_injections_are_one_line_errors(bad: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(bad)
    assert "\n" not in str(err.value)


def test_injections_match_by_fd_kind() -> None:
    recv = parse("recv fd=7:+800ms")
    read = NUMBERS["read"]
    # a read on socket fd 7 is a receive; on a file or another fd it is not
    assert recv.matches(read, 7, "socket", None)
    assert not recv.matches(read, 7, "file", None)
    assert not recv.matches(read, 8, "socket", None)
    assert recv.matches(NUMBERS["recvfrom"], 7, "unknown", None)
    disk = parse("disk path=/var/*:+1ms")
    assert disk.matches(read, 3, "file", "/var/db") and not disk.matches(read, 3, "file", "/x")


def test_a_wait_reporting_a_delayed_fd_is_delayed() -> None:
    injections = [parse("recv fd=7:+800ms"), parse("fsync:+5ms")]
    poll = NUMBERS["poll"]
    delays = delays_for(injections, poll, [(7, "socket", None)], as_input_nr=NUMBERS["read"])
    assert delays.arrival_ns == 800_000_000 and delays.duration_ns == 0
    assert delays_for(injections, poll, [(8, "socket", None)], NUMBERS["read"]).arrival_ns == 0
    fsync = delays_for(injections, NUMBERS["fsync"], [(3, "file", None)])
    assert fsync.duration_ns == 5_000_000 and len(fsync.applied) == 1


def test_clock_encodings_round_trip() -> None:
    ns = 1_700_000_000_123_456_789
    assert clock.unpack_timespec(clock.pack_timespec(ns)) == ns
    assert clock.unpack_timeval(clock.pack_timeval(ns)) == ns // 1000 * 1000
    assert clock.timeout_ns("ms", 0xFFFF_FFFF, None) is None  # -1: forever
    assert clock.timeout_ns("ms", 250, None) == 250_000_000
    assert clock.timeout_ns("timespec", 0, None) is None
    assert clock.timeout_ns("timespec", 8, lambda a, n: clock.pack_timespec(5)) == 5


def test_clock_domains_learn_the_monotonic_offset() -> None:
    domains = clock.ClockDomains(process_start_ns=10**18)
    domains.learn(clock.CLOCK_MONOTONIC, value_ns=5_000, epoch_ns=10**18 + 7_000)
    assert domains.value(clock.CLOCK_MONOTONIC, 10**18 + 8_000) == 6_000
    assert domains.value(clock.CLOCK_REALTIME, 42) == 42
    assert domains.to_epoch(clock.CLOCK_MONOTONIC, 6_000) == 10**18 + 8_000
    assert not clock.is_shifted(clock.CLOCK_THREAD_CPUTIME_ID)


def test_output_comparison_points_at_the_first_difference() -> None:
    (same,) = compare_outputs({1: b"abc"}, {1: b"abc"})
    assert same.match and same.first_difference is None
    diff, extra = compare_outputs({1: b"got hello\n"}, {1: b"timeout\n", 2: b"oops"})
    assert not diff.match and diff.first_difference == 0
    assert extra.fd == 2 and extra.recorded_bytes == 0


def test_a_card_digit_the_recorder_masked_is_no_difference() -> None:
    # GIVEN a recorded write whose digit run inside a span id looked like a card number
    # (the recorder kept its first 6 and last 4 digits), as in a demo run's traceparent
    from kprobe.capture_agent.cards import mask_bytes
    written = b"traceparent: 00-4bf9-a1f6457175022520-03\r\n"
    recorded, found = mask_bytes(written)
    assert found == 1 and recorded != written
    # THEN the real digits the replay writes match it, and nothing else does
    (same,) = compare_outputs({6: recorded}, {6: written})
    assert same.match and same.first_difference is None
    other = written.replace(b"a1f6457175022520", b"a1f6457179922520")
    (changed,) = compare_outputs({6: written}, {6: other})
    assert not changed.match and changed.first_difference == written.index(b"75022520") + 1
    (letter,) = compare_outputs({6: recorded}, {6: written.replace(b"5022520", b"5x22520")})
    assert not letter.match
    (shorter,) = compare_outputs({6: recorded}, {6: written[:-1]})
    assert not shorter.match


def test_report_renders_text_and_json() -> None:
    report = ReplayReport(
        status="diverged", mode="exact",
        process={"pid": 1, "node": "n", "exe": "/bin/cat", "argv": ["cat", "x"]},
        exit_code=None, divergence=Divergence(
            "openat argument 1 bytes differ at offset 0", 1, 99, 7,
            CallInfo("openat", 257, [-100, 4096, 0], 3, {"1": "'/a'"}),
            CallInfo("openat", 257, [-100, 4096, 0], None, {"1": "'/b'"})),
        outputs=compare_outputs({1: b"x"}, {1: b"x"}), stats={"served": 3.0})
    text = report.render_text()
    assert "diverged" in text and "seq 7" in text and "'/a'" in text and "'/b'" in text
    data = json.loads(report.to_json())
    assert data["divergence"]["expected"]["name"] == "openat"
    assert data["outputs_match"] is True


def test_bwrap_options_shape() -> None:
    spec = LaunchSpec(exe="/bin/cat", argv=["cat", "x"], env=["A=1", "B=x=y"],
                      cwd="/tmp/work/dir")
    layout = Plan(covered=["/srv/app"], symlinks=[("prog.1", "/srv/app/prog")],
                  copies=[(9, "/tmp/work/prog")], cwd="/tmp/work/dir")
    cmd = bwrap_options(spec, layout, filter_fds=[6, 7])
    assert cmd[0] == "--unshare-all" and "--unshare-user" in cmd
    assert cmd[cmd.index("/srv/app") - 1] == "--tmpfs"
    assert cmd[cmd.index("--symlink"):cmd.index("--symlink") + 3] == [
        "--symlink", "prog.1", "/srv/app/prog"]
    assert cmd[cmd.index("--uid") + 1] == "65534" and cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert cmd[cmd.index("--ro-bind") + 1:cmd.index("--ro-bind") + 3] == ["/", "/"]
    assert "--tmpfs" in cmd and cmd[cmd.index("--tmpfs") + 1] == "/tmp"
    assert cmd[cmd.index("--ro-bind-data") - 2:cmd.index("--ro-bind-data") + 3] == [
        "--perms", "0555", "--ro-bind-data", "9", "/tmp/work/prog"]
    assert cmd[cmd.index("--dir") + 1] == "/tmp/work/dir"
    assert cmd[cmd.index("--clearenv") + 1:cmd.index("--clearenv") + 7] == [
        "--setenv", "A", "1", "--setenv", "B", "x=y"]
    assert cmd[-4:] == ["--add-seccomp-fd", "6", "--add-seccomp-fd", "7"]
    assert spec.exec_count == 2


def test_replay_command_options() -> None:
    args = build_parser().parse_args([
        "replay", "--lake", "/l", "--process", "12@n", "--inject", "fsync:+50ms",
        "--inject", "net:+20ms", "--env", "K=V", "--set-arg", "1=x", "--expect-exit", "0",
        "--format", "json"])
    assert args.inject == ["fsync:+50ms", "net:+20ms"] and args.expect_exit == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--process", "1@n", "--expect-exit", "0",
                                   "--expect-output-match"])


def test_times_are_the_one_time_grammar() -> None:
    assert parse_time("1700000000123456789", "--from") == 1700000000123456789
    assert parse_time("1700000000123ms", "--from") == 1700000000123000000
    assert parse_time("1700000000123", "--from") == 1700000000123000000  # 13 digits: ms
    assert parse_time("1700000000.5", "--from") == 1700000000500000000
    assert parse_time("2023-11-14T22:13:20Z", "--to") == 1700000000000000000
    assert parse_time("2023-11-15T03:43:20+05:30", "--to") == 1700000000000000000
    before = time.time_ns()
    assert before - 15 * 60 * 10**9 - 10**9 < (parse_time("-15m", "--from") or 0) <= before
    assert parse_time(None, "--to") is None
    # naive times are ambiguous, 11 digits are no epoch unit: refused in one line
    for bad in ("yesterday", "2023-11-14T22:13:20", "17000000001", "-5parsecs"):
        with pytest.raises(CommandError, match="^--from: "):
            parse_time(bad, "--from")


def test_fuzz_max_delay_is_a_duration_of_the_one_grammar() -> None:
    assert duration("1m30s", "--fuzz-max-delay") == 90 * 10**9
    with pytest.raises(CommandError, match="^--fuzz-max-delay: not a duration"):
        duration("200", "--fuzz-max-delay")


def test_expectations() -> None:
    base = {"mode": "exact", "process": {}, "outputs": compare_outputs({1: b"a"}, {1: b"a"})}
    ok = ReplayReport(status="completed", exit_code=0, **base)  # type: ignore[arg-type]
    assert expectation_held(ok, None, False)
    assert expectation_held(ok, 0, False) and not expectation_held(ok, 1, False)
    diverged = ReplayReport(status="diverged", exit_code=None, **base)  # type: ignore[arg-type]
    assert not expectation_held(diverged, None, False)
    assert not expectation_held(diverged, None, True)
    whatif = ReplayReport(status="completed", mode="whatif", process={}, exit_code=0,
                          outputs=compare_outputs({1: b"a"}, {1: b"b"}))
    assert expectation_held(whatif, None, False) and not expectation_held(whatif, None, True)
