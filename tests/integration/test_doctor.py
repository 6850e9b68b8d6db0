"""`capture_agent.doctor.run_checks()` on the real kernel (root)."""

from __future__ import annotations

from kprobe.capture_agent.doctor import run_checks
from kprobe.capture_agent.families import FAMILIES
from kprobe.capture_agent.sensor import object_path
from tests.support import require, require_root


def test_every_required_check_passes_and_each_attach_point_is_reported() -> None:
    require_root()
    for family in FAMILIES.values():
        require(object_path(family.object_file).exists(), "compiled BPF objects (make bpf)")
    # WHEN the doctor runs
    checks = run_checks()
    # THEN every required prerequisite holds on this host
    failed = [c for c in checks if c.required and not c.ok]
    assert failed == []
    # and each program's attach point was tried on its own
    names = {c.name for c in checks}
    assert {"attach tp_btf/sched_switch", "attach tp_btf/sched_waking"} <= names
    assert all(c.detail for c in checks)
