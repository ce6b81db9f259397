"""Request ids: every response carries `X-Request-ID` (the client's own, when it sent a sane
one, else a new one), and every log line written while serving the request carries it too."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import observe_request

HEADER = "X-Request-ID"
SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access = logging.getLogger("api.access")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record ("-" outside a request), for `%(request_id)s`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True


def install_log_filter() -> None:
    """Every handler the root logger has (and any added later by basicConfig) gets the filter,
    so formats may name `%(request_id)s`."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RequestIdFilter) for existing in handler.filters):
            handler.addFilter(RequestIdFilter())


class RequestId:
    """ASGI middleware: the request's id in a context variable, on the response, and in one
    access log line per request (method, path, status, seconds; uvicorn's own is turned off),
    and the request counted in the HTTP metrics by its route template."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER, "")
        request_id = given if SANE.fullmatch(given) else uuid.uuid4().hex
        current.set(request_id)  # left set: the 500 handler, outside this middleware, reads it
        started, status = time.monotonic(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - started
            access.info("%s %s %s %.3f s", scope["method"], scope["path"], status, seconds)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            observe_request(scope["method"], route, status, seconds)
