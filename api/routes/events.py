"""GET /v1/jobs/{id}/events: the job's event log as Server-Sent Events, live."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Owner
from api.deps import AsyncRedisDep, JobIdDep, unknown_job
from api.schemas import ErrorBody, JobEvent
from jobs.events import EVENT_TYPES, Event, event_id, follow, latest, parse_event_id
from jobs.record import job_key

router = APIRouter(tags=["jobs"])
PING_SECONDS = 15  # a comment line this often keeps proxies from closing a quiet stream
DESCRIPTION = f"""The job's events from the start (or after `Last-Event-ID`), then live until
its terminal event. Each has an `id` (send it back as `Last-Event-ID` to resume), an `event`
type and JSON `data`. Types: {", ".join(EVENT_TYPES)}. The terminal event's data is the job as
`GET /v1/jobs/{{id}}` shows it, and is what a webhook receives. An event id past the end of a
running job's log waits, and ends with the terminal event like any other stream."""


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    description=DESCRIPTION,
    operation_id="get_job_events",
    responses={
        200: {
            "model": JobEvent,  # moved under text/event-stream by api.openapi
            "content": {"text/event-stream": {}},
            "description": "the events, as they come: each is `id:`, `event:` (its type) and "
            "`data:` (JSON) lines, described here as one object per type",
        },
        204: {"description": "the job has ended and `Last-Event-ID` was its last event"},
        **{code: {"model": ErrorBody} for code in (404, 422, 503)},
    },
)
async def job_events(
    job_id: JobIdDep,
    owner: Owner,
    connection: AsyncRedisDep,
    last_event_id: Annotated[str | None, Header(description="resume after this event")] = None,
    after: Annotated[
        str | None, Query(description="resume after this event id (for clients without headers)")
    ] = None,
) -> Response:
    """Server-Sent Events: replay, then follow, the job's event log (DESCRIPTION)."""
    try:  # checked before Redis is asked: it rejects ids past 64 bits mid-stream
        position = parse_event_id(last_event_id or after or "0-0")
    except ValueError as error:
        raise HTTPException(422, f"cannot resume: {error}") from None
    made_by = await connection.hget(job_key(job_id), "owner")
    if made_by is None and not await connection.exists(job_key(job_id)):
        raise unknown_job(job_id)
    if (made_by or b"").decode() != owner:
        raise unknown_job(job_id)
    last = await latest(connection, job_id)
    if last is not None and last.terminal and position >= parse_event_id(last.id):
        return Response(status_code=204)  # EventSource clients stop reconnecting on a 204
    events = follow(connection, job_id, event_id(position))
    return EventSourceResponse(_stream(events), ping=PING_SECONDS)


async def _stream(events: AsyncIterator[Event]) -> AsyncIterator[ServerSentEvent]:
    async for event in events:
        yield ServerSentEvent(data=json.dumps(event.data), event=event.type, id=event.id)
