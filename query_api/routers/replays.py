"""``POST /v1/replays``, ``GET /v1/replays/{id}`` and ``GET /v1/replays/{id}/report``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import JSONResponse

from kprobe.query_api.deps import ReadAccess, ReplayAccess, RunnerDep
from kprobe.query_api.errors import Conflict, NotFound
from kprobe.query_api.payload_scope import may_read_payloads, strip_report
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.replays import ReplayRunner
from kprobe.query_api.schemas import ReplayJob, ReplayRequest

router = APIRouter(prefix="/v1/replays", tags=["replays"])
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id")]


def _view(runner: ReplayRunner, job: dict[str, Any]) -> dict[str, Any]:
    view = dict(job)
    if runner.is_lost(job):
        view["status"] = "lost"
        view["error"] = (f"no heartbeat from {job.get('owner')} since "
                         f"{job.get('heartbeat_ns')}: the replica that ran it is gone")
    view["links"] = {"self": f"/v1/replays/{job['id']}",
                     "report": f"/v1/replays/{job['id']}/report"}
    return view


@router.post("", status_code=202, response_model=ReplayJob,
             responses=problem_responses(400, 401, 403, 413, 422, 503,
                                         _429="replays already running on this replica"),
             summary="Launch a sandboxed replay of a recorded process")
def launch(body: ReplayRequest, runner: RunnerDep, _: ReplayAccess) -> JSONResponse:
    """Replays ``process`` (PID@NODE) with the injections and what-if changes asked for,
    in the replay worker (a subprocess, or a Ray task when a cluster is configured) and
    its unprivileged sandbox. The job's state lives in the lake: poll
    ``GET /v1/replays/{id}`` on any replica."""
    job = _view(runner, runner.launch(body))
    return JSONResponse(ReplayJob.model_validate(job).model_dump(mode="json"),
                        status_code=202, headers={"Location": job["links"]["self"]})


@router.get("/{job_id}", response_model=ReplayJob,
            responses=problem_responses(401, 403, 404, 422, 503),
            summary="A replay job's state")
def job(job_id: JobId, runner: RunnerDep, _: ReadAccess) -> dict[str, Any]:
    found = runner.store.get(job_id)
    if found is None:
        raise NotFound(f"no replay job {job_id}")
    return _view(runner, found)


@router.get("/{job_id}/report",
            responses=problem_responses(401, 403, 404, 422, 503,
                                        _409="the replay is still running"),
            summary="The replay report (as kprobe replay --format json prints it)")
def report(job_id: JobId, runner: RunnerDep, principal: ReadAccess) -> dict[str, Any]:
    """Without the payloads scope, the bytes the program read or wrote (its output text,
    output previews, a diverging call's data) are removed from the report."""
    found = runner.store.get(job_id)
    if found is None:
        raise NotFound(f"no replay job {job_id}")
    if found.get("status") == "running" and not runner.is_lost(found):
        raise Conflict(f"replay {job_id} is still running")
    data = runner.store.get_report(job_id)
    if data is None:
        why = found.get("error") or "the replay produced no report"
        raise NotFound(f"replay {job_id} has no report: {why}")
    kept: dict[str, Any] = data if may_read_payloads(principal) else strip_report(data)
    return kept
