"""Errors as JSON: `{"error": "<what was wrong>", "detail": ...}` for every failure."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from api import request_id as request_ids
from api.headers import EVERY_RESPONSE, RETRY_AFTER_SECONDS
from api.limits import TOO_LARGE, too_large
from jobs.plan import PlanError
from jobs.quotas import QuotaExceeded

log = logging.getLogger(__name__)
MAX_ECHO = 200  # characters of a bad input echoed back in an error's detail


class ErrorJSON(JSONResponse):
    """JSON escaped to ASCII: an error echoes what the client sent, and whatever that holds
    (a lone surrogate too) must not fail the answer that says it was wrong."""

    def render(self, content: object) -> bytes:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def error_response(status_code: int, message: str, detail: object = None) -> JSONResponse:
    response = ErrorJSON({"error": message, "detail": detail}, status_code=status_code)
    if status_code == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _echo(value: object) -> object:
    """A bad input as the error's detail shows it: JSON scalars only, long text cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON: echoed as text
    if isinstance(value, str) and len(value) > MAX_ECHO:
        return value[:MAX_ECHO] + "..."
    return value if isinstance(value, str | int | float | bool | None) else None


def _location(loc: tuple) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "form")]
    return ".".join(parts)


def describe_validation(errors: list[dict]) -> tuple[str, list[dict]]:
    """One sentence naming every bad field, and the errors without unserialisable inputs."""
    sentences, details = [], []
    for error in errors:
        where = _location(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = f"unknown field {where!r}"
        elif error.get("type") == "json_invalid":
            message = "the body is not valid JSON"
        elif where:
            message = f"{where}: {message}"
        sentences.append(message)
        details.append(
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "type": error.get("type"),
                "msg": message,
                "input": _echo(error.get("input")),
            }
        )
    return "invalid request: " + "; ".join(sentences), details


def install(app: FastAPI) -> None:
    """Route every error through one JSON shape."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation(list(exc.errors()))
        if isinstance(exc.body, str | bytes) and not exc.body.strip():
            message = "the request body is empty: send a JSON object"
        return error_response(422, message, details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 413 and exc.detail == TOO_LARGE:
            message = too_large(request.scope)
        detail = None if isinstance(exc.detail, str) else exc.detail
        headers = getattr(exc, "headers", None)
        response = error_response(exc.status_code, message, detail)
        response.headers.update(headers or {})  # e.g. WWW-Authenticate on a 401, Retry-After
        return response

    @app.exception_handler(PlanError)
    async def _unplannable(request: Request, exc: PlanError) -> JSONResponse:
        return error_response(413 if exc.reason == "too_large" else 422, str(exc))

    @app.exception_handler(QuotaExceeded)
    async def _quota(request: Request, exc: QuotaExceeded) -> JSONResponse:
        response = error_response(exc.status_code, str(exc))
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        log.error("redis unavailable for %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "the job queue (Redis) is unavailable; try again shortly")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        request_id = request_ids.current.get()
        response = error_response(
            500, f"internal error; the service logged the details under request id {request_id}"
        )
        # Sent from outside every middleware: the id's and the security headers' added here.
        response.headers[request_ids.HEADER] = request_id
        response.headers.update(EVERY_RESPONSE)
        return response
