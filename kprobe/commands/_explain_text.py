"""An explained transaction (``compute.explain_model``) laid out as text for people.

    [Payment #98721 received]
      | 0.4 ms  [Risk check passed]
      |   [KERNEL: memcg reclaim 790 ms]  <- batch job PID 4721 allocating 1.2 GiB ...
      [TIMEOUT: payment-handler exceeded 750 ms]  <- root cause: memory pressure (50 ms too late)
    [Payment failed]

The left column of an event line is the time since the event line above it; KERNEL, REMOTE
and wait lines sit under the operation that suffered them (indented once more per thread
followed); failures and missed cutoffs are flush with the bar.
"""

from __future__ import annotations

from kprobe.compute.explain import fmt_ns
from kprobe.compute.explain_model import (
    EventStep,
    ExplainedTransaction,
    FailureStep,
    KernelStep,
    RemoteStep,
)
from kprobe.lake.timespec import format_instant

LEGEND = ("# left column: time since the event line above; '|   [KERNEL ...]': what delayed "
          "the operation above it, '<-' who or why")


def chain_lines(txn: ExplainedTransaction) -> list[str]:
    """The chain, one line per step, in the steps' order."""
    lines = []
    last_event = txn.start_ns
    for step in txn.steps:
        if isinstance(step, EventStep):
            if step.depth == 0:
                lines.append(f"[{step.label}]")
            else:
                lines.append(f"  | {fmt_ns(step.ts_ns - last_event)}  [{step.label}]")
            last_event = step.ts_ns
        elif isinstance(step, KernelStep):
            why = f"  <- {step.detail}" if step.detail else ""
            lines.append(f"  |   {'  ' * step.indent}[KERNEL: {step.label}]{why}")
        elif isinstance(step, RemoteStep):
            lines.append(f"  |   [{step.label}]")
        elif isinstance(step, FailureStep):
            lines.append(f"  [{step.label}]  <- {step.detail}")
        else:  # a missed cutoff
            lines.append(f"  [{step.label}]")
    return lines


def heading(txn: ExplainedTransaction) -> str:
    """Which transaction, when (UTC), how long, and where its explanation comes from."""
    what = f"{txn.concept or 'transaction'} {txn.business_id or txn.txn_id or txn.trace_id}"
    outcome = "failed" if txn.failed else "ok"
    took = f", took {fmt_ns(txn.dur_ns)}" if txn.dur_ns is not None else ""
    return (f"# {what}: {outcome}; {txn.service}: {txn.name} started "
            f"{format_instant(txn.start_ns)}{took} (trace {txn.trace_id}, window {txn.window})")


def render(transactions: list[ExplainedTransaction]) -> str:
    """Every transaction's heading and chain, the legend once at the top."""
    blocks = [LEGEND]
    for txn in transactions:
        blocks.append("\n".join([heading(txn), *chain_lines(txn)]))
    return "\n\n".join(blocks) + "\n"
