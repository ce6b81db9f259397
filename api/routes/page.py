"""The web page: `/` serves it; its script and style are static files under `/static`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """Generate, upscale and follow jobs in a browser (it calls the API like any client)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
