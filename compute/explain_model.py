"""The explanation of a transaction as data: typed steps, causes and the transaction.

``compute.explain`` builds these from a window's graph snapshot; ``kprobe explain`` lays
them out as text (``kprobe/commands/_explain_text.py``), the API returns them as JSON
(``GET /v1/transactions/{id}/explain``) and the console draws them. Times are epoch
nanoseconds, durations nanoseconds. Each step also carries ``label`` (what happened, in a
few words: ``memcg reclaim 790 ms``) and, for causes and failures, ``detail`` (who or why:
``batch job PID 4721 allocating 1.2 GiB in the same cgroup``), as graph nodes carry labels;
the layout of a chain (the gap column, indentation, brackets, arrows) is the reader's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Episode(BaseModel):
    """A kernel episode node (memory pressure, disk busy period, ...): its graph row."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    kind: str | None = None
    subkind: str | None = None
    node: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    dur_ns: int | None = None
    memcg: int | None = None
    dev: str | None = None


class Driver(_Model):
    """The process that drove a kernel episode (the top-ranked one)."""

    episode: str
    process: str
    pid: int | None = None
    comm: str | None = None
    role: str | None = None
    cgroup: str | None = None
    kind: str | None = None
    rank: int | None = None
    delay_ns: int | None = None
    bytes: int | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class CpuHolder(_Model):
    thread: str
    delay_ns: int | None = None


class Cause(_Model):
    """One ranked cause of a failure (rank 1 is the root cause)."""

    rank: int | None
    kind: str
    name: str = Field(description="the cause in words: 'memory pressure'")
    target: str
    target_label: str | None
    delay_ns: int | None
    sufficient: bool | None = None
    depth: int | None = None
    via_span: str | None = None
    driver: str | None = Field(default=None, description="who drove it, in words")
    retransmits: list[str] = Field(
        default_factory=list, description="TCP retransmit episodes this cause made: their "
        "receiver was held up by it (rootcause.py)")


class EventStep(_Model):
    """A business event or an operation's start or end."""

    kind: Literal["event"] = "event"
    ts_ns: int
    depth: int = Field(description="0: the transaction's own first and last line")
    label: str
    span: str
    service: str | None = None
    name: str | None = None
    concept: str | None = None
    moment: Literal["start", "end"]


class KernelStep(_Model):
    """A cause a span suffered: a kernel episode, CPU holders, a wait for another thread."""

    kind: Literal["kernel"] = "kernel"
    ts_ns: int
    indent: int = Field(description="0 under the span; n: inside the n-th waited-for thread")
    label: str
    detail: str = ""
    span: str
    cause: str
    target: str
    delay_ns: int | None = None
    episode: Episode | None = None
    driver: Driver | None = None
    holders: list[CpuHolder] | None = None
    conn: str | None = None
    waker: str | None = None
    waker_activity: dict[str, Any] | None = None
    how: str | None = None


class RemoteStep(_Model):
    """An uninstrumented server's side of a call the span made."""

    kind: Literal["remote"] = "remote"
    ts_ns: int
    label: str
    span: str
    cause: str
    target: str
    delay_ns: int | None = None


class FailureStep(_Model):
    """A failed operation with its ranked causes."""

    kind: Literal["failure"] = "failure"
    ts_ns: int
    depth: int = 1
    label: str = Field(description="'TIMEOUT: payment-handler exceeded 750 ms'")
    detail: str = Field(description="'root cause: memory pressure (50 ms too late)'")
    span: str
    failure_kind: str
    deadline_ns: int | None = None
    dur_ns: int | None = None
    over_ns: int | None = None
    status_message: str | None = None
    root_cause: Cause | None = None
    other_causes: list[Cause] = Field(default_factory=list)


class MissedStep(_Model):
    """A business cutoff (a clearing window) the transaction missed."""

    kind: Literal["missed"] = "missed"
    ts_ns: int
    depth: int = 1
    label: str
    span: str
    cutoff_ns: int | None = None
    missed_by_ns: int | None = None


Step = Annotated[EventStep | KernelStep | RemoteStep | FailureStep | MissedStep,
                 Field(discriminator="kind")]


class ExplainedTransaction(_Model):
    """One trace explained: its root operation, outcome, root cause and steps in order."""

    trace_id: str
    txn_id: str | None = None
    concept: str | None = None
    business_id: str | None = None
    root_span: str
    service: str | None = None
    name: str | None = None
    start_ns: int
    dur_ns: int | None = None
    owned: bool = True
    failed: bool
    failure: FailureStep | None = None
    root_cause: Cause | None = None
    other_causes: list[Cause] = Field(default_factory=list)
    steps: list[Step]
    window: str


class Explanation(_Model):
    """``kprobe explain TXN --format json`` and ``GET /v1/transactions/{TXN}/explain``."""

    query: str
    transactions: list[ExplainedTransaction]
