"""``GET /v1/timeline``: thread states, syscalls, memory, network, disk and spans."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from kprobe.query_api.deps import (
    ComputeSettingsDep,
    LakeDbDep,
    ReadAccess,
    SettingsDep,
    SqlAdmissionDep,
    parse_time,
)
from kprobe.query_api.errors import BadRequest
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import Timeline
from kprobe.query_api.timeline import Who, build_timeline

router = APIRouter(prefix="/v1/timeline", tags=["timeline"])
_TIME = "ISO 8601 (2026-01-01T14:00:00Z), epoch s or ns, now, or -15m"


@router.get("", response_model=Timeline,
            responses=problem_responses(400, 401, 403, 422, 503),
            summary="A process's or thread's timeline for ECharts, downsampled when wide")
async def timeline(
        db: LakeDbDep, compute: ComputeSettingsDep, settings: SettingsDep,
        admission: SqlAdmissionDep, principal: ReadAccess,
        from_: Annotated[str, Query(alias="from", min_length=1, max_length=64,
                                    description=_TIME)],
        to: Annotated[str, Query(min_length=1, max_length=64, description=_TIME)],
        node: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,253}$")] = None,
        pid: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
        tid: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
        max_points: Annotated[int | None, Query(ge=100, le=100_000)] = None,
) -> dict[str, Any]:
    """Sections ``threads``, ``syscalls``, ``memory``, ``network``, ``disk``, ``spans``:
    each ``raw`` while it has at most ``max_points`` rows, else ``buckets`` (sums per
    equal time bucket). Times are ns offsets from ``from_ns``. Its statements share the
    SQL slots of the replica (503 with Retry-After when they are all taken)."""
    if pid is None and tid is None:
        raise BadRequest("give pid or tid (a system-wide timeline is a SQL query)")
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    if start is None or end is None or end <= start:
        raise BadRequest("to must be after from")
    points = min(max_points or settings.timeline_max_points, settings.timeline_max_points)
    who = Who(node, pid, tid)
    return await admission.run(lambda: build_timeline(db, compute, who, start, end, points,
                                                      settings.timeline_max_threads),
                               principal.name)
