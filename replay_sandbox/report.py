"""What a replay found: how it ended, where it left the recording, what the program wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Status = Literal["completed", "diverged", "end_of_recording", "timeout"]
_PREVIEW = 96


def preview(data: bytes | None, limit: int = _PREVIEW) -> str | None:
    """Bytes for people: text if it decodes, else hex; cut at ``limit``."""
    if data is None:
        return None
    cut = data[:limit]
    try:
        text = repr(cut.decode("utf-8"))
    except UnicodeDecodeError:
        text = cut.hex()
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


@dataclass
class CallInfo:
    """One syscall, as recorded or as the replayed program made it."""

    name: str
    nr: int
    args: list[int]
    ret: int | None = None
    data: dict[str, str | None] = field(default_factory=dict)  # arg index -> preview

    def render(self) -> str:
        args = ", ".join(_arg(a) for a in self.args)
        text = f"{self.name}({args})"
        if self.ret is not None:
            text += f" = {self.ret}"
        for arg, value in sorted(self.data.items()):
            text += f"\n      arg {arg}: {value}"
        return text


def _arg(value: int) -> str:
    return hex(value) if value > 0xFFFF or value < -0xFFFF else str(value)


@dataclass
class Divergence:
    """Where the replayed program stopped doing what the recorded one did."""

    reason: str
    tid: int  # recorded thread id
    replay_tid: int
    seq: int | None  # the recorded row expected next (per-thread sequence number)
    expected: CallInfo | None
    actual: CallInfo | None

    def render(self) -> str:
        lines = [f"divergence in thread {self.tid} (replay tid {self.replay_tid}) at seq "
                 f"{self.seq}: {self.reason}"]
        if self.expected is not None:
            lines.append(f"  expected: {self.expected.render()}")
        if self.actual is not None:
            lines.append(f"  actual:   {self.actual.render()}")
        return "\n".join(lines)


@dataclass
class OutputComparison:
    fd: int
    recorded_bytes: int
    replayed_bytes: int  # written by the replay in all (kept or only counted)
    match: bool
    first_difference: int | None
    recorded: str | None
    replayed: str | None
    # bytes kept (and compared) when the replay wrote more than the output cap; the rest
    # was only counted. None: everything was kept.
    kept_bytes: int | None = None


CARD_MASK = ord("*")  # what the recorder writes over a card number's middle digits


def first_difference(recorded: bytes, replayed: bytes,
                     unknown: Sequence[tuple[int, int]] = ()) -> int | None:
    """The first offset of the common length where the bytes differ. A recorded ``*``
    over a replayed digit is no difference: the recorder masks the middle digits of
    anything that looks like a card number before it reaches the lake (including, one
    time in a few thousand, a digit run inside a random hex id the program wrote), and
    the replayed program writes the real digits. ``unknown``: [start, end) ranges of the
    recording the recorder cut (--payload-cap), where any byte matches."""
    n = min(len(recorded), len(replayed))
    rec = np.frombuffer(recorded, np.uint8, n)
    rep = np.frombuffer(replayed, np.uint8, n)
    masked = (rec == CARD_MASK) & (np.subtract(rep, 48, dtype=np.uint8) < 10)
    for start, end in unknown:
        masked[min(start, n):min(end, n)] = True
    differ = np.flatnonzero((rec != rep) & ~masked)
    return int(differ[0]) if len(differ) else None


def compare_outputs(recorded: dict[int, bytes], replayed: dict[int, bytes],
                    written: dict[int, int] | None = None,
                    unknown: dict[int, list[tuple[int, int]]] | None = None,
                    ) -> list[OutputComparison]:
    """Each descriptor's recorded and replayed bytes (``first_difference``: a masked card
    digit matches, and so does any byte in ``unknown``'s ranges of a fd, the bytes the
    recorder cut). ``written``: how many bytes the replay wrote per fd when more than
    ``replayed`` holds (the output cap): the kept prefix is compared, and the lengths."""
    written = written or {}
    unknown = unknown or {}
    out = []
    for fd in sorted(set(recorded) | set(replayed) | set(written)):
        rec = recorded.get(fd, b"")
        rep = replayed.get(fd, b"")
        total = max(written.get(fd, 0), len(rep))
        cut = total > len(rep)
        diff = first_difference(rec, rep, unknown.get(fd, ()))
        if diff is None and len(rec) != total:
            diff = min(len(rec), len(rep))
        start = max(0, (diff or 0) - 16)
        out.append(OutputComparison(fd, len(rec), total, diff is None, diff,
                                    preview(rec[start:]), preview(rep[start:]),
                                    len(rep) if cut else None))
    return out


TEXT_LIMIT = 64 << 10  # bytes of each output in the JSON report


@dataclass
class ChildReport:
    """A descendant replayed with the root (``--tree``)."""

    pid: int  # recorded
    exe: str
    argv: list[str]
    exit_code: int | None
    exit_signal: int | None
    recorded_exit_code: int | None  # -N: killed by signal N
    ended: bool  # the replay saw it end
    outputs: list[OutputComparison] = field(default_factory=list)
    replayed_outputs: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def outputs_match(self) -> bool:
        return all(o.match for o in self.outputs)

    @property
    def exit_matches(self) -> bool:
        if self.recorded_exit_code is None:
            return True
        if self.recorded_exit_code < 0:
            return self.exit_signal == -self.recorded_exit_code
        return self.exit_signal is None and self.exit_code == self.recorded_exit_code

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("replayed_outputs")
        data["outputs_match"] = self.outputs_match
        data["exit_matches"] = self.exit_matches
        data["replayed_text"] = {str(fd): out[:TEXT_LIMIT].decode(errors="replace")
                                 for fd, out in sorted(self.replayed_outputs.items())}
        return data


@dataclass
class ReplayReport:
    status: Status
    mode: str
    process: dict[str, Any]
    exit_code: int | None = None  # replayed
    exit_signal: int | None = None
    recorded_exit_code: int | None = None
    divergence: Divergence | None = None
    outputs: list[OutputComparison] = field(default_factory=list)
    injections: dict[str, int] = field(default_factory=dict)  # spec -> times applied
    stats: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    replayed_outputs: dict[int, bytes] = field(default_factory=dict, repr=False)
    # how it was contained: the host uid it ran as, its cgroups (removed), its limits
    sandbox: dict[str, Any] = field(default_factory=dict)
    # --tree: every descendant replayed with it (each one's end and outputs compared)
    children: list[ChildReport] = field(default_factory=list)

    @property
    def outputs_match(self) -> bool:
        """Every output of the process, and of each process of its tree, and each one's
        end, as recorded."""
        return all(o.match for o in self.outputs) and all(
            c.outputs_match and c.exit_matches for c in self.children)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("replayed_outputs")
        data["children"] = [c.to_dict() for c in self.children]
        data["outputs_match"] = self.outputs_match
        # what the replay wrote, for scripts and CI checks (text; bytes beyond are counted
        # in `outputs`)
        data["replayed_text"] = {str(fd): out[:TEXT_LIMIT].decode(errors="replace")
                                 for fd, out in sorted(self.replayed_outputs.items())}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def render_text(self) -> str:
        proc = self.process
        lines = [f"replay of pid {proc.get('pid')}@{proc.get('node')} "
                 f"({' '.join(proc.get('argv') or [])}) in {self.mode} mode: {self.status}"]
        if self.exit_signal is not None:
            lines.append(f"  exit: killed by signal {self.exit_signal}")
        elif self.exit_code is not None:
            recorded = ("" if self.recorded_exit_code is None
                        else f" (recorded {self.recorded_exit_code})")
            lines.append(f"  exit code {self.exit_code}{recorded}")
        if self.divergence is not None:
            lines.append("  " + self.divergence.render().replace("\n", "\n  "))
        for out in self.outputs:
            verdict = "same" if out.match else f"differs at byte {out.first_difference}"
            kept = ("" if out.kept_bytes is None
                    else f" (over the output cap: first {out.kept_bytes} kept and compared)")
            lines.append(f"  fd {out.fd}: recorded {out.recorded_bytes} bytes, replayed "
                         f"{out.replayed_bytes} bytes{kept}: {verdict}")
            if not out.match:
                lines.append(f"    recorded: {out.recorded}")
                lines.append(f"    replayed: {out.replayed}")
        for child in self.children:
            end = (f"killed by signal {child.exit_signal}" if child.exit_signal is not None
                   else f"exit code {child.exit_code}" if child.ended else "did not end")
            recorded = ("" if child.recorded_exit_code is None
                        else f" (recorded {child.recorded_exit_code})")
            lines.append(f"  process {child.pid} ({' '.join(child.argv)[:60]}): {end}"
                         f"{recorded}")
            for out in child.outputs:
                verdict = "same" if out.match else f"differs at byte {out.first_difference}"
                lines.append(f"    fd {out.fd}: recorded {out.recorded_bytes} bytes, replayed "
                             f"{out.replayed_bytes} bytes: {verdict}")
                if not out.match:
                    lines.append(f"      recorded: {out.recorded}")
                    lines.append(f"      replayed: {out.replayed}")
        for spec, count in self.injections.items():
            lines.append(f"  injected {spec!r}: applied {count} times")
        if self.stats:
            keys = ("served", "real", "synthesized", "clock_reads", "stops", "rdtsc",
                    "wall_s", "us_per_stop", "virtual_shift_ms")
            lines.append("  " + ", ".join(f"{k}={self.stats[k]:g}" for k in keys
                                          if k in self.stats))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def expectation_held(report: ReplayReport, expect_exit: int | None,
                     expect_output_match: bool) -> bool:
    """The CLI's rule (``kprobe replay --expect-exit / --expect-output-match``), shared with
    the timing fuzz: an exit code, every output matching, or by default the replay's own
    verdict (exact: followed the recording with the same outputs; what-if: ran to its end)."""
    if expect_exit is not None:
        return report.exit_signal is None and report.exit_code == expect_exit
    if expect_output_match or report.mode == "exact":
        return report.status in ("completed", "end_of_recording") and report.outputs_match
    return report.status == "completed"
