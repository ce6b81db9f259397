"""Each owner's jobs, newest first: a Redis sorted set per owner (member: the job id, score: its
creation time), paged by an opaque cursor that names the last job a page showed.

Ids stay in the index after their record expires; a listing skips and removes them, and
indexing a job prunes those older than any record can live.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from redis import Redis

from jobs.lifecycle import Jobs
from jobs.record import JobRecord
from jobs.status import JobStatus

MAX_LIMIT = 100  # jobs per page: each is a record read and a view built
DEFAULT_LIMIT = 20
BATCH = 50  # index entries read at a time while a status filter skips jobs


class BadCursor(ValueError):
    """A `cursor` that no page of this listing handed out."""


def index_key(owner: str) -> str:
    """The owner's index ("" without API keys: every job)."""
    return f"cascade:jobs-by-owner:{owner}"


def index_job(
    connection: Redis, owner: str, job_id: str, ttl: int, now: float | None = None
) -> None:
    """Add a new job to its owner's index; drop entries no record can outlive (a record lives
    `ttl` after its job ends, so twice that bounds all but jobs that ran longer than `ttl`)."""
    now = time.time() if now is None else now
    key = index_key(owner)
    with connection.pipeline() as pipeline:
        pipeline.zadd(key, {job_id: now})
        pipeline.zremrangebyscore(key, "-inf", now - 2 * ttl)
        pipeline.expire(key, 2 * ttl)
        pipeline.execute()


def encode_cursor(score: float, job_id: str) -> str:
    return f"{score!r}_{job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    score, _, job_id = cursor.partition("_")
    try:
        value = float(score)
    except ValueError:
        raise BadCursor(f"cursor {cursor[:80]!r} is not one a page of GET /v1/jobs gave") from None
    if not job_id:
        raise BadCursor(f"cursor {cursor[:80]!r} is not one a page of GET /v1/jobs gave")
    return value, job_id


def _entries(connection: Redis, key: str, cursor: str | None) -> Iterator[tuple[str, float]]:
    """Index entries newest first, after `cursor`; jobs made at the same time by id, descending."""
    after = decode_cursor(cursor) if cursor is not None else None
    top: float | str = after[0] if after is not None else "+inf"
    offset = 0  # entries at score `top` already read: the next read starts past them
    while True:
        batch = connection.zrevrangebyscore(
            key, top, "-inf", start=offset, num=BATCH, withscores=True
        )
        for member, score in batch:
            job_id = member.decode() if isinstance(member, bytes) else str(member)
            top, offset = (top, offset + 1) if score == top else (score, 1)
            if after is not None and score == after[0] and job_id >= after[1]:
                continue  # the cursor's page showed it
            yield job_id, score
        if len(batch) < BATCH:
            return


def page(
    connection: Redis,
    jobs: Jobs,
    owner: str,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    status: JobStatus | None = None,
) -> tuple[list[JobRecord], str | None]:
    """Up to `limit` of the owner's jobs (with `status`, if given) after `cursor`, newest first,
    and the cursor of the next page (None: this was the last)."""
    key = index_key(owner)
    found: list[JobRecord] = []
    entries = _entries(connection, key, cursor)
    for job_id, score in entries:
        record = jobs.get(job_id)
        if record is None:
            connection.zrem(key, job_id)  # its record expired
            continue
        if record.owner != owner or (status is not None and record.status != status):
            continue
        found.append(record)
        if len(found) == limit:
            # Another page only if some entry follows (it may be filtered out there: then the
            # next page is empty, which is cheaper than reading ahead to be sure).
            more = next(entries, None) is not None
            return found, encode_cursor(score, job_id) if more else None
    return found, None
