"""POST /v1/generations: a class-conditional image at 64, 256 or 1024 pixels."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import JobsDep, RedisDep, SettingsDep
from api.schemas import ErrorBody, GenerationRequest, JobAccepted
from api.submit import accept, generation_job, known_classes

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/generations",
    status_code=202,
    response_model=JobAccepted,
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
def create_generation(
    body: GenerationRequest,
    response: Response,
    settings: SettingsDep,
    connection: RedisDep,
    jobs: JobsDep,
) -> JobAccepted:
    """Queue a generation; poll the returned `links.self` for progress."""
    job = generation_job(body, settings, known_classes(connection))
    accepted = accept(connection, settings, jobs, job)
    response.headers["Location"] = accepted.links.self
    return accepted
