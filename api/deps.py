"""Dependencies routes declare with `Annotated`: settings, Redis, job records, the store."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from jobs.connection import connect, connect_async
from jobs.lifecycle import Jobs
from jobs.settings import Settings, get_settings
from jobs.store import JOB_ID, Store, open_store

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_redis(request: Request, settings: SettingsDep) -> Redis:
    """One client (and connection pool) per app, made on first use."""
    state = request.app.state
    if getattr(state, "redis", None) is None:
        state.redis = connect(settings)
    return state.redis


RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_async_redis(request: Request, settings: SettingsDep) -> AsyncRedis:
    """One asyncio client per app and event loop (its connections belong to the loop)."""
    state, loop = request.app.state, asyncio.get_running_loop()
    if getattr(state, "async_redis_loop", None) is not loop:
        state.async_redis, state.async_redis_loop = connect_async(settings), loop
    return state.async_redis


AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]


def get_store(request: Request, settings: SettingsDep) -> Store:
    state = request.app.state
    if getattr(state, "store", None) is None:
        # No long retries: a download while the store is down answers 503 + Retry-After at once
        # instead of holding the request (the client retries; workers ride outages out).
        state.store = open_store(settings, retry_seconds=0)
    return state.store


def get_jobs(request: Request, connection: RedisDep, settings: SettingsDep) -> Jobs:
    """Job control; a cancel's end writes job.json to the result store."""
    return Jobs(
        connection, settings.result_ttl, settings=settings, store=get_store(request, settings)
    )


def unknown_job(job_id: str) -> HTTPException:
    """404 for a job that does not exist (or that another key made)."""
    shown = job_id if len(job_id) <= 64 else job_id[:61] + "..."
    return HTTPException(404, f"no job {shown!r} (unknown, or expired from the job list)")


def get_job_id(job_id: Annotated[str, Path(description="the id a submission returned")]) -> str:
    """The path's job id; 404 before Redis is asked when it is not one this service makes (any
    other text could name another of its keys, e.g. `<id>:events`)."""
    if not JOB_ID.fullmatch(job_id):
        raise unknown_job(job_id)
    return job_id


JobIdDep = Annotated[str, Depends(get_job_id)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
StoreDep = Annotated[Store, Depends(get_store)]
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="the same key within 24 h returns the same job instead of a new one",
    ),
]
