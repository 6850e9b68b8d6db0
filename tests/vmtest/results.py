"""The result protocol between a guest and the host, and the lines the matrix prints.

The guest writes one line per step on its results channel (a serial port of its own, so
no kernel message can cut into it): ``@@vmtest {json}``. The host reads them back after the
guest stopped and turns them into one line per kernel and the closing summary line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

MARK = "@@vmtest "
# the steps every kernel must pass, in order
STEPS: tuple[str, ...] = ("doctor", "tests", "record-replay")
REASON_CHARS = 400  # a reason is one line; the full text is in the log
CLOCK_SLACK = 1.05  # a guest's steps may not add up to more than its run on the host


@dataclass(frozen=True)
class StepResult:
    """One step of a guest: ``begin`` (with the release), a check, or ``boot`` when the
    initramfs could not hand over to the checks."""

    step: str
    ok: bool
    seconds: float = 0.0
    reason: str = ""  # one line: why it failed (first failure)
    failures: tuple[str, ...] = ()  # every failure, one line each
    release: str = ""


def encode(result: StepResult) -> str:
    """The result as one line of the protocol (no newline inside)."""
    return MARK + json.dumps(asdict(result), ensure_ascii=True)


def decode_all(text: str) -> list[StepResult]:
    """Every well-formed result line in ``text``; other lines and damaged ones are ignored
    (a missing step is what the host reports then)."""
    found: list[StepResult] = []
    for line in text.splitlines():
        start = line.find(MARK)
        if start < 0:
            continue
        try:
            raw = json.loads(line[start + len(MARK):])
            found.append(StepResult(
                step=str(raw["step"]), ok=bool(raw["ok"]),
                seconds=float(raw.get("seconds", 0.0)), reason=str(raw.get("reason", "")),
                failures=tuple(str(f) for f in raw.get("failures", ())),
                release=str(raw.get("release", ""))))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` squeezed onto one line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


@dataclass(frozen=True)
class KernelOutcome:
    """What one kernel of the matrix came to."""

    release: str
    accel: str  # "kvm", "tcg" or "native"
    ok: bool
    seconds: float
    reason: str = ""
    failures: tuple[str, ...] = field(default=())  # "step: failure", every one seen
    log: str = ""
    crashed: str = ""  # the guest kernel's crash that stopped it before a step failed
    note: str = ""  # said on its line whatever the outcome (a first boot that crashed)


def judge(release: str, accel: str, seconds: float, results: Sequence[StepResult],
          stopped: str = "", log: str = "", steps: Sequence[str] = STEPS) -> KernelOutcome:
    """A kernel passes when each of ``steps`` reported ok. ``stopped`` says how the guest
    ended when that is the reason a step is missing ("timed out after 900 s", ...)."""
    by_step = {r.step: r for r in results}
    failures: list[str] = []
    for r in results:
        if not r.ok:
            failures += [f"{r.step}: {f}" for f in r.failures] or [f"{r.step}: {r.reason}"]
    reason = ""
    for r in results:
        if not r.ok:
            reason = f"{r.step}: {r.reason}"
            break
    missing = [s for s in steps if s not in by_step]
    if not reason and missing:
        reason = f"no result for {missing[0]}" + (f" ({stopped})" if stopped else "")
    guest_seconds = sum(r.seconds for r in results)
    if not reason and guest_seconds > seconds * CLOCK_SLACK + 5:
        # the steps took longer by the guest's clock than the whole guest by the host's
        reason = (f"the guest's clock ran {guest_seconds / seconds:.1f}x fast ({guest_seconds:.0f}"
                  f" s of steps in {seconds:.0f} s): its timings cannot be trusted")
    seen_release = next((r.release for r in results if r.release), release)
    return KernelOutcome(release=seen_release, accel=accel, ok=not reason, seconds=seconds,
                         reason=one_line(reason), failures=tuple(failures), log=log)


def kernel_line(outcome: KernelOutcome) -> str:
    """One line per kernel: release, accelerator, pass/FAIL, duration, the reason."""
    line = (f"vmtest: {outcome.release:<30} {outcome.accel:<6} "
            f"{'pass' if outcome.ok else 'FAIL'} {outcome.seconds:7.1f} s")
    if not outcome.ok:
        line += f"  {outcome.reason}"
    if outcome.note:
        line += f"  [{outcome.note}]"
    return line


def summary_line(outcomes: Iterable[KernelOutcome]) -> str:
    """The closing line: ``vmtest: N kernels passed: r1, r2, ...`` when all passed, else
    which failed and why."""
    done = list(outcomes)
    failed = [o for o in done if not o.ok]
    if not failed:
        return f"vmtest: {len(done)} kernels passed: {', '.join(o.release for o in done)}"
    why = "; ".join(f"{o.release} ({o.reason})" for o in failed)
    return f"vmtest: {len(failed)} of {len(done)} kernels failed: {why}"
