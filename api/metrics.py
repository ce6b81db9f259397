"""Prometheus metrics. The stages' are read from Redis at scrape time: the workers that
produce them are other processes, so they record into Redis (`jobs.stats`) and this collector
reports it. The API's own HTTP requests are counted in this process (`HTTP`, one registry per
API process: with several, sum them in Prometheus)."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Histogram
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
from jobs.stats import WEBHOOK_OUTCOMES, read_jobs, read_stage, read_webhooks

HTTP = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "cascade_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
    registry=HTTP,
)
LATENCY = Histogram(
    "cascade_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer's end, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=HTTP,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (`route`: the template, e.g. /v1/jobs/{job_id}, so ids do
    not make a series each; "unmatched" for paths no route serves)."""
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


@functools.cache
def _version() -> str:
    try:
        return version("cascade")
    except PackageNotFoundError:
        return "unknown"


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
        waits = HistogramMetricFamily(
            "cascade_queue_wait_seconds",
            "Seconds a stage waited in its queue before its first attempt started",
            labels=["stage"],
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
            waits_seen = [(_bound(bound), count) for bound, count in stats.wait_buckets]
            waits.add_metric([stage], waits_seen, stats.wait_seconds)
        jobs = HistogramMetricFamily(
            "cascade_job_duration_seconds",
            "Seconds from a job's submission to its end, by kind and end status",
            labels=["kind", "status"],
        )
        for (kind, status), (buckets, total) in read_jobs(self.connection).items():
            jobs.add_metric([kind, status], [(_bound(b), n) for b, n in buckets], total)
        webhooks = CounterMetricFamily(
            "cascade_webhook_deliveries",
            "Webhook delivery attempts by outcome (sent, failed and retried, given up, "
            "refused by the address rules, skipped)",
            labels=["outcome"],
        )
        counts = read_webhooks(self.connection)
        for outcome in WEBHOOK_OUTCOMES:
            webhooks.add_metric([outcome], counts.get(outcome, 0))
        build = GaugeMetricFamily(
            "cascade_build_info", "The API's version and Python", labels=["version", "python"]
        )
        build.add_metric([_version(), platform.python_version()], 1)
        yield from (depth, in_flight, workers, durations, runs, failures, retries, canceled)
        yield from (waits, jobs, webhooks, build)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)
