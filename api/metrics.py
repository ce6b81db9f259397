"""Prometheus metrics read from Redis at scrape time: the workers that produce them are other
processes, so they record into Redis (`jobs.stats`) and this collector reports it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis

from cascade.stages import STAGES
from jobs.queues import live_workers, stage_queue
from jobs.stats import read_stage


class StageCollector(Collector):
    """Queue depth, workers, duration histogram and outcome counters, per stage."""

    def __init__(self, connection: Redis, fresh_seconds: int):
        self.connection = connection
        self.fresh_seconds = fresh_seconds  # workers count while their heartbeat is this recent

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "cascade_queue_depth", "Stage jobs waiting in the queue", labels=["stage"]
        )
        # Queued and in flight per stage: what a queue-length autoscaler (KEDA) scales on;
        # scaling on the queue alone would stop workers whose stages are still running.
        in_flight = GaugeMetricFamily(
            "cascade_stage_in_flight", "Stage jobs a worker is running now", labels=["stage"]
        )
        workers = GaugeMetricFamily(
            "cascade_workers", "Workers listening on the stage's queue", labels=["stage"]
        )
        durations = HistogramMetricFamily(
            "cascade_stage_duration_seconds",
            "Wall time of successful stage runs",
            labels=["stage"],
        )
        failures = CounterMetricFamily(
            "cascade_stage_failures",
            "Stage runs that failed (after their last retry)",
            labels=["stage"],
        )
        retries = CounterMetricFamily(
            "cascade_stage_retries", "Stage runs that crashed and were retried", labels=["stage"]
        )
        canceled = CounterMetricFamily(
            "cascade_stage_canceled", "Stage runs stopped by a cancel", labels=["stage"]
        )
        runs = CounterMetricFamily(
            "cascade_stage_runs", "Stage runs that succeeded", labels=["stage"]
        )
        for stage in STAGES:
            queue = stage_queue(self.connection, stage)
            depth.add_metric([stage], queue.count)
            in_flight.add_metric([stage], queue.started_job_registry.count)
            workers.add_metric([stage], live_workers(self.connection, stage, self.fresh_seconds))
            stats = read_stage(self.connection, stage)
            buckets = [(_bound(bound), count) for bound, count in stats.buckets]
            durations.add_metric([stage], buckets, stats.total_seconds)
            runs.add_metric([stage], stats.outcomes["succeeded"])
            failures.add_metric([stage], stats.outcomes["failed"])
            retries.add_metric([stage], stats.outcomes["retried"])
            canceled.add_metric([stage], stats.outcomes["canceled"])
        yield from (depth, in_flight, workers, durations, runs, failures, retries, canceled)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)
