"""Request and response schemas of the HTTP API (storage models stay in ``lake.schema``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kprobe.compute import explain_model

ParamValue = str | int | float | bool | None | list[str | int | float | bool | None]

_NO_NUL = r"^[^\x00]*$"
Arg = Annotated[str, StringConstraints(max_length=4096, pattern=_NO_NUL)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                           pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Injection = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- health ---------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok", "ready"]
    lake: str | None = None


# -- SQL ------------------------------------------------------------------------------------
class SqlRequest(_Closed):
    sql: str = Field(min_length=1, max_length=100_000,
                     examples=["SELECT name, count(*) FROM spans GROUP BY 1"])
    max_rows: int | None = Field(default=None, ge=0, le=10_000_000,
                                 description="row limit (capped by the server's)")
    timeout_s: float | None = Field(default=None, gt=0, le=3600,
                                    description="time limit (capped by the server's)")
    offset: int = Field(default=0, ge=0, le=2**62,
                        description="first row to answer: a previous answer's next_offset")


class Column(BaseModel):
    name: str
    type: str


class SqlResponse(BaseModel):
    columns: list[Column]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None = Field(
        default=None, description="the limit that cut the answer")
    next_offset: int | None = Field(
        default=None, description="send as offset (same statement) for the rows after these")
    elapsed_ms: float


class TableColumn(BaseModel):
    name: str
    type: str
    nullable: bool


class TableInfo(BaseModel):
    name: str
    doc: str
    time_column: str
    partition_columns: list[str]
    version: int | None = Field(description="Delta version; null when not created yet")
    columns: list[TableColumn]


class TablesResponse(BaseModel):
    tables: list[TableInfo]


# -- causal ---------------------------------------------------------------------------------
class Culprit(BaseModel):
    via: Literal["process", "thread"]
    pid: int | None
    tid: int | None
    comm: str | None
    role: str | None


class FailureInfo(BaseModel):
    span: str
    service: str | None
    name: str | None
    failure_kind: str | None
    status_message: str | None
    over_ns: int | None
    deadline_ns: int | None
    root_cause_kind: str | None
    root_cause_label: str | None
    root_cause_target: str | None
    root_cause_delay_ns: int | None
    culprit: Culprit | None = Field(default=None, description=(
        "who the root cause points at: the top driver of a kernel episode, or the thread"))


class Transaction(BaseModel):
    trace_id: str
    txn_id: str | None
    business_id: str | None
    concept: str | None
    service: str | None
    name: str | None
    start_ns: int
    end_ns: int | None
    dur_ns: int | None
    status: str | None
    root_span: str
    failed: bool
    window: str
    failure: FailureInfo | None
    links: dict[str, str]


class TransactionPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None
    next: str | None = Field(description="URL of the next page, or null on the last page")


# ``kprobe explain --format json`` and the explain route answer the same typed document
Explanation = explain_model.Explanation


class GraphNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    group: str
    label: str
    delay_ns: int | None
    colour: str


class GraphLink(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str
    target: str
    rel: str
    kind: str | None
    delay_ns: int | None
    colour: str


class LegendEntry(BaseModel):
    label: str
    colour: str
    max_ns: int | None


class TraceGraph(BaseModel):
    trace_id: str
    window: str
    nodes: list[GraphNode]
    links: list[GraphLink]
    legend: list[LegendEntry]


class CypherRequest(_Closed):
    cypher: str = Field(min_length=1, max_length=20_000,
                        examples=["MATCH (s:Span) WHERE s.failed RETURN s.id, s.name"])
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=64)
    window: list[str] | None = Field(default=None, max_length=1000,
                                     description="window ids (default: all, or --from/--to)")
    from_: str | None = Field(default=None, alias="from", max_length=64)
    to: str | None = Field(default=None, max_length=64)
    max_rows: int | None = Field(default=None, ge=0, le=1_000_000)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CypherResponse(BaseModel):
    columns: list[Column]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None = None
    windows: list[str]


# -- timeline -------------------------------------------------------------------------------
class TimelineSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    mode: Literal["raw", "buckets"]
    rows_total: int
    dimensions: list[str]
    data: list[list[Any]]
    bucket_ns: int | None = None


class Timeline(BaseModel):
    from_ns: int
    to_ns: int
    node: str | None
    pid: int | None
    tid: int | None
    time: str
    max_points: int
    sections: dict[str, TimelineSection]


# -- replays --------------------------------------------------------------------------------
class ArgChange(_Closed):
    index: int = Field(ge=0, le=4096)
    value: Arg


class ReplayRequest(_Closed):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    process: str = Field(pattern=r"^[0-9]{1,10}@[A-Za-z0-9._-]{1,253}$",
                         examples=["4721@node-1"], description="the recorded process, PID@NODE")
    from_: str | None = Field(default=None, alias="from", max_length=64,
                              pattern=r"^[0-9A-Za-z:.+\-]+$")
    to: str | None = Field(default=None, max_length=64, pattern=r"^[0-9A-Za-z:.+\-]+$")
    inject: list[Injection] = Field(default_factory=list, max_length=32,
                              description="delays, e.g. 'fsync:+50ms', 'recv fd=7:+800ms'")
    set_args: list[ArgChange] = Field(default_factory=list, max_length=64,
                                      description="what-if: replace argv[index]")
    env: dict[EnvName, Arg] = Field(default_factory=dict, max_length=64,
                                description="what-if: environment variables to set")
    cmd: str | None = Field(default=None, max_length=8192, pattern=_NO_NUL,
                            description="what-if: run this command line instead (split as a "
                            "shell would, never run by one), in the same unprivileged "
                            "sandbox as every replay")
    mode: Literal["exact", "whatif"] | None = None
    expect_exit: int | None = Field(default=None, ge=0, le=255)
    expect_output_match: bool = False
    timeout_s: float = Field(default=120.0, gt=0, le=3600)


class ReplayJob(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    kind: Literal["replay"]
    status: Literal["running", "succeeded", "failed", "error", "lost"]
    request: dict[str, Any]
    runner: Literal["subprocess", "ray"]
    owner: str
    created_ns: int
    started_ns: int | None
    finished_ns: int | None
    heartbeat_ns: int | None
    exit_code: int | None
    expectation_held: bool | None
    error: str | None
    summary: dict[str, Any] | None
    links: dict[str, str]


# -- the console's reads (query_api/routers/whoami.py, trace_processes.py) ------------------
class WhoAmI(BaseModel):
    principal: str = Field(description="the token's name; 'anonymous' without tokens")
    scopes: list[Literal["read", "replay", "payloads"]]
    auth: Literal["token", "none"] = Field(description="none: the server runs --no-auth "
                                                       "(loopback only, read-only)")
    nodes: list[str] | None = Field(default=None, description=(
        "the nodes the token is limited to (null: every node); such a token may only ask "
        "for explanations"))


class TraceProcess(BaseModel):
    node: str
    pid: int
    services: list[str] = Field(description="services whose spans of the trace it ran")
    spans: list[str] = Field(description="ids (trace:span) of the trace's spans it ran")
    span_names: list[str]
    first_start_ns: int
    last_end_ns: int | None
    exec_ns: int | None = Field(description="its last exec before the trace, when recorded")
    comm: str | None
    exe: str | None
    argv: list[str] | None = Field(description="as recorded at exec (secrets redacted at "
                                               "capture)")
    cgroup: str | None
    payload_rows: int = Field(description="syscall_data rows recorded for it in the trace's "
                                          "hours: a replay needs them")
    replayable: bool = Field(description="its exec and payloads were recorded")


class TraceProcesses(BaseModel):
    trace_id: str
    processes: list[TraceProcess]
