"""A replay is not a way out (issue 14, item 1): attacks from inside a real sandboxed replay.

Module fixture (root): the agent records ``python3 -c …`` (``kprobe run --payloads``); each
test then replays it as a what-if whose changed command line is the attack, through
``kprobe replay --set-arg`` or the replay worker (``python -P -m kprobe.replay_sandbox.worker``,
what ``kprobe serve`` runs), and checks on the host that the attack was contained: the
file it tried to write does not exist, the syscall it needed failed with EPERM, the
process or memory limit stopped it, the tracer's memory stayed flat. Each attack also
proves it ran (it prints what it saw), so a test cannot pass because nothing happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kprobe.lake import LakeSettings, connect, resolve
from kprobe.replay_sandbox.sandbox import HOST_UID
from kprobe.replay_sandbox.seccomp import DENIED
from tests.support import REPO, require_binary, require_root

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
WORKER = [sys.executable, "-P", "-m", "kprobe.replay_sandbox.worker"]
PYTHON = "/usr/bin/python3"
RECORDED = "print('recorded by the agent')"
PROBE_FILE = Path("/var/tmp/probe")  # the reproduction wrote exactly this file
MiB = 1 << 20
pytestmark = pytest.mark.timeout(600)


@dataclass
class Recorded:
    lake: Path
    process: str  # PID@NODE of the recorded python3 -c


def _kprobe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO)


@pytest.fixture(scope="module", name="recorded")
def recorded_fixture(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A real recording: the agent records ``python3 -c`` with payloads."""
    require_root()
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("replay-security")
    lake = tmp / "lake"
    run = _kprobe("run", "--payloads", "--payload-cap", "1M", "--lake", str(lake),
                  "--spool-dir", str(tmp / "spool"), "--no-otlp", "--no-metrics", "--",
                  PYTHON, "-c", RECORDED)
    assert run.returncode == 0, run.stderr
    con = connect(resolve(LakeSettings(lake=str(lake))))
    execs = con.execute("""SELECT pid, node, data FROM syscall_data
                           WHERE nr = 59 AND arg_index = 1 ORDER BY ts_ns DESC""").fetchall()
    found = [(pid, node) for pid, node, argv in execs
             if RECORDED.encode() in bytes(argv).split(b"\0")]
    assert found, "the agent recorded no exec of the program"
    return Recorded(lake, f"{found[0][0]}@{found[0][1]}")


@pytest.fixture(name="no_probe_file")
def no_probe_file_fixture() -> Iterator[None]:
    """The host file the attacks write must not exist before, and must not after."""
    assert not PROBE_FILE.exists(), f"{PROBE_FILE} exists before the test: an earlier escape?"
    before = set(os.listdir("/var/tmp"))
    yield
    assert not PROBE_FILE.exists(), f"the attack wrote {PROBE_FILE} on the host"
    # (root-owned files of unrelated tests may come and go: any file named like the probe,
    # or owned by the sandbox's uids, is the attack's)
    appeared = [name for name in set(os.listdir("/var/tmp")) - before
                if "probe" in name or os.lstat(f"/var/tmp/{name}").st_uid in (HOST_UID, 65534)]
    assert not appeared, f"files appeared in /var/tmp during the attack: {appeared}"


def replay_cli(recorded: Recorded, code: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """``kprobe replay --set-arg 2=CODE`` (argv[1] stays ``-c``) as a user runs it."""
    proc = _kprobe("replay", "--lake", str(recorded.lake), "--process", recorded.process,
                   "--format", "json", "--set-arg", "1=-c", "--set-arg", f"2={code}", *extra)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def replay_worker(recorded: Recorded, code: str, timeout_s: float = 60,
                  **limits: int) -> tuple[int, dict[str, Any]]:
    """The replay worker, fed the typed request as JSON (what ``kprobe serve`` does)."""
    document = {"lake": str(recorded.lake), "named_files": "public", "request": {
        "process": recorded.process, "timeout_s": timeout_s, "limits": limits,
        "set_args": [{"index": 1, "value": "-c"}, {"index": 2, "value": code}]}}
    proc = subprocess.run(WORKER, input=json.dumps(document), capture_output=True, text=True,
                          timeout=timeout_s + 120, check=False, cwd=REPO)
    assert proc.stdout, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["kind"] == "replay", answer
    return proc.returncode, answer["report"]


def stdout_of(report: dict[str, Any]) -> str:
    return str(report["replayed_text"].get("1", ""))


def assert_cleaned_up(report: dict[str, Any], deadline_s: float = 10) -> None:
    """The replay's cgroups are removed and no process of it is left: none runs as the
    sandbox's host uid with the recorded program's argv (other replays may be running)."""
    assert report["sandbox"]["host_uid"] == HOST_UID, report["sandbox"]
    groups = [Path(p) for p in report["sandbox"]["cgroups"]]
    assert groups, "the host has cgroups: the replay must have used them"
    deadline = time.monotonic() + deadline_s
    while True:
        left = [str(g) for g in groups if g.exists()] + _processes_of(report)
        if not left:
            return
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.1)


def _processes_of(report: dict[str, Any]) -> list[str]:
    marker = "\0".join(report["process"]["argv"][1:]).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != HOST_UID:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(f"pid {pid}")
        except OSError:
            pass
    return found


# -- the reproduction, through kprobe replay --set-arg ------------------------------
def test_set_arg_remount_attack_through_kprobe_replay_writes_nothing(
        recorded: Recorded, no_probe_file: None) -> None:
    # GIVEN the set_args attack on the recorded python3 -c, which reports its outcome
    code = ("import os; status = os.system('mount -o remount,rw,bind / ; touch /var/tmp/probe')"
            "; print('attack ran, shell status', status)")
    # WHEN replayed as the CLI user does
    exit_code, report = replay_cli(recorded, code)
    # THEN it ran (the shell and its children started) and failed: no file on the host
    assert report["mode"] == "whatif" and report["status"] == "completed", report
    assert "attack ran, shell status" in stdout_of(report), report
    assert not stdout_of(report).strip().endswith("status 0"), stdout_of(report)
    assert exit_code == 0  # the what-if ran to its end (the default expectation)
    assert_cleaned_up(report)


def test_the_program_has_no_privilege_and_mount_is_refused(recorded: Recorded,
                                                           no_probe_file: None) -> None:
    # GIVEN a program that reads its own credentials and calls mount(2) and open(2) itself
    code = r"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
mount = libc.mount(b'none', b'/', None, 0x20 | 0x1000, None)  # MS_REMOUNT | MS_BIND
mount_errno = ctypes.get_errno()
try:
    open('/var/tmp/probe', 'w')
    opened = 'written'
except OSError as err:
    opened = errno.errorcode[err.errno]
print(json.dumps({k: status[k].split() for k in ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff',
                  'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp', 'Seccomp_filters')} | {
    'uid_map': open('/proc/self/uid_map').read().split(),
    'mount': [mount, errno.errorcode.get(mount_errno)], 'open': opened}))
"""
    # WHEN replayed through the worker THEN it is nobody, maps to the unprivileged host uid,
    # holds no capability, and mount and the write are refused
    _, report = replay_worker(recorded, code)
    seen = json.loads(stdout_of(report))
    assert seen["Uid"] == ["65534"] * 4 and seen["Gid"] == ["65534"] * 4, seen
    assert seen["uid_map"] == ["65534", str(HOST_UID), "1"] or \
        seen["uid_map"][3:] == ["65534", str(HOST_UID), "1"], seen
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert seen[caps] == ["0000000000000000"], seen
    assert seen["NoNewPrivs"] == ["1"] and seen["Seccomp"] == ["2"], seen
    assert seen["Seccomp_filters"] == ["2"], seen  # the tracer's and the deny filter
    assert seen["mount"] == [-1, "EPERM"] and seen["open"] == "EROFS", seen
    assert_cleaned_up(report)


# -- the deny filter ------------------------------------------------------------------------
# Each denied call with arguments that are harmless if it runs (a no-op, a bad descriptor, a
# pid that does not exist): outside the sandbox most give another answer than EPERM.
PROBE = r"""
import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    result = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if result == 0 and nr in (56,):
        os._exit(0)  # a clone that went through: the child leaves at once
    return 'ok' if result >= 0 else errno.errorcode.get(ctypes.get_errno(), 'E?')
buf = ctypes.create_string_buffer(4096)
root = ctypes.create_string_buffer(b'/')
empty = ctypes.create_string_buffer(b'')
at, pid = ctypes.addressof(buf), os.getpid()
r, e = ctypes.addressof(root), ctypes.addressof(empty)
calls = {
    'mount': (165, 0, 0, 0, 0, 0), 'umount2': (166, r, 0), 'pivot_root': (155, 0, 0),
    'chroot': (161, r), 'unshare': (272, 0), 'setns': (308, -1, 0),
    'open_tree': (428, -1, e, 0), 'move_mount': (429, -1, e, -1, e, 0), 'fsopen': (430, e, 0),
    'fsconfig': (431, -1, 0, 0, 0, 0), 'fsmount': (432, -1, 0, 0), 'fspick': (433, -1, e, 0),
    'mount_setattr': (442, -1, e, 0, 0, 0),
    'bpf': (321, -1, 0, 0), 'perf_event_open': (298, 0, 0, -1, -1, 0),
    'kexec_load': (246, 0, 0, 0, 0), 'kexec_file_load': (320, -1, -1, 0, 0, 0),
    'init_module': (175, 0, 0, 0), 'finit_module': (313, -1, 0, 0),
    'delete_module': (176, e, 0), 'create_module': (174, 0, 0),
    'ptrace': (101, 2, 0x7ffffff0, 0, 0), 'process_vm_readv': (310, pid, 0, 0, 0, 0, 0),
    'process_vm_writev': (311, pid, 0, 0, 0, 0, 0), 'pidfd_getfd': (438, -1, 0, 0),
    'kcmp': (312, pid, pid, 1, 0, 0),
    'keyctl': (250, 0, -4, 0), 'add_key': (248, 0, 0, 0, 0, 0), 'request_key': (249, 0, 0, 0, 0),
    'open_by_handle_at': (304, -1, 0, 0), 'name_to_handle_at': (303, -100, r, at, at + 2048, 0),
    'userfaultfd': (323, 1), 'iopl': (172, 0), 'ioperm': (173, 0, 0, 0),
    'io_uring_setup': (425, 0, at), 'io_uring_enter': (426, -1, 0, 0, 0, 0, 0),
    'io_uring_register': (427, -1, 0, 0, 0),
    'swapon': (167, 0, 0), 'swapoff': (168, 0), 'reboot': (169, 0, 0, 0, 0),
    'syslog': (103, 10, 0, 0), 'acct': (163, 0), 'settimeofday': (164, 0, 0),
    'clock_settime': (227, 0, 0), 'sethostname': (170, 0, 0), 'setdomainname': (171, 0, 0),
    'quotactl': (179, 0, 0, 0, 0), 'quotactl_fd': (443, -1, 0, 0, 0),
    'lookup_dcookie': (212, 0, 0, 0), 'vhangup': (153,), 'fanotify_init': (300, 0, 0),
    'uselib': (134, 0), '_sysctl': (156, 0), 'nfsservctl': (180, 0, 0, 0),
}
out = {name: call(*spec) for name, spec in calls.items()}
if os.getuid() == 65534:  # inside only: outside, a clone that works would fork
    out['clone with CLONE_NEWUSER'] = call(56, 0x10000000 | 17, 0, 0, 0, 0)
    clone3 = ctypes.create_string_buffer(struct.pack('<8Q', 0x10000000, 0, 0, 0, 17, 0, 0, 0))
    out['clone3 with CLONE_NEWUSER'] = call(435, ctypes.addressof(clone3), 64)
print(json.dumps(out))
"""


def _as_sandbox_uid() -> None:
    os.setgroups([])
    os.setresgid(HOST_UID, HOST_UID, HOST_UID)
    os.setresuid(HOST_UID, HOST_UID, HOST_UID)


def _probe_outside_as_the_sandbox_uid() -> dict[str, str]:
    """The control: the same calls by the same host uid, without the deny filter."""
    proc = subprocess.run([PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          check=True, preexec_fn=_as_sandbox_uid, cwd="/")
    return dict(json.loads(proc.stdout))


def test_each_denied_syscall_fails_with_eperm_inside(recorded: Recorded) -> None:
    # GIVEN the probe, replayed in the sandbox
    _, report = replay_worker(recorded, PROBE)
    inside = json.loads(stdout_of(report))
    # THEN every call of the deny list is refused with EPERM (the probe covers the list)
    assert {n for n in inside if not n.startswith("clone")} == set(DENIED.values())
    assert {k: v for k, v in inside.items() if v != "EPERM" and not k.startswith("clone3")} \
        == {}, inside
    # AND a new user namespace through clone3 (flags in memory, out of a filter's reach) is
    # refused by the sandbox's user namespace limit
    assert inside["clone3 with CLONE_NEWUSER"] == "ENOSPC", inside
    # AND it is the filter that refuses: the same uid outside gets other answers for many
    outside = _probe_outside_as_the_sandbox_uid()
    changed = sorted(name for name, result in outside.items() if result != "EPERM")
    for name in ("unshare", "setns", "ptrace", "process_vm_readv", "kcmp", "keyctl",
                 "io_uring_setup", "name_to_handle_at"):
        assert name in changed, (name, outside)
    assert_cleaned_up(report)


# -- limits ---------------------------------------------------------------------------------
def _peak_pids_while(proc: subprocess.Popen[str]) -> int:
    """The most tasks any replay pids cgroup held while ``proc`` ran (sampled)."""
    peak = 0
    root = Path("/sys/fs/cgroup/pids")
    while proc.poll() is None:
        for group in root.glob("kprobe-replay-*"):
            try:
                peak = max(peak, int((group / "pids.current").read_text()))
            except (OSError, ValueError):
                pass
        time.sleep(0.02)
    return peak


def test_a_fork_bomb_stops_at_the_process_limit(recorded: Recorded) -> None:
    require_binary("bwrap")
    bomb = ("import os, time\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        time.sleep(0.05)\n")
    document = {"lake": str(recorded.lake), "request": {
        "process": recorded.process, "timeout_s": 8, "limits": {"processes": 32},
        "set_args": [{"index": 1, "value": "-c"}, {"index": 2, "value": bomb}]}}
    # WHEN the bomb is replayed with a limit of 32 processes
    proc = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(document))
    proc.stdin.close()
    peak = _peak_pids_while(proc)
    assert proc.stdout is not None
    answer = json.loads(proc.stdout.read())
    proc.wait()
    report = answer["report"]
    # THEN the kernel refused forks past the limit (pids.max = 32 + bwrap's 4), the replay
    # ended at its deadline, and nothing of it is left on the host
    assert report["stats"]["pids_limit_hits"] > 0, report["stats"]
    assert 8 <= peak <= 36, peak
    assert report["status"] == "timeout", report["status"]
    assert any("process limit (32)" in note for note in report["notes"]), report["notes"]
    assert_cleaned_up(report)


def test_a_memory_hog_is_killed_at_the_memory_limit(recorded: Recorded) -> None:
    hog = "x = []\nwhile True:\n    x.append(b'm' * (32 << 20))\n    print(len(x), flush=True)\n"
    # WHEN replayed with a 256 MiB memory limit
    _, report = replay_worker(recorded, hog, memory=256 * MiB)
    # THEN the kernel kills it inside its cgroup near the limit
    assert report["exit_signal"] == 9, report
    assert report["stats"]["oom_kills"] >= 1, report["stats"]
    assert report["stats"]["memory_peak_bytes"] <= 257 * MiB, report["stats"]
    printed = [int(n) for n in stdout_of(report).split()]
    assert printed and max(printed) >= 4 and 32 * max(printed) < 256, printed  # near, no more
    assert any("memory limit (256 MiB)" in note for note in report["notes"]), report["notes"]
    assert_cleaned_up(report)


def test_the_address_space_limit_holds_without_the_cgroup(recorded: Recorded) -> None:
    # GIVEN an allocation above RLIMIT_AS (which does not depend on a cgroup)
    code = ("import resource\ntry:\n    b = b'a' * (1 << 30)\n    print('allocated')\n"
            "except MemoryError:\n    print('MemoryError', resource.getrlimit(resource.RLIMIT_AS))")
    _, report = replay_worker(recorded, code, address_space=512 * MiB)
    assert stdout_of(report).strip() == f"MemoryError ({512 * MiB}, {512 * MiB})", report
    assert_cleaned_up(report)


def test_400_mb_of_output_do_not_grow_the_tracer(recorded: Recorded) -> None:
    # GIVEN programs that write 400 MiB and 1 MiB to stdout, 1 MiB per write
    writer = "import sys\nchunk = b'o' * (1 << 20)\nfor _ in range({n}):\n    " \
             "sys.stdout.buffer.write(chunk)\n"
    # WHEN both are replayed by kprobe replay (its process is the tracer)
    _, small = replay_cli(recorded, writer.format(n=1))
    _, big = replay_cli(recorded, writer.format(n=400))
    # THEN all 400 MiB were counted, 16 MiB kept, and the tracer's peak memory did not grow
    # with them (it held at most the cap)
    out = next(o for o in big["outputs"] if o["fd"] == 1)
    assert out["replayed_bytes"] == 400 * MiB and out["kept_bytes"] == 16 * MiB, out
    assert any("over the cap" in note for note in big["notes"]), big["notes"]
    grown = big["stats"]["tracer_max_rss_mb"] - small["stats"]["tracer_max_rss_mb"]
    assert grown < 64, (small["stats"]["tracer_max_rss_mb"], big["stats"]["tracer_max_rss_mb"])
    assert big["status"] == "completed" and big["exit_code"] == 0, big
    assert_cleaned_up(big)


def test_the_lake_is_not_visible_from_a_replay(recorded: Recorded) -> None:
    # GIVEN a local lake outside /tmp (the payloads of every recorded program are in it)
    lake = Path("/var/lib/kprobe-replay-test-lake")
    shutil.rmtree(lake, ignore_errors=True)  # a run killed midway left it
    shutil.copytree(recorded.lake, lake)
    try:
        os.chmod(lake, 0o755)
        code = f"import os; print(sorted(os.listdir({str(lake)!r})))"
        document = {"lake": str(lake), "request": {
            "process": recorded.process,
            "set_args": [{"index": 1, "value": "-c"}, {"index": 2, "value": code}]}}
        proc = subprocess.run(WORKER, input=json.dumps(document), capture_output=True,
                              text=True, timeout=180, check=False, cwd=REPO)
        report = json.loads(proc.stdout)["report"]
        # THEN the program sees an empty directory where the lake is, while the same uid
        # lists the tables outside the sandbox (the sandbox hides it; permissions do not)
        assert stdout_of(report).strip() == "[]", report
        control = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                                 check=True, preexec_fn=_as_sandbox_uid, cwd="/")
        assert "v1" in control.stdout, control
    finally:
        shutil.rmtree(lake)
    assert_cleaned_up(report)
