"""What the kernel's verifier said about a program, and the budgets we hold programs to.

The verifier refuses a program whose chain of BPF-to-BPF calls uses more than 512 bytes of
stack, or whose verification walks more than 1M instructions; each kernel counts a little
differently (a program 32 bytes under on one kernel was 32 over on another). So every
program keeps a margin: its deepest chain at most ``STACK_BUDGET`` bytes, at most
``INSN_BUDGET`` instructions, checked from the compiled objects (``capture_agent.bpf_elf``,
tests/unit/test_bpf_budget.py) and from the verifier itself on every kernel of the matrix
(tests/integration/test_bpf_verifier_budget.py, ``make vmtest``).

With ``BPF_LOG_STATS`` the verifier ends its log with, per program::

    stack depth 24+72+80+16
    processed 1234 insns (limit 1000000) max_states_per_insn 4 total_states 99 ...

one depth per subprogram, in the order libbpf laid them out (``BpfElf.load_order``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kprobe.capture_agent.bpf_elf import MAX_PROCESSED_INSNS, MAX_STACK, BpfElf, frame_size

STACK_BUDGET = 384                       # of the 512 bytes a chain may use
INSN_BUDGET = MAX_PROCESSED_INSNS * 3 // 4  # 25 % short of the verifier's limit

_STACK = re.compile(r"^stack depth ([0-9+]+)\s*$", re.MULTILINE)
_PROCESSED = re.compile(r"^processed (\d+) insns", re.MULTILINE)
_SUMMARY = ("processed ", "verification time ", "stack depth ")


@dataclass(frozen=True)
class VerifierStats:
    processed_insns: int
    stack_depths: tuple[int, ...]  # bytes per subprogram, in load order


def parse_stats(log: str) -> VerifierStats | None:
    """The summary of a BPF_LOG_STATS log, or None if it has none."""
    processed = _PROCESSED.search(log)
    stack = _STACK.search(log)
    if processed is None or stack is None:
        return None
    return VerifierStats(int(processed.group(1)),
                         tuple(int(d) for d in stack.group(1).split("+") if d))


def verified_chain(elf: BpfElf, program: str, stats: VerifierStats) -> int:
    """The deepest chain of ``program`` by the verifier's own depths: an upper bound of what
    its stack check counted (the depth it reports includes the slots it adds afterwards
    when it inlines a bpf_loop, ``BPF_LOOP_INLINE_STACK``).

    The depths are matched to functions by libbpf's layout order; when the verifier
    removed dead subprograms (a config switched them off) they no longer line up, and the
    sum of every frame it kept is returned instead (an upper bound of any chain)."""
    order = elf.load_order(program)
    if len(order) != len(stats.stack_depths):
        return sum(frame_size(d) for d in stats.stack_depths)
    depth = dict(zip(order, stats.stack_depths, strict=True))

    def deepest(name: str, path: frozenset[str]) -> int:
        fn = elf.functions[name]
        below = [deepest(c, path | {name}) for c in fn.calls + fn.callbacks if c not in path]
        return frame_size(depth[name]) + max(below, default=0)

    return deepest(program, frozenset())


def failure_reason(log: list[str]) -> str:
    """The verifier's complaint: its last line before the summary that is not a source
    annotation (``; int BPF_PROG(...) @ net.bpf.c:265``)."""
    for i, line in enumerate(log):
        if line.startswith(_SUMMARY):
            for before in reversed(log[:i]):
                text = before.strip()
                if text and not text.startswith(";"):
                    return text
            return ""
    return ""


def limit_of(reason: str) -> str:
    """Which of the kernel's limits a verifier complaint is about, in a user's words."""
    text = reason.lower()
    if "stack" in text and ("too large" in text or "combined" in text or "depth" in text):
        return f"the {MAX_STACK}-byte stack limit of a chain of calls"
    if "too large" in text or "processed" in text or "complexity" in text:
        return f"the verifier's limit of {MAX_PROCESSED_INSNS:,} instructions"
    if "unknown func" in text or "invalid func" in text:
        return "a BPF helper this kernel does not have"
    if "attach" in text or "btf" in text:
        return "an attach point or kernel type this kernel does not have"
    if "loop" in text or "back-edge" in text:
        return "the verifier's loop rules"
    return ""
