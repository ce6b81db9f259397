"""The service itself: classes, health, readiness and metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.auth import authenticate
from api.deps import RedisDep, SettingsDep, StoreDep
from api.metrics import HTTP, StageCollector
from api.schemas import ClassInfo, ErrorBody, Limits
from api.submit import known_classes
from cascade.classes import class_names
from cascade.stages import (
    COLOR_FIXES,
    DEFAULT_FIDELITY,
    DEFAULT_LOW_BAND,
    DEFAULT_QUALITY,
    LOW_BANDS,
    OUTPUT_FORMATS,
    SAMPLER_NAMES,
    SCALES,
    SIZES,
    STAGES,
)
from jobs.health import served_stages, unloaded_stages
from jobs.queues import live_workers
from jobs.store import MB, free_bytes, space_shortfall

router = APIRouter(tags=["service"])


KEYED = {code: {"model": ErrorBody} for code in (401, 429, 503)}  # what the key's check answers


@router.get(
    "/v1/classes",
    dependencies=[Depends(authenticate)],
    response_model=list[ClassInfo],
    responses=KEYED,
)
def list_classes(connection: RedisDep) -> list[dict[str, object]]:
    """The classes a generation can ask for, by id and name: those the loaded base was trained
    on (as its worker announced it), or all 1000 ImageNet classes."""
    names = class_names()
    return [{"id": index, "name": names[index]} for index in known_classes(connection)]


@router.get(
    "/v1/limits",
    dependencies=[Depends(authenticate)],
    response_model=Limits,
    responses=KEYED,
    operation_id="get_limits",
)
def limits(settings: SettingsDep) -> dict[str, object]:
    """What a request may ask for: sizes, scales, samplers and colour fixes, the upload, input,
    output and step limits, and each stage's default sampler and steps."""
    return {
        "sizes": list(SIZES),
        "scales": list(SCALES),
        "samplers": list(SAMPLER_NAMES),
        "color_fixes": list(COLOR_FIXES),
        "low_bands": list(LOW_BANDS),
        "formats": list(OUTPUT_FORMATS),
        "default_quality": DEFAULT_QUALITY,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_input_pixels": settings.max_input_pixels,
        "max_output_pixels": settings.max_output_pixels,
        "max_steps": settings.max_steps,
        "default_fidelity": DEFAULT_FIDELITY["sr256"],
        "defaults": {
            name: {
                "sampler": settings.sampler_for(name),
                "steps": settings.steps_for(name),
                **(
                    {"fidelity": DEFAULT_FIDELITY[name], "low_band": DEFAULT_LOW_BAND}
                    if name in DEFAULT_FIDELITY
                    else {}
                ),
            }
            for name in STAGES
        },
    }


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is up (says nothing about Redis or workers: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
def readyz(connection: RedisDep, settings: SettingsDep, store: StoreDep) -> JSONResponse:
    """Ready when Redis answers, each served stage's queue (`served_stages`) has a worker
    listening whose heartbeat is fresh (a killed worker's registration outlives it), the store
    answers, and a local result disk has its floor of free space (`disk`; below it workers
    take no stages); names the stages live workers could not load, and why."""
    connection.ping()
    fresh = settings.worker_fresh_seconds
    workers = {name: live_workers(connection, name, fresh) for name in STAGES}
    served = served_stages(connection, settings, STAGES)  # a partial deployment is ready too
    missing = [name for name in served if workers[name] == 0]
    shortfall = space_shortfall(settings)
    free = None if settings.store.startswith("s3://") else free_bytes(settings.store)
    disk = {
        "ok": shortfall is None,
        "free_mb": None if free is None else round(free / MB, 1),  # None: an S3 store
        "min_free_mb": settings.min_free_mb,
    }
    # Stages live workers could not load, and why (a stage another worker serves is listed too:
    # one of its workers needs mended weights).
    unloaded = {
        stage: [asdict(report) for report in reports]
        for stage, reports in unloaded_stages(connection, fresh).items()
    }
    store_problem = store.check()  # a bucket missing or unreachable: stages cannot save
    problems = [] if store_problem is None else [f"result store: {store_problem}"]
    if missing:
        reasons = [
            f"{name}: {'; '.join(sorted({report['reason'] for report in unloaded[name]}))}"
            for name in missing
            if name in unloaded
        ]
        problems.append(
            f"no worker is serving stage(s) {', '.join(missing)}"
            + (f" (weights that did not load: {'; '.join(reasons)})" if reasons else "")
        )
    if shortfall is not None:
        problems.append(f"{shortfall}: workers take no stages until space is freed")
    store_state = {"ok": store_problem is None, "error": store_problem}
    detail = {
        "workers": workers,
        "served": served,
        "unloaded": unloaded,
        "disk": disk,
        "store": store_state,
    }
    if problems:
        return JSONResponse({"error": "; ".join(problems), "detail": detail}, status_code=503)
    return JSONResponse({"status": "ready", **detail})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}},
        503: {"model": ErrorBody},
    },
)
def metrics(connection: RedisDep, settings: SettingsDep) -> Response:
    """Prometheus text: per stage queue depth, in flight, workers, durations, outcomes and
    queue wait; job latency; webhook deliveries; build info; this API process's HTTP requests."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StageCollector(connection, settings.worker_fresh_seconds))
    text = generate_latest(registry) + generate_latest(HTTP)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
