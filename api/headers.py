"""Headers every response carries: no content sniffing and no referrer on any; on the web page
and its static files a content policy that admits only the service's own script, style,
requests and images (and blob: stage images, data: live previews), in no frame; and on every
503 a `Retry-After`."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_SECONDS = 5  # what a 503 tells clients to wait: Redis or the store back, a worker up
# The page keeps its API key in localStorage, so no script but its own may run: no inline
# script or handler (api/static has none), no eval, nothing from elsewhere. Stage images and
# downloads are blob: URLs made from fetched files; the live previews that progress events
# carry are data: URLs, allowed for images only (an image runs no script); the comparison is
# drawn on a canvas.
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE = {"Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY"}


def is_page(path: str) -> bool:
    """The web page and its files (not /docs and /redoc, whose pages FastAPI writes with an
    inline script)."""
    return path == "/" or path.startswith("/static/")


class SecurityHeaders:
    """ASGI middleware adding the headers above to each response it passes on."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = {**EVERY_RESPONSE, **(PAGE if is_page(scope["path"]) else {})}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    headers.setdefault(name, value)
                if message["status"] == 503:  # whoever made it, it says when to come back
                    headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
            await send(message)

        await self.app(scope, receive, send_with_headers)
