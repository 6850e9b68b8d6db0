"""This kernel's verifier agrees: every program fits with margin, and a failing one says why.

tests/unit/test_bpf_budget.py checks the stack budget from the compiled objects; here each
family is loaded for real (the syscalls family with payloads off and on) with the
verifier's summary kept, so on every kernel of the matrix (`make vmtest`) the verifier's own
figures are checked: each function's depth is within what the object reader computed (so
the unit test's budget means something on this kernel), each chain within STACK_BUDGET,
and the instructions it walked within INSN_BUDGET. A program that cannot load must give
the user one line: which program, which limit, which kernel, and what to do meanwhile.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kprobe.capture_agent import bpf_elf
from kprobe.capture_agent.errors import BpfLoadError
from kprobe.capture_agent.families import FAMILIES
from kprobe.capture_agent.sensor import Sensor, SensorSpec, object_path
from kprobe.capture_agent.verifier import INSN_BUDGET, STACK_BUDGET, verified_chain
from tests.support import REPO, deadline_s, require, require_root
from tests.unit.test_bpf_budget import build_object

CONFIGS = [(name, None) for name in sorted(FAMILIES)] + [
    ("syscalls", "payloads"), ("sched", "evidence"), ("net", "evidence")]


def _spec(family: str, variant: str | None) -> SensorSpec:
    module = importlib.import_module(f"capture_agent.families.{family}")
    if variant == "payloads":
        return module.sensor_spec(  # type: ignore[no-any-return]
            module.SyscallsConfig(capture_payloads=True, payload_cap=module.PAYLOAD_CAP_MAX))
    if variant == "evidence":  # the config prunes the evidence code unless it is on
        config = module.SchedConfig if family == "sched" else module.NetConfig
        return module.sensor_spec(config(evidence=True))  # type: ignore[no-any-return]
    return module.sensor_spec(None)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("family", "variant"), CONFIGS,
                         ids=[f"{f}-{v}" if v else f for f, v in CONFIGS])
def test_verifier_figures_keep_the_margin(family: str, variant: str | None) -> None:
    require_root()
    path = object_path(FAMILIES[family].object_file)
    require(path.exists(), f"{path} (make bpf)")
    elf = bpf_elf.read(path)
    sensor = Sensor(_spec(family, variant))
    sensor.load()  # a refusal fails here, naming the program and the verifier's reason
    try:
        stats = sensor.verifier_stats
        assert set(stats) == {name for name, _ in sensor.programs()}
        for name, s in stats.items():
            order = elf.load_order(name)
            if len(order) == len(s.stack_depths):
                # the reader's depth is an upper bound of the verifier's (plus the slots the
                # verifier adds when it inlines bpf_loop, after its stack check)
                for fn_name, depth in zip(order, s.stack_depths, strict=True):
                    fn = elf.functions[fn_name]
                    extra = (bpf_elf.BPF_LOOP_INLINE_STACK
                             if bpf_elf.HELPER_BPF_LOOP in fn.helpers else 0)
                    assert depth <= fn.stack + extra, (
                        f"{name}: the verifier puts {fn_name} at {depth} bytes, the object "
                        f"reader at {fn.stack}: the unit test's budget is not an upper bound")
            chain = verified_chain(elf, name, s)
            assert chain <= STACK_BUDGET, f"{name}: {chain} bytes of stack on " \
                f"{platform.release()} (budget {STACK_BUDGET} of 512)"
            assert s.processed_insns <= INSN_BUDGET, f"{name}: {s.processed_insns} insns"
    finally:
        sensor.close()


def test_a_program_the_verifier_refuses_is_one_line_naming_limit_kernel_and_a_way_on(
        tmp_path: Path) -> None:
    """GIVEN the syscalls object plus a program whose call chain needs 640 bytes of stack
    (every other family as built) WHEN `kprobe record --payloads` starts THEN it exits 2
    with one line: the program, the verifier's reason, the limit, this kernel's release,
    the compiler, and how to record meanwhile; no traceback."""
    require_root()
    objects = tmp_path / "objects"
    objects.mkdir()
    for family in FAMILIES.values():
        built = object_path(family.object_file)
        require(built.exists(), f"{built} (make bpf)")
        shutil.copy(built, objects / built.name)
    build_object(REPO / "tests/programs/bpf/syscalls_stack_hog.bpf.c",
                 objects / FAMILIES["syscalls"].object_file)
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "kprobe", "record", "--payloads", "--duration", "1",
         "--lake", str(tmp_path / "lake"), "--spool-dir", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=deadline_s(120), check=False,
        env={**os.environ, "KPROBE_BPF_DIR": str(objects)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert "program stack_hog did not load" in line
    assert f"on Linux {platform.release()}" in line
    assert "combined stack size of 2 calls" in line
    assert "the 512-byte stack limit of a chain of calls" in line
    assert "built by clang" in line
    assert "meanwhile record without --payloads or without this family (--families " in line
    others = line.split("--families ", 1)[1].split(")", 1)[0].split(",")
    assert "syscalls" not in others and set(others) == set(FAMILIES) - {"syscalls"}


def test_the_sensor_error_names_the_failing_program_and_keeps_the_verifier_log(
        tmp_path: Path) -> None:
    require_root()
    obj = build_object(REPO / "tests/programs/bpf/syscalls_stack_hog.bpf.c",
                       tmp_path / FAMILIES["syscalls"].object_file)
    spec = dataclasses.replace(_spec("syscalls", None), object_dir=obj.parent)
    with pytest.raises(BpfLoadError) as raised:
        Sensor(spec).load()
    assert "program stack_hog did not load" in str(raised.value)
    assert "combined stack size of 2 calls is" in str(raised.value)
    assert any("combined stack size" in line for line in raised.value.log)
