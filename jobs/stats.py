"""Stage statistics kept in Redis: workers record, the API's /metrics reads.

Workers are other processes (often other machines), so their durations and failures cannot live
in the API's prometheus registry; each stage's counters are one Redis hash instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis

# Upper bounds (seconds) of the duration histogram's buckets: tiny CPU runs to long 1024 runs.
BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "canceled", "retried")


def stats_key(stage: str) -> str:
    return f"cascade:stats:{stage}"


def record_stage(connection: Redis, stage: str, seconds: float, outcome: str) -> None:
    """Count one stage run; durations are recorded for successful runs only."""
    key = stats_key(stage)
    with connection.pipeline() as pipeline:
        pipeline.hincrby(key, f"outcome:{outcome}", 1)
        if outcome == "succeeded":
            bound = next(bound for bound in BUCKETS if seconds <= bound)
            pipeline.hincrby(key, f"bucket:{bound}", 1)
            pipeline.hincrbyfloat(key, "sum", seconds)
            pipeline.hincrby(key, "count", 1)
        pipeline.execute()


@dataclass(frozen=True)
class StageStats:
    """One stage's counters: cumulative histogram buckets, duration sum, outcome counts."""

    buckets: list[tuple[float, int]]
    total_seconds: float
    outcomes: dict[str, int]


def read_stage(connection: Redis, stage: str) -> StageStats:
    fields = {
        (key.decode() if isinstance(key, bytes) else key): float(value)
        for key, value in connection.hgetall(stats_key(stage)).items()
    }
    cumulative, buckets = 0, []
    for bound in BUCKETS:
        cumulative += int(fields.get(f"bucket:{bound}", 0))
        buckets.append((bound, cumulative))
    outcomes = {name: int(fields.get(f"outcome:{name}", 0)) for name in OUTCOMES}
    return StageStats(buckets, fields.get("sum", 0.0), outcomes)
