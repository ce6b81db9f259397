"""The OpenAPI document, completed for people and generators: operation ids from the route
functions (`create_generation`), the Bearer scheme on every /v1 route, each error status
described (with `Retry-After` where one is sent), and examples that the service accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

BEARER = "bearer"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, where the service has keys (`CASCADE_API_KEY_HASHES`); "
    "otherwise no Authorization header is needed.",
}
# What each error status means, wherever it is answered; those marked say when to retry.
ERRORS: dict[str, tuple[str, bool]] = {
    "401": ("no API key, or an unknown one (only where the service has keys)", False),
    "404": ("no such job, stage or image (or another key's job)", False),
    "409": ("the job has not made that image (yet, or ever): the error says why", False),
    "413": (
        "the body is larger than the service takes (10 MiB uploads, 64 KiB JSON by "
        "default) or the output larger than its pixel limit",
        False,
    ),
    "415": ("a content type or image format the route does not read", False),
    "422": ("a field is missing or out of range; the error names it and what is allowed", False),
    "429": (
        "the key's rate limit or queued-job limit, or too many failed authentications "
        "from this address",
        True,
    ),
    "503": (
        "Redis or the result store is unreachable, the stage's queue is full, or no "
        "worker can run a stage the request needs",
        True,
    ),
    "507": ("the result disk is under its free-space floor; the error gives the free space", True),
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}
JOB_ID = "3f2c7a9e4b1d4e6f8a0b2c4d6e8f0a1b"
LINKS = {
    "self": f"/v1/jobs/{JOB_ID}",
    "result": f"/v1/jobs/{JOB_ID}/result",
    "stages": {
        "base64": f"/v1/jobs/{JOB_ID}/stages/base64",
        "sr256": f"/v1/jobs/{JOB_ID}/stages/sr256",
    },
    "cancel": f"/v1/jobs/{JOB_ID}",
    "events": f"/v1/jobs/{JOB_ID}/events",
}
# Request examples, in classes the demo base knows (`weights/demo/base64.md`).
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("/v1/generations", "application/json"): {
        "tabby": {
            "summary": "a 256 px tabby cat, reproducible by its seed",
            "value": {"class_name": "tabby", "size": 256, "seed": 42},
        },
        "espresso": {
            "summary": "by class id, at 1024 px, with a sampler and steps",
            "value": {"class_id": 967, "size": 1024, "sampler": "dpmpp_2m", "steps": 25},
        },
        "webp": {
            "summary": "a WebP at quality 85 (its XMP holds the parameters that made it)",
            "value": {"class_name": "tabby", "size": 256, "format": "webp", "quality": 85},
        },
        "quote": {
            "summary": "a quote: queues nothing",
            "value": {"class_name": "tabby", "size": 1024, "dry_run": True},
        },
    },
    ("/v1/upscales", "multipart/form-data"): {
        "by4": {
            "summary": "upscale by 4 with the wavelet colour fix",
            "value": {"file": "photo.png", "scale": 4, "color_fix": "wavelet"},
        },
        "faithful": {
            "summary": "the most faithful upscale, sampled as is",
            "value": {"file": "photo.png", "scale": 4, "fidelity": 1, "low_band": "sample"},
        },
        "jpeg": {
            "summary": "a JPEG at quality 90 (the input's ICC profile and EXIF carried over)",
            "value": {"file": "photo.jpg", "scale": 4, "format": "jpeg", "quality": 90},
        },
    },
}
RESPONSE_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/generations", "202"): {
        "id": JOB_ID,
        "status": "queued",
        "seed": 42,
        "stages": ["base64", "sr256"],
        "links": LINKS,
        "random_weights": False,
        "warning": None,
        "replayed": False,
    },
    ("/v1/generations", "422"): {
        "error": "invalid request: size: Input should be 64, 256 or 1024",
        "detail": [
            {
                "loc": ["body", "size"],
                "type": "literal_error",
                "msg": "size: Input should be 64, 256 or 1024",
                "input": 100,
            }
        ],
    },
    ("/v1/generations", "503"): {
        "error": "the job queue (Redis) is unavailable; try again shortly",
        "detail": None,
    },
}


def operation_id(route: APIRoute) -> str:
    """The route function's name (`create_generation`), not FastAPI's path-mangled default."""
    return route.name


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document with the security scheme, error descriptions and examples added."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = SECURITY_SCHEME
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                operation["security"] = [{BEARER: []}, {}]  # {}: where no keys are set
            for status, response in operation["responses"].items():
                _describe_error(status, response)
                _event_stream(response)
                example = RESPONSE_EXAMPLES.get((path, status))
                if example is not None:
                    response["content"]["application/json"]["example"] = example
            body = operation.get("requestBody", {}).get("content", {})
            for media_type, content in body.items():
                examples = REQUEST_EXAMPLES.get((path, media_type))
                if examples is not None:
                    content["examples"] = examples
    # FastAPI's own validation error shapes: this service answers every 422 with ErrorBody.
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    return schema


def _event_stream(response: dict[str, Any]) -> None:
    """An event stream's event schema, which FastAPI files under JSON, moved to where it is
    sent: under text/event-stream."""
    content = response.get("content", {})
    if "text/event-stream" in content and "application/json" in content:
        content["text/event-stream"] = content.pop("application/json")


def _describe_error(status: str, response: dict[str, Any]) -> None:
    if status not in ERRORS:
        return
    description, retry = ERRORS[status]
    response["description"] = description
    if retry:
        response["headers"] = RETRY_AFTER
