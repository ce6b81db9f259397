"""The FastAPI application: assembled here, nothing else (routes live in `api.routes`)."""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors, openapi
from api.auth import authenticate
from api.headers import SecurityHeaders
from api.limits import BodyLimit
from api.logs import install_safe_records
from api.request_id import RequestId, install_log_filter
from api.routes import docs, events, generations, jobs, page, service, upscales
from api.routes.page import STATIC
from api.schemas import ErrorBody
from cascade import logformat
from jobs.settings import Settings, get_settings

DESCRIPTION = """Generate and upscale images with a cascade of diffusion models
(64x64 class-conditional base, then 4x upscalers to 256 and 1024).

Submit a job (or ask for a quote with `dry_run`), follow it (poll, or Server-Sent Events), fetch
its PNGs. Each stage runs on its own queue; a stage's image is available as soon as the stage
finishes. The web page at `/` does all of this in a browser, and the Python client
(`client/`, `pip install ./client`) from a program.

Where the service has API keys, every `/v1` route needs `Authorization: Bearer <key>`. Errors
are JSON (`ErrorBody`): a sentence saying what was wrong, and details where useful; 429, 503
and 507 say when to retry in `Retry-After`."""
LOG_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# What any /v1 route may answer besides its own: a refused key (401), bad input (422), a rate
# limit (429), Redis unavailable (503, with Retry-After).
V1_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (401, 422, 429, 503)
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; `settings` replaces `get_settings()` (tests, embedding)."""
    # uvicorn configures only its own loggers; in JSON mode they write JSON lines too.
    logformat.configure(text=LOG_TEXT)
    if logformat.log_format() == "json":
        logformat.use_format(
            [h for name in UVICORN_LOGGERS for h in logging.getLogger(name).handlers]
        )
    install_log_filter()
    install_safe_records()
    # /docs and /redoc come from api.routes.docs, which serves their scripts itself.
    app = FastAPI(
        title="cascade",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings

    def current_settings() -> Settings:
        return app.dependency_overrides.get(get_settings, get_settings)()

    app.add_middleware(BodyLimit, settings=current_settings)
    app.add_middleware(SecurityHeaders)  # outside the body limit: its 413 carries them too
    app.add_middleware(RequestId)  # outermost: every answer carries the id, a 413 too
    errors.install(app)
    keyed = [Depends(authenticate)]  # every /v1 route, when API keys are set
    for module in (generations, upscales, jobs, events):
        app.include_router(module.router, dependencies=keyed, responses=V1_ERRORS)
    for module in (service, page, docs):  # /v1/classes and /v1/limits take the key themselves
        app.include_router(module.router)
    openapi.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(docs.ASSETS, StaticFiles(directory=docs.ASSET_FILES), name="docs-assets")
    logging.getLogger(__name__).info("cascade API ready (store %s)", current_settings().store)
    return app
