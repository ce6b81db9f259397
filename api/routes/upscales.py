"""POST /v1/upscales: upscale an uploaded image by 4 or 16, or to a target size."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Response
from fastapi.responses import JSONResponse

from api.auth import Owner
from api.bodies import MultipartUpload
from api.deps import IdempotencyKeyDep, JobsDep, RedisDep, SettingsDep
from api.schemas import ErrorBody, JobAccepted, Quote, UpscaleForm
from api.submit import Idempotency, accept, quote, upscale_job
from api.uploads import UploadError, decode, probe, tensor_bytes
from jobs.idempotency import fingerprint

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/upscales",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": Quote, "description": "`dry_run`: the quote; nothing was queued"},
        **{code: {"model": ErrorBody} for code in (413, 415, 422, 503, 507)},
    },
)
def create_upscale(
    _: MultipartUpload,
    form: Annotated[UpscaleForm, Form(media_type="multipart/form-data")],
    response: Response,
    settings: SettingsDep,
    connection: RedisDep,
    jobs: JobsDep,
    owner: Owner,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobAccepted | JSONResponse:
    """Queue an upscale of `file` (PNG, JPEG or WebP); poll `links.self` for progress, or
    follow `links.events`. A JPEG's quality (from its tables) is kept in the job's
    `request.input.jpeg_quality`, and the upscaler's JPEG pre-clean cleans it for that quality
    first where the weights ship one. With `dry_run`, queue nothing and answer what it would run and
    cost (the file is checked as for a real upscale)."""
    data = form.file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"file is larger than {settings.max_upload_bytes} bytes")
    try:
        probe(data, settings.max_input_pixels)  # limits from the header, before decoding
        pixels, carried = decode(data)
    except UploadError as error:
        raise HTTPException(error.status_code, str(error)) from None
    job = upscale_job(form, pixels, settings, carried)
    if form.dry_run:
        return JSONResponse(quote(connection, job, form.seed).model_dump(mode="json"))
    idempotency = None
    if idempotency_key is not None:
        fields = form.model_dump_json(exclude={"file", "dry_run"})
        idempotency = Idempotency(idempotency_key, owner, fingerprint(fields, data))
    accepted = accept(
        connection, settings, jobs, job, tensor_bytes(pixels), idempotency, owner, carried
    )
    response.headers["Location"] = accepted.links.self
    return accepted
