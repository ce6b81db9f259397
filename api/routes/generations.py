"""POST /v1/generations: a class-conditional image at 64, 256 or 1024 pixels."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from api.auth import Owner
from api.bodies import CheckedJsonRoute, JsonObject
from api.deps import IdempotencyKeyDep, JobsDep, RedisDep, SettingsDep
from api.schemas import ErrorBody, GenerationRequest, JobAccepted, Quote
from api.submit import Idempotency, accept, generation_job, known_classes, quote
from jobs.idempotency import fingerprint

router = APIRouter(tags=["jobs"], route_class=CheckedJsonRoute)


@router.post(
    "/v1/generations",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": Quote, "description": "`dry_run`: the quote; nothing was queued"},
        **{code: {"model": ErrorBody} for code in (413, 415, 422, 503)},
        507: {"model": ErrorBody, "description": "the result disk is under its floor"},
    },
)
def create_generation(
    _: JsonObject,
    body: GenerationRequest,
    response: Response,
    settings: SettingsDep,
    connection: RedisDep,
    jobs: JobsDep,
    owner: Owner,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobAccepted | JSONResponse:
    """Queue a generation; poll the returned `links.self` for progress, or follow
    `links.events`. With `dry_run`, queue nothing and answer what it would run and cost."""
    job = generation_job(body, settings, known_classes(connection))
    if body.dry_run:
        return JSONResponse(quote(connection, job, body.seed).model_dump(mode="json"))
    idempotency = None
    if idempotency_key is not None:
        request = body.model_dump_json(exclude={"dry_run"})
        idempotency = Idempotency(idempotency_key, owner, fingerprint(request))
    accepted = accept(connection, settings, jobs, job, idempotency=idempotency, owner=owner)
    response.headers["Location"] = accepted.links.self
    return accepted
