"""``kprobe doctor`` names the cgroups a killed kprobe run left (capture_agent/doctor.py)."""

from __future__ import annotations

from pathlib import Path

from kprobe.capture_agent.doctor import check_leftovers


def test_cgroups_named_by_a_kprobe_prefix_are_reported_and_others_are_not(tmp_path: Path
                                                                         ) -> None:
    root = tmp_path / "cg"
    for name in ("kprobe-test-1a2b3c4d", "system.slice/kprobe-replay-0123456789ab",
                 "user.slice", "kprobe-agent", "system.slice/ssh.service"):
        (root / name).mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n"
                      f"tmpfs {tmp_path} tmpfs rw 0 0\n")
    check = check_leftovers(mounts)
    assert not check.ok and not check.required
    assert "2 kprobe cgroup(s)" in check.detail, check.detail
    assert "kprobe-test-1a2b3c4d" in check.detail and "kprobe-replay-" in check.detail
    assert "kprobe-agent" not in check.detail and "ssh.service" not in check.detail


def test_nothing_left_is_ok(tmp_path: Path) -> None:
    (tmp_path / "cg" / "user.slice").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {tmp_path / 'cg'} cgroup2 rw 0 0\n")
    check = check_leftovers(mounts)
    zram_in_use = any(line.split()[0].startswith("/dev/zram")
                      for line in Path("/proc/swaps").read_text().splitlines()[1:])
    assert check.ok != zram_in_use, check.detail
    assert "kprobe cgroup(s)" not in check.detail
