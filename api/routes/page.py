"""The web page: `/` serves it; its script and style are static files under `/static`, and
the status and event vocabulary it follows jobs by is made here from `jobs.status` and
`jobs.events`, where it is defined once."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from jobs.events import EVENT_TYPES
from jobs.status import TERMINAL, JobStatus, StageStatus

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """Generate, upscale and follow jobs in a browser (it calls the API like any client)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/vocabulary.js", include_in_schema=False)
def vocabulary() -> Response:
    """The statuses and event types as a JavaScript module the page imports."""
    names = {
        "JOB_STATUSES": [status.value for status in JobStatus],
        "STAGE_STATUSES": [status.value for status in StageStatus],
        "TERMINAL": [status.value for status in TERMINAL],
        "EVENT_TYPES": list(EVENT_TYPES),
    }
    text = "".join(f"export const {name} = {json.dumps(value)};\n" for name, value in names.items())
    return Response(text, media_type="text/javascript", headers={"Cache-Control": "no-cache"})
