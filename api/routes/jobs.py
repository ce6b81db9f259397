"""Jobs: the caller's list; a job's status, its images, and cancelling it."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from redis import Redis

from api.auth import Owner
from api.deps import JobIdDep, JobsDep, RedisDep, SettingsDep, StoreDep, unknown_job
from api.schemas import ErrorBody, JobList
from cascade.stages import EXTENSIONS, MEDIA_TYPES
from jobs.lifecycle import Jobs
from jobs.listing import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, page
from jobs.queues import cancel_stage, live_workers, worker_alive
from jobs.record import JobRecord
from jobs.settings import Settings
from jobs.status import JobStatus, StageStatus
from jobs.store import Store, object_name, result_name, stage_preview
from jobs.urls import RELATIVE, Urls
from jobs.view import JobView, describe, mark_orphaned, mark_waiting

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])
BINARY = {"schema": {"type": "string", "format": "binary"}}
ERRORS = {code: {"model": ErrorBody} for code in (404, 409, 503)}
PNG = {200: {"content": {"image/png": BINARY}}, **ERRORS}
IMAGE = {
    200: {
        "content": {media_type: BINARY for media_type in MEDIA_TYPES.values()},
        "description": "the result, in the format the request asked for (png by default)",
    },
    **ERRORS,
}


def find(jobs: Jobs, job_id: str, owner: str) -> JobRecord:
    """The job, if the caller's key made it (another key's job is as unknown as a missing one)."""
    record = jobs.get(job_id)
    if record is None or record.owner != owner:
        raise unknown_job(job_id)
    return record


def read_stored(store: Store, key: str) -> bytes | None:
    """A stored file (None: not there); 503, which says when to retry, while the store cannot
    be read (S3 unreachable or refusing, a failing disk: whatever it raises, a retry may mend)."""
    try:
        return store.get(key)
    except Exception:
        log.exception("the result store could not read %s", key)
        raise HTTPException(503, "the result store is unavailable; try again shortly") from None


def live_views(
    connection: Redis, settings: Settings, records: list[JobRecord], urls: Urls = RELATIVE
) -> list[dict[str, object]]:
    """The jobs' views with what the workers say now: a running stage whose worker died shows
    as waiting to be retried, a stage no live worker serves as waited for (`mark_waiting`)."""
    fresh = settings.worker_fresh_seconds
    counts: dict[str, int] = {}

    def serving(stage: str) -> int:
        if stage not in counts:
            counts[stage] = live_workers(connection, stage, fresh)
        return counts[stage]

    def alive(name: str) -> bool:
        return worker_alive(connection, name, fresh)

    return [
        mark_waiting(mark_orphaned(describe(record, urls=urls), alive, serving), serving)
        for record in records
    ]


def not_ready(record: JobRecord, what: str) -> HTTPException:
    """409 saying why `what` cannot be had yet (or ever)."""
    view = describe(record)
    if record.status == JobStatus.FAILED:
        return HTTPException(409, f"job {record.id} failed: {view['error']}")
    if record.status == JobStatus.CANCELED:
        return HTTPException(409, f"job {record.id} was canceled before {what} was made")
    stage = f" (stage {view['stage']}, {view['progress']:.0%} done)" if view["stage"] else ""
    return HTTPException(409, f"{what} is not ready: job {record.id} is {record.status}{stage}")


@router.get("/v1/jobs", response_model=JobList, responses={422: {"model": ErrorBody}})
def list_jobs(
    owner: Owner,
    jobs: JobsDep,
    connection: RedisDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="jobs per page")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
) -> dict[str, object]:
    """The caller's jobs (with API keys: the key's own), newest first, a page at a time."""
    try:
        records, next_cursor = page(connection, jobs, owner, limit, cursor, status)
    except BadCursor as error:
        raise HTTPException(422, str(error)) from None
    views = live_views(connection, settings, records, jobs.urls)
    return {"jobs": views, "next_cursor": next_cursor}


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}})
def get_job(
    job_id: JobIdDep, owner: Owner, jobs: JobsDep, connection: RedisDep, settings: SettingsDep
) -> dict[str, object]:
    """Status, current stage, per-stage progress and timings, progress (0..1) and ETA."""
    return live_views(connection, settings, [find(jobs, job_id, owner)], jobs.urls)[0]


@router.get("/v1/jobs/{job_id}/result", response_class=Response, responses=IMAGE)
def get_result(job_id: JobIdDep, owner: Owner, jobs: JobsDep, store: StoreDep) -> Response:
    """The final image as PNG, WebP or JPEG (the request's `format`), once the job has
    succeeded; its file name (Content-Disposition) is the job id with that format's extension."""
    record = find(jobs, job_id, owner)
    if record.status != JobStatus.SUCCEEDED:
        raise not_ready(record, "the result")
    format = record.output_format
    data = read_stored(store, object_name(job_id, result_name(format)))
    if data is None:
        raise HTTPException(404, f"the result of job {job_id} is no longer in the store")
    filename = f"{job_id}.{EXTENSIONS[format]}"
    headers = {"Content-Disposition": f'inline; filename="{filename}"'}
    return Response(data, media_type=MEDIA_TYPES[format], headers=headers)


@router.get("/v1/jobs/{job_id}/stages/{stage}", response_class=Response, responses=PNG)
def get_stage_image(
    job_id: JobIdDep, stage: str, owner: Owner, jobs: JobsDep, store: StoreDep
) -> Response:
    """One stage's output as PNG, available as soon as that stage has finished."""
    record = find(jobs, job_id, owner)
    names = [planned.name for planned in record.plan]
    if stage not in names:
        raise HTTPException(404, f"job {job_id} has no stage {stage!r}; its stages are {names}")
    if record.stage(stage, "status") != StageStatus.SUCCEEDED:
        if record.status in (JobStatus.FAILED, JobStatus.CANCELED):
            raise not_ready(record, f"stage {stage}'s image")
        status = record.stage(stage, "status")
        raise HTTPException(
            409, f"stage {stage} of job {job_id} is {status}; its image is not ready"
        )
    data = read_stored(store, object_name(job_id, stage_preview(stage)))
    if data is None:
        raise HTTPException(404, f"stage {stage}'s image of job {job_id} is no longer in the store")
    return Response(data, media_type="image/png")


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    response_model=JobView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def cancel_job(
    job_id: JobIdDep, owner: Owner, jobs: JobsDep, connection: RedisDep
) -> JSONResponse | dict[str, object]:
    """Cancel: a running stage stops within one sampler step, later stages never start."""
    record = find(jobs, job_id, owner)
    if record.status == JobStatus.CANCELED:
        return JSONResponse(describe(record, urls=jobs.urls), status_code=200)
    if not jobs.end(job_id, JobStatus.CANCELED):  # someone else ended it first
        record = find(jobs, job_id, owner)
        if record.status == JobStatus.CANCELED:
            return JSONResponse(describe(record, urls=jobs.urls), status_code=200)
        raise HTTPException(409, f"job {job_id} has already {record.status}; nothing to cancel")
    for planned in record.plan:
        if record.stage(planned.name, "status") == StageStatus.QUEUED:
            cancel_stage(connection, job_id, planned.name)
    log.info("job %s canceled by request", job_id)
    return describe(find(jobs, job_id, owner), urls=jobs.urls)
