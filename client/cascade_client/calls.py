"""What each call sends, the same for the sync and async clients: paths, JSON bodies, multipart
forms, headers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cascade_client.errors import APIError
from cascade_client.models import Job

USER_AGENT = "cascade-client/0.1.0"
IMAGE_TYPES = (  # (magic bytes, media type) of the formats the service takes
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"RIFF", "image/webp"),
)


@dataclass(frozen=True)
class Call:
    """One HTTP request, described: retried as is, with the same Idempotency-Key."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def auth_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def idempotent(idempotency_key: str | None) -> dict[str, str]:
    """A POST's Idempotency-Key: the caller's, else a fresh one; either way every retry of
    the call sends the same key, so a retried POST never makes a second job."""
    return {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not None}


def generation(
    class_id: int | None,
    class_name: str | None,
    size: int,
    options: dict[str, Any],
    idempotency_key: str | None,
) -> Call:
    if (class_id is None) == (class_name is None):
        raise ValueError("give exactly one of class_id (0..999) or class_name")
    body = {"size": size, **_options(options)}
    body["class_id" if class_id is not None else "class_name"] = (
        class_id if class_id is not None else class_name
    )
    return Call("POST", "/v1/generations", json=body, headers=idempotent(idempotency_key))


def upscale(
    image: str | Path | bytes,
    scale: int | None,
    target_size: int | None,
    options: dict[str, Any],
    filename: str | None,
    idempotency_key: str | None,
) -> Call:
    if isinstance(image, bytes):
        data, name = image, filename or "image"
    else:
        path = Path(image)
        data, name = path.read_bytes(), filename or path.name
    fields = _options({"scale": scale, "target_size": target_size, **options})
    form = {name_: _form_value(value) for name_, value in fields.items()}
    files = {"file": (name, data, media_type(data))}
    return Call("POST", "/v1/upscales", data=form, files=files, headers=idempotent(idempotency_key))


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def media_type(data: bytes) -> str:
    """The image's type from its first bytes (the service reads the bytes, not this)."""
    for magic, kind in IMAGE_TYPES:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def checked(response: httpx.Response) -> httpx.Response:
    """The response, or APIError with the service's message when it is a 4xx/5xx."""
    if response.status_code >= 400:
        raise APIError.from_response(response)
    return response


def job(response: httpx.Response) -> Job:
    return Job.from_json(checked(response).json())


def image_path(job_id: str, stage: str | None) -> str:
    return job_path(job_id, "/result" if stage is None else f"/stages/{quote(stage, safe='')}")


def write(content: bytes, path: str | Path | None) -> bytes:
    """The image's bytes, also written to `path` where one is given (via a temporary file
    renamed into place, so a half-written file never takes its name)."""
    if path is not None:
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(content)
        partial.replace(target)
    return content
