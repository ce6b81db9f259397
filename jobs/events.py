"""The job's event log: one Redis stream per job (`cascade:job:{id}:events`), the story that
polling, Server-Sent Events and webhooks all tell.

Job control (`jobs.lifecycle.Jobs`) appends an event at every state change: `queued` when the API
accepts the job, `stage_started`, `progress` (at most every `PROGRESS_INTERVAL` seconds per
stage, and always on a stage's first and last step and on the `CASCADE_PREVIEWS_PER_STAGE` steps
whose event carries a live `preview`, a WebP data URL of at most 16 KB of the sampler's current
estimate), `stage_finished` with the stage's preview,
`stage_retrying` when a crashed stage is queued again, and exactly one terminal event,
`succeeded`, `failed` or `canceled`, whose data is the job's view at its end (what webhooks
post). Nothing follows the terminal event: every other append is refused, in one Lua script,
once the job's record says it has ended. The stream lives as long as the job record.

An event's id is its stream entry id (`<milliseconds>-<sequence>`), which SSE clients send back
as `Last-Event-ID` to resume after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, get_args

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from jobs.status import TERMINAL, lua_ended

EventType = Literal[
    "queued",
    "stage_started",
    "progress",
    "stage_finished",
    "stage_retrying",
    "succeeded",
    "failed",
    "canceled",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
TERMINAL_EVENTS: tuple[str, ...] = tuple(status.value for status in TERMINAL)
PROGRESS_INTERVAL = 0.5  # seconds between a stage's progress events (its last step always goes)
MAX_EVENTS = 5000  # a guard, never reached by throttled progress: the stream is trimmed beyond it
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # ASCII digits: Redis reads no others
MAX_ID_PART = 2**64 - 1  # each part of a stream id is an unsigned 64-bit integer in Redis

# KEYS: the job's record, its stream. ARGV: ttl, max length, type, data, whether to append only
# while the record says the job is active ("1") or whatever it says ("0").
_APPEND = f"""
if ARGV[5] == '1' then
  local status = redis.call('HGET', KEYS[1], 'status')
  if {lua_ended("status")} then
    return false
  end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
                      'type', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return id
"""


def events_key(job_id: str) -> str:
    return f"cascade:job:{job_id}:events"


def parse_event_id(text: str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), each within Redis's unsigned 64-bit
    range; ValueError saying what one looks like."""
    match = EVENT_ID.fullmatch(text.strip())
    if match is None or max(int(part) for part in match.groups()) > MAX_ID_PART:
        shown = text if len(text) <= 64 else text[:61] + "..."
        raise ValueError(
            f"{shown!r} is not an event id: event ids look like 1712345678901-0 (the `id` of an "
            f"event this job sent; each part at most {MAX_ID_PART})"
        )
    return int(match[1]), int(match[2])


def event_id(position: tuple[int, int]) -> str:
    """The stream id of (milliseconds, sequence)."""
    return f"{position[0]}-{position[1]}"


@dataclass(frozen=True)
class Event:
    """One entry of a job's log: its stream id, its type and its JSON data."""

    id: str
    type: str
    data: dict[str, object]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict) -> Event:
        values = {_text(key): _text(value) for key, value in fields.items()}
        return cls(_text(entry_id), values["type"], json.loads(values["data"]))


class EventLog:
    """Appends to and reads job event logs (the appending side belongs to `jobs.lifecycle.Jobs`)."""

    def __init__(self, connection: Redis, ttl: int):
        self.connection = connection
        self.ttl = ttl
        self._append = connection.register_script(_APPEND)

    def append(
        self,
        record_key: str,
        job_id: str,
        type: EventType,
        data: dict[str, object],
        *,
        while_active: bool = True,
    ) -> str | None:
        """Append an event; its id, or None when `while_active` and the record at `record_key`
        has ended (or is gone)."""
        reply = self._append(
            keys=[record_key, events_key(job_id)],
            args=[self.ttl, MAX_EVENTS, type, json.dumps(data), "1" if while_active else "0"],
        )
        return _text(reply) if reply else None

    def read(self, job_id: str, after: str = "0-0", count: int | None = None) -> list[Event]:
        """The events after the one with id `after` (all of them from "0-0"), oldest first."""
        entries = self.connection.xrange(events_key(job_id), min=f"({after}", count=count)
        return [Event.from_entry(entry_id, fields) for entry_id, fields in entries]

    def last(self, job_id: str) -> Event | None:
        entries = self.connection.xrevrange(events_key(job_id), count=1)
        return Event.from_entry(*entries[0]) if entries else None


async def latest(connection: AsyncRedis, job_id: str) -> Event | None:
    """The job's last event (asyncio client)."""
    entries = await connection.xrevrange(events_key(job_id), count=1)
    return Event.from_entry(*entries[0]) if entries else None


async def follow(
    connection: AsyncRedis, job_id: str, after: str = "0-0", wait: float = 15.0
) -> AsyncIterator[Event]:
    """The events after the one with id `after`, then each one as it is appended, until the
    terminal event; ends early if the log expires. An `after` past the log's end waits from
    the end, yielding only the terminal event (later events may still have smaller ids).
    Waits on the stream `wait` seconds at a time (asyncio client: a waiting reader holds a
    connection, not a thread)."""
    key = events_key(job_id)
    position = parse_event_id(after)
    last = await latest(connection, job_id)
    cursor = event_id(min(position, parse_event_id(last.id) if last is not None else (0, 0)))
    while True:
        reply = await connection.xread({key: cursor}, count=100, block=int(wait * 1000))
        if not reply:
            if not await connection.exists(key):
                return
            continue
        for entry_id, fields in reply[0][1]:
            event = Event.from_entry(entry_id, fields)
            cursor = event.id
            if event.terminal or parse_event_id(event.id) > position:
                yield event
            if event.terminal:
                return


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
