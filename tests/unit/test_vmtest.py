"""The kernel matrix's pure parts (tests/vmtest): which Debian kernel packages it picks, the
result protocol between guest and host, the lines it prints, and the initramfs archive."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from tests.vmtest import guest, qemu
from tests.vmtest.errors import NoQemuError, VmtestError
from tests.vmtest.initramfs import CpioWriter
from tests.vmtest.kernels import newest_per_line, parse_package
from tests.vmtest.qemu import (
    VmSpec,
    clock_args,
    find_qemu,
    lockup_summary,
    qemu_command,
    tsc_khz_from_cpuinfo,
    tsc_khz_from_kernel_log,
)
from tests.vmtest.results import (
    MARK,
    StepResult,
    decode_all,
    encode,
    judge,
    kernel_line,
    summary_line,
)

APT_NAMES = [
    "linux-image-6.1.0-47-cloud-amd64-unsigned",
    "linux-image-6.1.0-9-cloud-amd64-unsigned",  # 9 < 47: numbers, not text, are compared
    "linux-image-6.1.0-57-cloud-amd64-unsigned",
    "linux-image-6.12.107+deb12-cloud-amd64-unsigned",
    "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
    "linux-image-6.12.99+deb12-cloud-amd64-unsigned",
    "linux-image-6.1.0-99-cloud-amd64",  # signed: no
    "linux-image-6.1.0-99-amd64-unsigned",  # not the cloud flavour
    "linux-image-6.1.0-99-cloud-arm64-unsigned",  # another architecture
    "linux-image-6.10.5-cloud-amd64-unsigned",  # another line
]


def test_the_newest_cloud_package_of_each_line_is_chosen() -> None:
    chosen = newest_per_line(APT_NAMES, ("6.1", "6.12"))
    assert chosen["6.1"].name == "linux-image-6.1.0-57-cloud-amd64-unsigned"
    assert chosen["6.1"].release == "6.1.0-57-cloud-amd64"
    assert chosen["6.12"].name == "linux-image-6.12.118+deb12-cloud-amd64-unsigned"
    assert chosen["6.12"].release == "6.12.118+deb12-cloud-amd64"
    assert list(chosen) == ["6.1", "6.12"]


def test_other_flavours_and_architectures_are_not_packages_of_the_matrix() -> None:
    assert parse_package("linux-image-6.1.0-99-cloud-amd64") is None
    assert parse_package("linux-image-6.1.0-99-amd64-unsigned") is None
    assert parse_package("linux-image-6.1.0-99-cloud-arm64-unsigned") is None
    assert parse_package("linux-image-cloud-amd64") is None  # the meta package


def test_a_line_without_a_package_is_an_error_naming_it() -> None:
    with pytest.raises(VmtestError, match="6.8"):
        newest_per_line(APT_NAMES, ("6.1", "6.8"))


def test_results_round_trip_and_noise_around_them_is_ignored() -> None:
    step = StepResult("doctor", ok=False, seconds=32.8, reason="net sensor: ESRCH",
                      failures=("net sensor: ESRCH", 'block "x": ESRCH'))
    text = "\n".join(["[   3.1] random kernel line", encode(step),
                      MARK + '{"step": "tests", "ok": tr',  # cut by a dying guest
                      "garbage " + encode(StepResult("tests", ok=True, seconds=1.0))])
    assert decode_all(text) == [step, StepResult("tests", ok=True, seconds=1.0)]
    assert "\n" not in encode(StepResult("x", ok=False, reason="a\nb"))


def _all_ok() -> list[StepResult]:
    return [StepResult("begin", ok=True, release="6.1.0-57-cloud-amd64"),
            StepResult("doctor", ok=True), StepResult("tests", ok=True),
            StepResult("record-replay", ok=True)]


def test_a_kernel_passes_only_with_every_step_reported_ok() -> None:
    assert judge("6.1.0-57-cloud-amd64", "tcg", 300.0, _all_ok()).ok
    # GIVEN a guest that died after the doctor (no result for tests)
    outcome = judge("6.1.0-57-cloud-amd64", "tcg", 900.0, _all_ok()[:2],
                    stopped="killed at the 900 s deadline")
    assert not outcome.ok
    assert outcome.reason == "no result for tests (killed at the 900 s deadline)"
    # GIVEN a guest that never reported at all
    assert not judge("6.12.118+deb12-cloud-amd64", "tcg", 4.0, []).ok


def test_a_guest_whose_clock_ran_fast_fails_even_if_every_step_passed() -> None:
    # GIVEN steps that took 945 s by the guest's clock, in a guest that ran 326 s
    steps = [StepResult("begin", ok=True), StepResult("doctor", ok=True, seconds=138.1),
             StepResult("tests", ok=True, seconds=679.5),
             StepResult("record-replay", ok=True, seconds=127.5)]
    outcome = judge("6.12.118+deb12-cloud-amd64", "tcg", 326.4, steps)
    assert not outcome.ok and "clock ran 2.9x fast" in outcome.reason
    # control: the same steps in a guest that ran longer than they add up to
    assert judge("6.12.118+deb12-cloud-amd64", "tcg", 960.0, steps).ok


def test_the_reason_is_the_first_failing_step_and_every_failure_is_kept() -> None:
    steps = _all_ok()
    steps[1] = StepResult("doctor", ok=False, reason="net sensor: ESRCH",
                          failures=("net sensor: ESRCH", "block sensor: ESRCH"))
    steps[2] = StepResult("tests", ok=False, reason="FAILED t1", failures=("FAILED t1",))
    outcome = judge("6.1.0-57-cloud-amd64", "tcg", 600.0, steps)
    assert outcome.reason == "doctor: net sensor: ESRCH"
    assert outcome.failures == ("doctor: net sensor: ESRCH", "doctor: block sensor: ESRCH",
                                "tests: FAILED t1")


def test_one_line_per_kernel_and_the_closing_line() -> None:
    passed = judge("6.1.0-57-cloud-amd64", "tcg", 312.44, _all_ok())
    native = judge("6.18.44", "native", 40.0, _all_ok()[1:])
    assert kernel_line(passed).split() == ["vmtest:", "6.1.0-57-cloud-amd64", "tcg", "pass",
                                           "312.4", "s"]
    assert summary_line([native, passed]) == \
        "vmtest: 2 kernels passed: 6.18.44, 6.1.0-57-cloud-amd64"
    failed = judge("6.12.118+deb12-cloud-amd64", "tcg", 500.0,
                   [StepResult("doctor", ok=False, reason="x\ny")])
    assert kernel_line(failed).endswith("FAIL   500.0 s  doctor: x y")
    assert summary_line([native, failed, passed]) == \
        "vmtest: 1 of 3 kernels failed: 6.12.118+deb12-cloud-amd64 (doctor: x y)"


def test_doctor_failures_are_the_required_checks_that_failed() -> None:
    checks = [{"name": "kernel BTF", "ok": True, "required": True, "detail": "ok"},
              {"name": "attach kind kprobe", "ok": False, "required": False, "detail": "n"},
              {"name": "net sensor", "ok": False, "required": True, "detail": "ESRCH"}]
    assert guest.doctor_failures(checks) == ["net sensor: ESRCH"]


def test_pytest_failures_and_counts_come_from_its_summary() -> None:
    output = "\n".join([
        "..F.E", "=== short test summary info ===",
        "FAILED tests/integration/test_bpf_net.py::test_x - AssertionError: boom",
        "ERROR tests/integration/test_bpf_block.py::test_y - OSError",
        "SKIPPED [1] tests/integration/test_bpf_net.py:215: missing: IPv6",
        "=== 1 failed, 3 passed, 1 error in 490.47s (0:08:10) ==="])
    assert guest.pytest_failures(output) == [
        "FAILED tests/integration/test_bpf_net.py::test_x - AssertionError: boom",
        "ERROR tests/integration/test_bpf_block.py::test_y - OSError"]
    assert guest.pytest_counts(output) == "1 failed, 3 passed, 1 error in 490.47s (0:08:10)"


def _report(**fields: object) -> str:
    base: dict[str, object] = {"status": "completed", "outputs_match": True,
                               "replayed_text": {"1": guest.EXPECTED_ROWS}}
    return json.dumps({**base, **fields})


def test_only_a_completed_identical_replay_passes() -> None:
    assert guest.replay_problem(0, _report(), "") == ""
    diverged = _report(status="diverged", divergence={"reason": "openat path differs"})
    assert guest.replay_problem(1, diverged, "") == "replay diverged: openat path differs"
    assert "outputs differ" in guest.replay_problem(0, _report(outputs_match=False), "")
    assert "replayed stdout" in guest.replay_problem(
        0, _report(replayed_text={"1": "PAY-1|50000\n"}), "")
    assert "no report" in guest.replay_problem(2, "", "kprobe replay: no such process")


def test_the_cpio_archive_is_newc_with_aligned_entries_and_a_trailer() -> None:
    archive = CpioWriter()
    archive.directory("bin")
    archive.device("dev/console", major=5, minor=1)
    archive.file("init", b"#!/bin/sh\n", mode=0o755)
    data = archive.finish()
    entries = []
    stream = io.BytesIO(data)
    while True:
        header = stream.read(110)
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev_major, rdev_minor, namesize = (fields[1], fields[6], fields[9],
                                                        fields[10], fields[11])
        name = stream.read(namesize)[:-1].decode()
        stream.read(-(110 + namesize) % 4)
        body = stream.read(size)
        stream.read(-size % 4)
        entries.append((name, mode, body, (rdev_major, rdev_minor)))
        if name == "TRAILER!!!":
            break
    assert stream.read() == b""
    assert [e[0] for e in entries] == ["bin", "dev/console", "init", "TRAILER!!!"]
    assert stat.S_ISDIR(entries[0][1]) and stat.S_ISCHR(entries[1][1])
    assert entries[1][3] == (5, 1)
    assert entries[2][2] == b"#!/bin/sh\n" and stat.S_IMODE(entries[2][1]) == 0o755


def test_the_guest_has_no_network_device_and_shares_the_root_only_when_asked() -> None:
    spec = VmSpec(accel="tcg", cpus=2, memory_mib=2048)
    command = qemu_command("qemu", spec, Path("/k"), Path("/i"), Path("/r"),
                           root_socket=Path("/s"), scratch=Path("/d"))
    assert "-nodefaults" in command and "-netdev" not in command and "-nic" not in command
    assert "tcg,thread=multi" in command
    # under emulation, without the host's TSC rate the guest keeps time by the HPET
    assert "clocksource=hpet" in command[command.index("-append") + 1]
    assert "memory-backend-memfd,id=mem,size=2048M,share=on" in command
    probe = qemu_command("qemu", VmSpec(accel="kvm", cpus=1, memory_mib=256), Path("/k"),
                         Path("/i"), Path("/dev/null"))
    assert "vhost-user-fs-pci,chardev=root,tag=hostroot" not in probe and "kvm" in probe
    assert "clocksource" not in probe[probe.index("-append") + 1]


def test_a_missing_qemu_is_an_error_saying_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(NoQemuError, match="apt-get install qemu-system-x86"):
        find_qemu([str(tmp_path)])
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_qemu([str(tmp_path)]) == str(fake)


def test_an_emulated_guest_is_told_the_hosts_tsc_rate_instead_of_measuring_it() -> None:
    log = "\n".join(["[    0.000054] tsc: Detected 2793.436 MHz processor",
                     "[    0.343227] clocksource: tsc: mask: 0xffffffffffffffff",
                     "[    1.100000] tsc: Refined TSC clocksource calibration: 2793.438 MHz"])
    assert tsc_khz_from_kernel_log(log) == 2793438  # the refined value, the kernel's last
    assert tsc_khz_from_kernel_log(log.splitlines()[0]) == 2793436
    assert tsc_khz_from_kernel_log("[    0.1] clocksource: Switched to clocksource tsc") is None
    cpuinfo = "flags\t\t: fpu tsc constant_tsc tsc_known_freq\ncpu MHz\t\t: 2793.436\n"
    assert tsc_khz_from_cpuinfo(cpuinfo) == 2793436
    # without tsc_known_freq "cpu MHz" may be the core's current clock, not the TSC's
    assert tsc_khz_from_cpuinfo(cpuinfo.replace(" tsc_known_freq", "")) is None
    spec = VmSpec(accel="tcg", cpus=2, memory_mib=2048, tsc_khz=2793436)
    assert clock_args(spec) == "no_timer_check tsc=reliable tsc_early_khz=2793436"
    assert clock_args(VmSpec(accel="kvm", cpus=2, memory_mib=2048, tsc_khz=2793436)) == ""


def test_a_clone_or_cache_under_tmp_is_refused_in_one_line() -> None:
    """The guests mount their own /tmp: a virtualenv there would vanish in them."""
    from tests.vmtest.__main__ import _check_visible_in_guests
    _check_visible_in_guests(Path("/srv/kprobe/.venv/bin/python"), Path("/var/cache/k"))
    for python, cache in ((Path("/tmp/clone/.venv/bin/python"), Path("/var/cache/k")),
                          (Path("/srv/kprobe/.venv/bin/python"), Path("/tmp/cache"))):
        with pytest.raises(VmtestError, match="under /tmp") as err:
            _check_visible_in_guests(python, cache)
        assert "\n" not in str(err.value)


# a 6.1 guest's console at a soft lockup (softlockup_all_cpu_backtrace=1): the stuck CPU's
# registers and stack, then the other CPU's, by NMI
LOCKUP_CONSOLE = """\
[  192.491352] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [python:212]
[  192.491400] Modules linked in: virtiofs fuse
[  192.491500] CPU: 0 PID: 212 Comm: python Not tainted 6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[  192.491600] RIP: 0010:native_queued_spin_lock_slowpath+0x5b/0x2b0
[  192.491650] Code: 6d f0 0f ba 2f 08 0f 92 c0 0f b6 c0 c1 e0 08 89 c2 8b 07 30 e4 09 d0
[  192.491700] RSP: 0018:ffffb4d1c0003e48 EFLAGS: 00000202
[  192.491750] RAX: 0000000000000001 RBX: ffff9f0a41c2a000 RCX: 0000000000000000
[  192.491800] Call Trace:
[  192.491850]  <TASK>
[  192.491900]  _raw_spin_lock_irqsave+0x39/0x50
[  192.491950]  ? htab_lock_bucket+0x20/0x40
[  192.492000]  htab_map_update_elem+0x1b1/0x3c0
[  192.492050]  bpf_prog_1234abcd_on_switch+0x123/0x1000
[  192.492100]  __bpf_trace_sched_switch+0x10/0x20
[  192.492150]  __schedule+0x2c5/0x8d0
[  192.492200]  schedule+0x5d/0xe0
[  192.492300] NMI backtrace for cpu 1
[  192.492400] RIP: 0010:smp_call_function_many_cond+0x12d/0x350
[  192.492500] Call Trace:
[  192.492600]  on_each_cpu_cond_mask+0x1d/0x30
[  192.492700]  flush_tlb_mm_range+0x100/0x150
""".splitlines()


def test_a_soft_lockup_is_summed_up_with_where_each_cpu_spun() -> None:
    said = lockup_summary(["boot noise", *LOCKUP_CONSOLE])
    assert said == (
        "soft lockup of CPU#0 in task python:212: native_queued_spin_lock_slowpath+0x5b/0x2b0"
        " < _raw_spin_lock_irqsave+0x39/0x50 < htab_lock_bucket+0x20/0x40"
        " < htab_map_update_elem+0x1b1/0x3c0 < bpf_prog_1234abcd_on_switch+0x123/0x1000"
        " < __bpf_trace_sched_switch+0x10/0x20; smp_call_function_many_cond+0x12d/0x350"
        " < on_each_cpu_cond_mask+0x1d/0x30 < flush_tlb_mm_range+0x100/0x150")
    assert lockup_summary(["[ 1.0] nothing of the kind"]) == ""


def test_a_guest_stuck_in_a_lockup_is_stopped_long_before_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "LOCKUP_GRACE_S", 0.2)
    console = [line.replace("stuck for 23s", "stuck for 130s") for line in LOCKUP_CONSOLE]
    script = "printf '%s\\n' \"$@\"; exec sleep 60"  # a console, then a guest that never ends
    log = io.StringIO()
    run = qemu.run_vm(["sh", "-c", script, "sh", *console], log, deadline_s=30)
    assert run.seconds < 20 and run.exit_code is None, run
    assert run.lockup.startswith("soft lockup of CPU#0 in task python:212: "
                                 "native_queued_spin_lock_slowpath"), run.lockup
    # control: 23 s stuck (a starved emulated vCPU can recover) is not given up on
    short = qemu.run_vm(["sh", "-c", "printf '%s\\n' \"$@\"", "sh", *LOCKUP_CONSOLE], log, 30)
    assert short.exit_code == 0 and short.lockup == "", short


def test_a_guest_that_panics_says_the_kernels_words_not_just_that_it_stopped() -> None:
    # panic=-1 and -no-reboot: a panicking guest ends QEMU with exit 0, like a power-off
    console = ["[  200.1] random: crng init done",
               "[  201.5] BUG: kernel NULL pointer dereference, address: 0000000000000008",
               "[  201.6] Oops: 0000 [#1] PREEMPT SMP NOPTI",
               "[  201.9] Kernel panic - not syncing: Fatal exception"]
    run = qemu.run_vm(["sh", "-c", "printf '%s\\n' \"$@\"", "sh", *console], io.StringIO(), 30)
    assert run.exit_code == 0
    assert run.crash == ("BUG: kernel NULL pointer dereference, address: 0000000000000008; "
                         "Oops: 0000 [#1] PREEMPT SMP NOPTI; "
                         "Kernel panic - not syncing: Fatal exception"), run.crash
    # control: a clean power-off names no crash
    calm = qemu.run_vm(["sh", "-c", "printf '%s\\n' \"$@\"", "sh", *console[:1],
                        "vmtest guest: checks done (exit 0), powering off"], io.StringIO(), 30)
    assert calm.exit_code == 0 and calm.crash == "", calm


def test_a_kernel_line_carries_its_note_whatever_the_outcome() -> None:
    from tests.vmtest.results import KernelOutcome, kernel_line
    passed = KernelOutcome("6.12.118", "tcg", True, 290.0,
                           note="the first boot's kernel crashed: Oops: int3")
    assert kernel_line(passed).endswith("pass   290.0 s  [the first boot's kernel crashed: "
                                        "Oops: int3]")
    assert "[" not in kernel_line(KernelOutcome("6.1.0", "tcg", True, 280.0))
