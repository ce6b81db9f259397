"""Stages whose weights a worker could not load, as the worker's registration in Redis says.

A worker that keeps a stage out (its checkpoint is missing, corrupt or holds NaN) writes which
and why into its RQ worker hash, beside the queues it listens on. The hash is refreshed by the
worker's heartbeat and expires with it, so a report counts only while its worker is alive, by
the same rule as the workers `/readyz` counts. The API reads the reports to say why a stage has
no worker, and to refuse at once a job that needs such a stage instead of queuing it forever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis import Redis
from rq import Worker

from jobs.queues import live_workers, worker_alive
from jobs.quotas import QuotaExceeded
from jobs.settings import Settings

UNLOADED_FIELD = "cascade_unloaded"  # in RQ's worker hash: JSON {stage: reason}
SERVED_KEY = "cascade:served-stages"  # a set: every stage a worker was started for (no expiry)


@dataclass(frozen=True)
class Unloaded:
    """One live worker's report that it could not load a stage."""

    stage: str
    reason: str
    worker: str
    host: str | None


def encode(unloaded: dict[str, str]) -> str:
    """The field's value for a worker keeping `unloaded` (stage -> reason) out."""
    return json.dumps(unloaded, sort_keys=True)


def remember_served(connection: Redis, stages: list[str]) -> None:
    """Note that a worker was started to serve `stages` (whether their weights loaded or not),
    for `served_stages`' default."""
    if stages:
        connection.sadd(SERVED_KEY, *stages)


def served_stages(connection: Redis, settings: Settings, every: tuple[str, ...]) -> list[str]:
    """The stages /readyz requires live workers for, in `every`'s order: `served_stages` when
    set, else those a worker has ever served, else all of `every`."""
    if settings.served_stages:  # checked against the stages by Settings
        wanted = set(settings.served_stages.split(","))
    else:
        wanted = {name.decode() for name in connection.smembers(SERVED_KEY)} or set(every)
    return [name for name in every if name in wanted]


def unloaded_stages(connection: Redis, fresh_seconds: int) -> dict[str, list[Unloaded]]:
    """Stage -> the reports of live workers that could not load it."""
    reports: dict[str, list[Unloaded]] = {}
    for worker in Worker.all(connection=connection):
        raw = connection.hget(worker.key, UNLOADED_FIELD)
        if not raw or not worker_alive(connection, worker.name, fresh_seconds):
            continue
        for stage, reason in json.loads(raw).items():
            reports.setdefault(stage, []).append(
                Unloaded(stage, str(reason), worker.name, worker.hostname)
            )
    return reports


def unavailable(connection: Redis, stages: list[str], fresh_seconds: int) -> dict[str, str]:
    """Of `stages`, those no live worker serves while a live worker reports it could not load
    them; each with the reasons. A stage with no worker and no report is not listed: its
    workers may still be starting, and its jobs wait in its queue as before."""
    missing = [name for name in stages if live_workers(connection, name, fresh_seconds) == 0]
    if not missing:
        return {}
    reports = unloaded_stages(connection, fresh_seconds)
    return {
        name: "; ".join(sorted({report.reason for report in reports[name]}))
        for name in missing
        if name in reports
    }


def check_served(connection: Redis, stages: list[str], settings: Settings) -> None:
    """503 + Retry-After when a stage the job needs is unavailable (see `unavailable`): the
    job could not start until an operator replaces the weights, so the client hears why now
    rather than polling a job that waits in a queue no worker listens on."""
    broken = unavailable(connection, stages, settings.worker_fresh_seconds)
    if broken:
        names = ", ".join(broken)
        raise QuotaExceeded(
            503,
            f"stage(s) {names} cannot run: {'; '.join(broken.values())}. No worker serves "
            f"{names} until its weights are replaced; requests that need none of them still run",
            # A report lasts as long as its worker's heartbeat: by then a restarted worker
            # with mended weights may serve the stage.
            retry_after=settings.worker_fresh_seconds,
        )
