"""Quotas checked before a job is queued: a request's cost, each stage queue's depth, and, with
API keys, each key's request rate (the `limits` library's moving window, kept in Redis so every
API process shares it) and its jobs that have not ended."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from jobs.lifecycle import Jobs
from jobs.plan import PlannedStage
from jobs.queues import stage_queue
from jobs.settings import Settings
from jobs.status import TERMINAL


class QuotaExceeded(Exception):
    """A request refused for now (429 or 503) or for good (422), with what to tell the client."""

    def __init__(self, status_code: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


def check_cost(plan: list[PlannedStage], settings: Settings) -> None:
    cost = sum(stage.cost for stage in plan)
    if cost > settings.max_cost:
        raise QuotaExceeded(
            422,
            f"this request costs {cost} (sampler steps x output pixels, every stage); the limit "
            f"is {settings.max_cost}: ask for fewer steps or a smaller size",
        )


def check_queue(connection: Redis, stage: str, settings: Settings) -> None:
    depth = stage_queue(connection, stage).count
    if depth >= settings.max_queue_depth:
        raise QuotaExceeded(
            503,
            f"stage {stage} has {depth} jobs waiting, its limit; try again shortly",
            retry_after=30,
        )


def storage_uri(settings: Settings, socket: str | None) -> str:
    """The limits library's URI for the service's Redis."""
    if socket is not None:
        return f"redis+unix://{socket}"
    url = settings.redis_url or ""
    return "redis+unix://" + url.removeprefix("unix://") if url.startswith("unix://") else url


class KeyQuotas:
    """Per-key rate limit and cap on jobs not yet ended."""

    def __init__(self, connection: Redis, settings: Settings, storage_uri: str):
        self.connection = connection
        self.settings = settings
        self.limit = parse(settings.rate_limit)
        self.limiter = MovingWindowRateLimiter(RedisStorage(storage_uri))

    def hit(self, owner: str) -> None:
        """Count one request; 429 past the key's rate."""
        if not self.limiter.hit(self.limit, "cascade", owner):
            reset, _ = self.limiter.get_window_stats(self.limit, "cascade", owner)
            raise QuotaExceeded(
                429,
                f"this API key passed its rate limit ({self.settings.rate_limit}); slow down",
                retry_after=max(1, math.ceil(reset - time.time())),
            )


def check_active(connection: Redis, settings: Settings, jobs: Jobs, owner: str) -> None:
    """429 when the key already has `max_queued_per_key` jobs that have not ended (its set of
    jobs is pruned of ended ones here, so nothing has to be counted down when a job ends)."""
    key = f"cascade:owner:{owner}:jobs"
    for member in connection.zrange(key, 0, -1):
        job_id = member.decode() if isinstance(member, bytes) else str(member)
        record = jobs.get(job_id)
        if record is None or record.status in TERMINAL:
            connection.zrem(key, member)
    active = connection.zcard(key)
    if active >= settings.max_queued_per_key:
        raise QuotaExceeded(
            429,
            f"this API key has {active} jobs queued or running, its limit; wait for one to end "
            "(or cancel one)",
            retry_after=10,
        )


def track(connection: Redis, settings: Settings, owner: str, job_id: str) -> None:
    key = f"cascade:owner:{owner}:jobs"
    connection.zadd(key, {job_id: time.time()})
    connection.expire(key, settings.result_ttl)
