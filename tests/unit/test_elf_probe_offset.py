"""Where a uprobe can go without the kernel single-stepping (elfsyms.emulated_probe_offset).

Synthetic code bytes: the probe moves to the first conditional jump only when everything
before it leaves the arguments, the stack pointer and the return address alone.
"""

from __future__ import annotations

from pathlib import Path

from kprobe.capture_agent.elfsyms import emulated_probe_offset

GLIBC_CLOCK_GETTIME = bytes.fromhex(
    "488b05713a1000"  # mov 0x103a71(%rip), %rax
    "488b80e0020000"  # mov 0x2e0(%rax), %rax
    "4885c0"  # test %rax, %rax
    "7415"  # je +0x15
    "4883ec08")  # sub $8, %rsp


def place(tmp_path: Path, code: bytes, at: int = 0x40) -> tuple[str, int]:
    path = tmp_path / "lib.so"
    path.write_bytes(b"\xcc" * at + code + b"\xcc" * 64)
    return str(path), at


def test_glibc_clock_gettime_probe_goes_to_its_je(tmp_path: Path) -> None:
    path, at = place(tmp_path, GLIBC_CLOCK_GETTIME)
    assert emulated_probe_offset(path, at) == at + 17


def test_endbr64_and_a_rel32_jump(tmp_path: Path) -> None:
    path, at = place(tmp_path, bytes.fromhex("f30f1efa" "85c0" "0f8410000000"))
    assert emulated_probe_offset(path, at) == at + 6


def test_an_instruction_that_may_touch_arguments_keeps_the_entry(tmp_path: Path) -> None:
    # push %rbp moves the stack (a uretprobe there would take the wrong return address)
    path, at = place(tmp_path, bytes.fromhex("55" "4885c0" "7415"))
    assert emulated_probe_offset(path, at) == at
    # mov %rdi, %rax then a jump: not on the list, so not skipped
    path, at = place(tmp_path, bytes.fromhex("4889f8" "7415"))
    assert emulated_probe_offset(path, at) == at


def test_no_jump_within_reach_keeps_the_entry(tmp_path: Path) -> None:
    path, at = place(tmp_path, bytes.fromhex("4885c0") * 20)
    assert emulated_probe_offset(path, at) == at
