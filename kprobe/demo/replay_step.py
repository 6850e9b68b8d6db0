"""The demo's last act: replay the gateway exactly (the payment fails as in production),
then with the settlement timeout raised (it succeeds), from the lake alone.

The verdict on each replay is read from what the replayed gateway *answered the client*
for the failed payment: its HTTP response, found among the bytes the replay kept for every
descriptor (responses are never performed outside the sandbox).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from kprobe.lake.storage import LakeLocation
from kprobe.replay_sandbox.report import ReplayReport
from kprobe.replay_sandbox.request import ReplayRequest
from kprobe.replay_sandbox.worker import execute

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
WHATIF_TIMEOUT_MS = 1500
AFTER_SPAN_NS = 50_000_000  # recording kept after the failed span: its export, not the next request


@dataclass
class ReplayOutcome:
    """One replay of the gateway, judged by its answer for the payment."""

    mode: str
    argv: list[str]
    status: str  # the replay's: completed, end_of_recording, diverged, ...
    http_status: int | None  # what the replayed gateway answered for the payment
    answer: str | None  # that response's body
    outputs_match: bool
    wall_s: float
    served: int
    divergence: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def answer_for(report: ReplayReport, payment_id: str) -> tuple[int | None, str | None]:
    """The HTTP response the replayed process wrote that names ``payment_id``."""
    needle = payment_id.encode()
    for data in report.replayed_outputs.values():
        starts = [m.start() for m in _STATUS.finditer(data)] + [len(data)]
        for begin, end in zip(starts, starts[1:], strict=False):
            response = data[begin:end]
            if needle in response:
                match = _STATUS.match(response)
                body = response.split(b"\r\n\r\n", 1)[-1]
                return (int(match.group(1)) if match else None,
                        body.decode(errors="replace").strip())
    return None, None


def run_replays(location: LakeLocation, node: str, gateway_pid: int, payment_id: str,
                span_end_ns: int, timeout_arg_index: int,
                whatif_timeout_ms: int = WHATIF_TIMEOUT_MS) -> list[ReplayOutcome]:
    """Exact replay, then the what-if with argv[timeout_arg_index] = whatif_timeout_ms:
    typed replay requests run by the replay worker's own code, as the CLI and the API do."""
    outcomes = []
    for mode, set_args in (("exact", ()),
                           ("whatif", ((timeout_arg_index, str(whatif_timeout_ms)),))):
        request = ReplayRequest(pid=gateway_pid, node=node, to_ns=span_end_ns + AFTER_SPAN_NS,
                                mode="exact" if mode == "exact" else "whatif",
                                set_args=set_args)
        started = time.monotonic()
        report = execute(request, location).report
        assert isinstance(report, ReplayReport)  # a replay, not a fuzz campaign
        http_status, answer = answer_for(report, payment_id)
        outcomes.append(ReplayOutcome(
            mode=mode, argv=[str(a) for a in report.process.get("argv") or []],
            status=report.status, http_status=http_status, answer=answer,
            outputs_match=report.outputs_match,
            wall_s=round(time.monotonic() - started, 3),
            served=int(report.stats.get("served", 0)),
            divergence=report.divergence.render() if report.divergence else None,
            notes=list(report.notes)))
    return outcomes
