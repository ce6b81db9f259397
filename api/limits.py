"""Refuse oversized uploads from their Content-Length, before any byte of the body is read."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from jobs.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024  # form fields and part boundaries around the file


class UploadLimit:
    """ASGI middleware: a POST whose declared body exceeds the upload limit gets 413 at once
    (the route checks the bytes it reads too, for bodies sent without a length)."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            limit = self.settings().max_upload_bytes + MULTIPART_OVERHEAD
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                body = json.dumps(
                    {
                        "error": f"request body of {int(length)} bytes is too large: "
                        f"files may have at most {self.settings().max_upload_bytes} bytes",
                        "detail": None,
                    }
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
                return
        await self.app(scope, receive, send)
