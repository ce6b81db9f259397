"""Stage statistics kept in Redis: workers record, the API's /metrics and quotes read.

Workers are other processes (often other machines), so their durations and failures cannot live
in the API's prometheus registry; each stage's counters are one Redis hash instead. Successful
runs also add their work (sampler steps x output pixels, `PlannedStage.cost`), so a quote can
price a new job at the measured seconds per unit of work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from redis import Redis

from jobs.record import JobRecord

# Upper bounds (seconds) of the duration histogram's buckets: tiny CPU runs to long 1024 runs.
BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "canceled", "retried")


def stats_key(stage: str) -> str:
    return f"cascade:stats:{stage}"


def record_stage(
    connection: Redis, stage: str, seconds: float, outcome: str, work: int = 0, batch: int = 1
) -> None:
    """Count one stage run; durations are recorded for successful runs only. A run that gives
    its `work` also adds its share of the wall time: the `batch` jobs sampled in one call
    share its seconds, so measured rates are per job, batched or not."""
    key = stats_key(stage)
    with connection.pipeline() as pipeline:
        pipeline.hincrby(key, f"outcome:{outcome}", 1)
        if outcome == "succeeded":
            pipeline.hincrby(key, f"bucket:{_bucket(seconds)}", 1)
            pipeline.hincrbyfloat(key, "sum", seconds)
            pipeline.hincrby(key, "count", 1)
            if work > 0:
                pipeline.hincrby(key, "work", work)
                pipeline.hincrbyfloat(key, "work_seconds", seconds / batch)
                pipeline.hincrby(key, "work_runs", 1)
        pipeline.execute()


@dataclass(frozen=True)
class StageStats:
    """One stage's counters: cumulative histogram buckets, duration sum, outcome counts, and
    the work (steps x pixels), seconds (each job's share of its batch) and number of the runs
    that reported their work."""

    buckets: list[tuple[float, int]]
    total_seconds: float
    outcomes: dict[str, int]
    work: int = 0
    work_seconds: float = 0.0
    work_runs: int = 0
    wait_buckets: list[tuple[float, int]] = field(default_factory=list)
    wait_seconds: float = 0.0

    @property
    def seconds_per_work(self) -> float | None:
        """Measured seconds per sampler step per output pixel; None before any measured run."""
        return self.work_seconds / self.work if self.work > 0 else None

    @property
    def seconds_per_run(self) -> float | None:
        """Measured seconds one job holds a worker (its share of a batch); None before any."""
        return self.work_seconds / self.work_runs if self.work_runs > 0 else None


def read_stage(connection: Redis, stage: str) -> StageStats:
    fields = {
        (key.decode() if isinstance(key, bytes) else key): float(value)
        for key, value in connection.hgetall(stats_key(stage)).items()
    }
    buckets = _cumulative(fields, "bucket:")
    outcomes = {name: int(fields.get(f"outcome:{name}", 0)) for name in OUTCOMES}
    return StageStats(
        buckets,
        fields.get("sum", 0.0),
        outcomes,
        int(fields.get("work", 0)),
        fields.get("work_seconds", 0.0),
        int(fields.get("work_runs", 0)),
        _cumulative(fields, "wait_bucket:"),
        fields.get("wait_sum", 0.0),
    )


def _cumulative(fields: dict[str, float], prefix: str) -> list[tuple[float, int]]:
    cumulative, buckets = 0, []
    for bound in BUCKETS:
        cumulative += int(fields.get(f"{prefix}{bound}", 0))
        buckets.append((bound, cumulative))
    return buckets


def _bucket(seconds: float) -> float:
    return next(bound for bound in BUCKETS if seconds <= bound)


def queued_at(record: JobRecord, stage: str) -> float | None:
    """When the stage was queued: when its job was made (the first stage), else when the stage
    before it ended."""
    names = [planned.name for planned in record.plan]
    if stage not in names or names.index(stage) == 0:
        return record.time("created_at")
    return record.time(f"{names[names.index(stage) - 1]}.ended_at")


def record_wait(connection: Redis, stage: str, seconds: float) -> None:
    """Count the seconds a stage waited in its queue before its first attempt started."""
    seconds = max(seconds, 0.0)
    with connection.pipeline() as pipeline:
        pipeline.hincrby(stats_key(stage), f"wait_bucket:{_bucket(seconds)}", 1)
        pipeline.hincrbyfloat(stats_key(stage), "wait_sum", seconds)
        pipeline.execute()


JOBS_KEY = "cascade:stats:jobs"


def record_job(connection: Redis, kind: str, status: str, seconds: float) -> None:
    """Count a job's end: seconds from its submission, by kind and end status."""
    seconds, series = max(seconds, 0.0), f"{kind}|{status}"
    with connection.pipeline() as pipeline:
        pipeline.hincrby(JOBS_KEY, f"{series}|bucket:{_bucket(seconds)}", 1)
        pipeline.hincrbyfloat(JOBS_KEY, f"{series}|sum", seconds)
        pipeline.execute()


def read_jobs(
    connection: Redis,
) -> dict[tuple[str, str], tuple[list[tuple[float, int]], float]]:
    """Per (kind, status): the cumulative buckets and the sum of seconds."""
    fields: dict[str, dict[str, float]] = {}
    for key, value in connection.hgetall(JOBS_KEY).items():
        kind, status, name = (key.decode() if isinstance(key, bytes) else key).split("|", 2)
        fields.setdefault(f"{kind}|{status}", {})[name] = float(value)
    return {
        tuple(series.split("|")): (_cumulative(values, "bucket:"), values.get("sum", 0.0))  # type: ignore[misc]
        for series, values in sorted(fields.items())
    }


WEBHOOKS_KEY = "cascade:stats:webhooks"
WEBHOOK_OUTCOMES = ("sent", "failed", "gave_up", "refused", "skipped")


def record_webhook(connection: Redis, outcome: str) -> None:
    connection.hincrby(WEBHOOKS_KEY, outcome, 1)


def read_webhooks(connection: Redis) -> dict[str, int]:
    return {
        (key.decode() if isinstance(key, bytes) else key): int(value)
        for key, value in connection.hgetall(WEBHOOKS_KEY).items()
    }
