"""``GET /v1/traces/{trace_id}/processes``: who ran a trace's spans, and can it be replayed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from kprobe.query_api.deps import LakeDbDep, ReadAccess, SqlAdmissionDep, parse_time
from kprobe.query_api.errors import BadRequest
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import TraceProcesses
from kprobe.query_api.trace_processes import trace_processes

router = APIRouter(prefix="/v1/traces", tags=["causal"])
_TIME = "ISO 8601, epoch s or ns, now, or -15m: only spans starting in [from, to)"


@router.get("/{trace_id}/processes", response_model=TraceProcesses,
            responses=problem_responses(400, 401, 403, 503),
            summary="The recorded processes that ran a trace's spans (the replay candidates)")
async def processes(trace_id: Annotated[str, Path(min_length=1, max_length=128)],
                    db: LakeDbDep, admission: SqlAdmissionDep, principal: ReadAccess,
                    from_: Annotated[str | None, Query(alias="from", max_length=64,
                                                       description=_TIME)] = None,
                    to: Annotated[str | None, Query(max_length=64)] = None) -> TraceProcesses:
    """Each (node, pid) that ran a span of the trace: its services and spans, the exec the
    agent recorded (argv, exe, cgroup) and how many payload rows it has; ``replayable``
    when both exist (``POST /v1/replays`` with ``process`` = ``PID@NODE``). An unknown trace
    is an empty list. Its statements share the SQL slots of the replica."""
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    if start is not None and end is not None and end <= start:
        raise BadRequest("to must be after from")
    found = await admission.run(lambda: trace_processes(db, trace_id, start, end),
                                principal.name)
    return TraceProcesses.model_validate({"trace_id": trace_id, "processes": found})
