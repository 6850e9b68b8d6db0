"""Every BPF program fits the verifier's limits with margin, read from the compiled objects.

The kernel refuses a chain of BPF-to-BPF calls over 512 bytes of stack, and kernels count a
little differently: a program 32 bytes under on one kernel failed another (issue 13). So each
program's deepest chain stays under STACK_BUDGET (384 bytes), checked here from the ELF
files alone (no kernel), and against the verifier's own figures on each kernel by
tests/integration/test_bpf_verifier_budget.py. A control object with frames of known size
keeps the reader honest.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kprobe.capture_agent import bpf_elf
from kprobe.capture_agent.families import FAMILIES
from kprobe.capture_agent.sensor import object_path
from kprobe.capture_agent.verifier import (
    INSN_BUDGET,
    STACK_BUDGET,
    VerifierStats,
    failure_reason,
    limit_of,
    parse_stats,
    verified_chain,
)
from tests.support import REPO, require, require_binary

BPF_DIR = REPO / "capture_agent" / "bpf"


def build_object(source: Path, out: Path) -> Path:
    """``source`` compiled with the project's one BPF toolchain and flags."""
    require_binary("make")
    require(subprocess.run(["make", "-s", "-C", str(BPF_DIR), "toolchain"],
                           capture_output=True).returncode == 0,
            "the project's BPF toolchain (make setup)")
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), "object", f"SRC={source}",
                    f"OBJ={out}"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> bpf_elf.BpfElf:
    out = tmp_path_factory.mktemp("bpf") / "stack_chain.bpf.o"
    return bpf_elf.read(build_object(REPO / "tests/programs/bpf/stack_chain.bpf.c", out))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_program_keeps_the_stack_and_insn_margin(family: str) -> None:
    # GIVEN the family's object as `make bpf` built it
    path = object_path(FAMILIES[family].object_file)
    require(path.exists(), f"{path} (make bpf)")
    elf = bpf_elf.read(path)
    assert elf.programs, f"{path.name} has no programs"
    # THEN every program's deepest chain of frames is within the budget
    over = [elf.deepest_chain(p.name) for p in elf.programs]
    over = [c for c in over if c.size > STACK_BUDGET]
    assert not over, (f"{path.name}: chains over the {STACK_BUDGET}-byte budget (of 512): "
                      + "; ".join(c.describe() for c in over))
    # AND no program is within 25 % of the instruction limit
    sizes = {p.name: elf.insn_count(p.name) for p in elf.programs}
    assert max(sizes.values()) <= INSN_BUDGET, sizes


def test_objects_name_the_one_toolchain_that_built_them() -> None:
    builds = set()
    for family in FAMILIES.values():
        path = object_path(family.object_file)
        require(path.exists(), f"{path} (make bpf)")
        builds.add(bpf_elf.read(path).build)
    version = subprocess.run(["make", "-s", "-C", str(BPF_DIR), "llvm-version"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert len(builds) == 1, builds
    assert next(iter(builds)).startswith(f"clang {version} ("), builds


def test_reader_finds_every_frame_call_and_callback_of_the_control(
        control: bpf_elf.BpfElf) -> None:
    fn = control.functions
    # frames as the C source declares them (8-byte slots; chain_prog also keeps `acc`)
    assert fn["chain_prog"].stack == 200
    assert fn["chain_mid"].stack == 136
    assert fn["chain_leaf"].stack == 72
    assert fn["chain_step"].stack == 40
    assert fn["chain_prog"].calls == ("chain_mid",)
    assert fn["chain_prog"].callbacks == ("chain_step",)
    assert fn["chain_mid"].calls == ("chain_leaf",)
    assert bpf_elf.HELPER_BPF_LOOP in fn["chain_prog"].helpers
    # the deepest chain goes through the calls (224 + 160 + 96), not the callback (224 + 64)
    chain = control.deepest_chain("chain_prog")
    assert [f.name for f in chain.frames] == ["chain_prog", "chain_mid", "chain_leaf"]
    assert chain.size == 480 > STACK_BUDGET  # the budget check would catch it
    # libbpf's layout: subprograms appended where first referenced (the callback comes first)
    assert control.load_order("chain_prog") == ["chain_prog", "chain_step", "chain_mid",
                                                "chain_leaf"]
    assert control.insn_count("chain_prog") == sum(
        fn[n].insns for n in ("chain_prog", "chain_step", "chain_mid", "chain_leaf"))


def test_verified_chain_uses_the_verifiers_depths(control: bpf_elf.BpfElf) -> None:
    # in load order: chain_prog, chain_step, chain_mid, chain_leaf
    stats = VerifierStats(1000, (200, 40, 136, 100))
    assert verified_chain(control, "chain_prog", stats) == 224 + 160 + 128
    # dead subprograms removed: the figures no longer line up -> the sum of what is left
    assert verified_chain(control, "chain_prog", VerifierStats(10, (200, 40))) == 224 + 64


def test_reader_refuses_what_is_not_a_bpf_object(tmp_path: Path) -> None:
    from kprobe.capture_agent.errors import BpfObjectError

    bogus = tmp_path / "x.bpf.o"
    bogus.write_bytes(b"\x7fELF" + b"\x02\x01" + bytes(58))
    with pytest.raises(BpfObjectError, match="not a BPF object"):
        bpf_elf.read(bogus)


LOG_FAILED = """\
func#0 @0
func#1 @51
combined stack size of 2 calls is 640. Too large
; int BPF_PROG(stack_hog, struct pt_regs *regs, long ret) @ syscalls_stack_hog.bpf.c:24
verification time 210 usec
stack depth 320+320
processed 120 insns (limit 1000000) max_states_per_insn 0 total_states 8 peak_states 8 mark_read 2
"""


def test_verifier_summary_reason_and_limit_are_read_from_its_log() -> None:
    stats = parse_stats(LOG_FAILED)
    assert stats == VerifierStats(120, (320, 320))
    reason = failure_reason(LOG_FAILED.splitlines())
    assert reason == "combined stack size of 2 calls is 640. Too large"
    assert limit_of(reason) == "the 512-byte stack limit of a chain of calls"
    assert limit_of("BPF program is too large. Processed 1000001 insn") == (
        "the verifier's limit of 1,000,000 instructions")
    assert limit_of("invalid func unknown#181") == "a BPF helper this kernel does not have"
    assert parse_stats("no summary here") is None
