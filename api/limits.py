"""Request body limits, counted on the stream as the bytes arrive (chunked or not) by
Starlette's `RequestBodyLimitMiddleware`, so no body past its limit is ever buffered in memory
or spooled to disk; a declared Content-Length past it is refused before any byte is read."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from jobs.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024  # form fields and part boundaries around the file
UPLOAD_PATHS = frozenset({"/v1/upscales"})
TOO_LARGE = "Content Too Large"  # the detail Starlette's limiter raises its 413 with


def body_limit(settings: Settings, path: str) -> int:
    """An upload's whole multipart body (the file and its fields), else a JSON request's."""
    if path in UPLOAD_PATHS:
        return settings.max_upload_bytes + MULTIPART_OVERHEAD
    return settings.max_json_bytes


def too_large(scope: Scope) -> str:
    """What a client is told when its body passed the limit."""
    limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    return "the request body is too large" + (
        f": this endpoint accepts at most {limit} bytes" if limit is not None else ""
    )


class BodyLimit:
    """ASGI middleware: each request's body limit, chosen by its path."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings(), scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit():
            # Past 20 digits it is past any limit (and past what int() reads at 4300).
            size = int(declared) if len(declared) <= 20 else None
            if size is None or size > limit:
                what = (
                    f"of {size} bytes"
                    if size is not None
                    else f"with a {len(declared)}-digit length"
                )
                await refuse(send, f"request body {what} is too large", limit)
                return
        await RequestBodyLimitMiddleware(self.app, limit)(scope, receive, send)


async def refuse(send: Send, what: str, limit: int) -> None:
    """A 413 in the API's error shape, closing the connection (the body is never read)."""
    body = json.dumps(
        {"error": f"{what}: this endpoint accepts at most {limit} bytes", "detail": None}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
