"""The typed replay request, the worker's JSON contract, limits, the deny filter and the
output cap, without a kernel (no root, no sandbox)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from kprobe.replay_sandbox.errors import SpecError
from kprobe.replay_sandbox.limits import Limits
from kprobe.replay_sandbox.report import compare_outputs
from kprobe.replay_sandbox.request import FuzzSpec, ReplayRequest, parse_time
from kprobe.replay_sandbox.seccomp import (
    AUDIT_ARCH_X86_64,
    DENIED,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    build_deny_program,
    program_bytes,
    run_program,
)
from kprobe.replay_sandbox.worker import main as worker_main
from kprobe.replay_sandbox.worker import run as worker_run

EPERM = SECCOMP_RET_ERRNO | 1


def test_a_request_round_trips_through_json() -> None:
    request = ReplayRequest(
        pid=4721, node="node-a", from_ns=1, to_ns=2, injections=("fsync:+50ms",),
        set_args=((3, "1500"), (1, "")), env=(("TIMEOUT_MS", "1500"),),
        cmd=("/bin/sh", "-c", "echo hi"), mode="whatif", expect_exit=0, timeout_s=30.5,
        fuzz=FuzzSpec(runs=5, seed=7, workers=2), limits=Limits(memory=256 << 20))
    document = json.loads(json.dumps(request.to_json()))
    assert document["process"] == "4721@node-a" and "sandbox" not in document
    assert ReplayRequest.from_json(document) == request


@pytest.mark.parametrize("change", [
    {"pid": 0}, {"pid": 2**31}, {"node": "a/b"}, {"node": ""}, {"injections": ("fsync",)},
    {"set_args": ((5000, "x"),)}, {"set_args": ((1, "a\x00b"),)}, {"env": (("A=B", "1"),)},
    {"env": (("", "1"),)}, {"cmd": ()}, {"cmd": ("",)}, {"mode": "fast"},
    {"expect_exit": 256}, {"expect_exit": 1, "expect_output_match": True},
    {"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": True},
    {"from_ns": -1}, {"sandbox": "no"},
])
def test_bad_requests_are_one_line_spec_errors(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"pid": 1, "node": "n", **change}
    with pytest.raises(SpecError) as err:
        ReplayRequest(**fields)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("document", [
    None, [], {"process": "1@n", "shell": "rm -rf /"}, {"process": "abc"},
    {"process": "1@n", "timeout_s": "10"}, {"process": "1@n", "set_args": [{"index": 1}]},
    {"process": "1@n", "limits": {"memory": 0}}, {"process": "1@n", "limits": {"swap": 1}},
    {"process": "1@n", "limits": {"memory": 1 << 40}}, {"process": "1@n", "fuzz": {}},
    {"process": "1@n", "expect_output_match": 1}, {"process": "1@n", "cmd": "/bin/sh"},
])
def test_the_json_form_refuses_unknown_and_mistyped_fields(document: Any) -> None:
    with pytest.raises(SpecError):
        ReplayRequest.from_json(document)


def test_times_parse_or_refuse() -> None:
    assert parse_time("1700000000", "from") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T22:13:20Z", "to") == 1_700_000_000 * 10**9
    assert parse_time("1700000000000ms", "to") == 1_700_000_000 * 10**9
    assert parse_time("1700000000000", "to") == 1_700_000_000 * 10**9  # 13 digits: ms
    for bad in ("yesterday", "nan", "-1.5", "2023-11-14T22:13:20", "17000000001"):
        with pytest.raises(SpecError, match="^from: "):
            parse_time(bad, "from")


def test_the_worker_answers_bad_input_with_one_json_line_and_exit_2() -> None:
    for text in ("not json", json.dumps([1]), json.dumps({"lake": "/l", "request": None}),
                 json.dumps({"lake": "/l", "request": {"process": "1@n"}, "hide": ["rel"]}),
                 json.dumps({"lake": "/l", "request": {"process": "1@n"}, "extra": 1}),
                 json.dumps({"lake": "/l", "request": {"process": "1@n"},
                             "named_files": "all"})):
        out = io.StringIO()
        assert worker_main(io.StringIO(text), out) == 2
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        answer = json.loads(lines[0])
        assert answer["kind"] == "error" and "\n" not in answer["error"], answer
    code, answer = worker_run({"lake": "relative", "request": {"process": "1@n"},
                               "hide": []})
    assert code == 2 and answer["kind"] == "error"


def test_limits_are_bounded() -> None:
    assert Limits().processes == 256 and Limits().memory == 1 << 30
    assert Limits.from_json(Limits(cpu_s=10).to_json()) == Limits(cpu_s=10)
    for bad in ({"cpu_s": 0}, {"processes": 10**6}, {"output_total": True}):
        with pytest.raises(SpecError):
            Limits(**bad)


def test_the_deny_filter_refuses_the_list_and_namespace_clones_only() -> None:
    prog = build_deny_program()
    assert len(program_bytes(prog)) == 8 * len(prog) and len(prog) < 256
    for nr in DENIED:
        assert run_program(prog, nr) == EPERM, DENIED[nr]
    for nr in (0, 1, 9, 57, 59, 231, 435):  # read, write, mmap, fork, execve, exit, clone3
        assert run_program(prog, nr) == SECCOMP_RET_ALLOW, nr
    clone_thread = 0x3D0F00  # glibc's pthread_create flags
    assert run_program(prog, 56, args=(clone_thread,)) == SECCOMP_RET_ALLOW
    for flag in (0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x00000080):
        assert run_program(prog, 56, args=(17 | flag,)) == EPERM, hex(flag)
    # a foreign ABI or the x32 numbers are killed, not allowed past the list
    assert run_program(prog, 165, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS
    assert run_program(prog, 0x40000000 | 165, arch=AUDIT_ARCH_X86_64) == \
        SECCOMP_RET_KILL_PROCESS


def test_outputs_past_the_cap_are_counted_and_compared_on_the_kept_prefix() -> None:
    recorded = {1: b"a" * 100}
    [same] = compare_outputs(recorded, {1: b"a" * 10}, {1: 100})
    assert same.match and same.replayed_bytes == 100 and same.kept_bytes == 10
    [longer] = compare_outputs(recorded, {1: b"a" * 10}, {1: 400})
    assert not longer.match and longer.replayed_bytes == 400
    [other] = compare_outputs(recorded, {1: b"a" * 5 + b"b" * 5}, {1: 100})
    assert not other.match and other.first_difference == 5
    [whole] = compare_outputs(recorded, {1: b"a" * 100})
    assert whole.match and whole.kept_bytes is None


def test_hidden_paths_are_covered_where_the_sandbox_could_reach_them() -> None:
    from kprobe.replay_sandbox.sandbox import LaunchSpec, Plan, bwrap_options

    spec = LaunchSpec(exe="/bin/cat", argv=["cat"], env=[], cwd="/",
                      hidden=("/root", "/root/.profile", "/etc/hostname", "/tmp/lake",
                              "/no/such/lake"))
    opts = bwrap_options(spec, Plan(), [5])
    triples = list(zip(opts, opts[1:], opts[2:], strict=False))
    assert opts[opts.index("/root") - 1] == "--tmpfs"
    assert ("--ro-bind", "/dev/null", "/etc/hostname") in triples
    # under root's 0700 /root the uid cannot look anyway; /tmp is private already
    assert "/root/.profile" not in opts and "/tmp/lake" not in opts
    assert "/no/such/lake" not in opts
