"""One RQ queue per stage, ordered by priority and fair share between keys (`jobs.fairness`);
stage jobs are enqueued by dotted path with JSON arguments only."""

from __future__ import annotations

from datetime import UTC, datetime

from redis import Redis
from rq import Callback, Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs.fairness import place
from jobs.settings import Settings

RUN_STAGE = "workers.stage.run_stage"  # by name: the API must not import the worker's torch code
ON_FAILURE = "workers.stage.on_stage_failure"


def queue_name(stage: str) -> str:
    return f"cascade-{stage}"


def stage_queue(connection: Redis, stage: str) -> Queue:
    """The stage's queue; JSON-serialized so no pickle ever crosses it."""
    return Queue(queue_name(stage), connection=connection, serializer=JSONSerializer)


def live_workers(connection: Redis, stage: str, fresh_seconds: int) -> int:
    """Workers on the stage's queue whose heartbeat is at most `fresh_seconds` old: a killed
    worker's key outlives it by RQ's worker TTL, and must not count meanwhile."""
    workers = Worker.all(queue=stage_queue(connection, stage))
    return sum(1 for worker in workers if _fresh(worker, fresh_seconds))


def worker_alive(connection: Redis, name: str, fresh_seconds: int) -> bool:
    """Whether the worker called `name` has beaten its heartbeat in the last `fresh_seconds`."""
    worker = Worker.find_by_key(f"{Worker.redis_worker_namespace_prefix}{name}", connection)
    return worker is not None and _fresh(worker, fresh_seconds)


def _fresh(worker: Worker, fresh_seconds: int) -> bool:
    beat = worker.last_heartbeat
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)  # RQ stores UTC
    return (datetime.now(UTC) - beat).total_seconds() <= fresh_seconds


def stage_job_id(job_id: str, stage: str) -> str:
    """The RQ job id of one stage of a job: stable, so a cancel can find it."""
    return f"{job_id}-{stage}"


def stage_job_exists(connection: Redis, job_id: str, stage: str) -> bool:
    """Whether the stage's RQ job was ever queued (and has not expired)."""
    return Job.exists(stage_job_id(job_id, stage), connection=connection)


def enqueue_stage(
    connection: Redis,
    settings: Settings,
    job_id: str,
    stage: str,
    *,
    owner: str = "",
    priority: str = "normal",
) -> Job:
    """Queue one stage of a job at its place: by priority, then taking turns between API keys
    (`jobs.fairness`); crashes and killed workers are retried `settings.retries` times."""
    retry = Retry(max=settings.retries) if settings.retries > 0 else None
    queue = stage_queue(connection, stage)
    job = queue.enqueue(
        RUN_STAGE,
        job_id,
        stage,
        job_id=stage_job_id(job_id, stage),
        job_timeout=settings.timeout_for(stage),
        retry=retry,
        on_failure=Callback(ON_FAILURE),
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        description=f"job {job_id} stage {stage}",
    )
    place(connection, queue.key, queue.name, job.id, owner, priority)
    return job


def cancel_stage(connection: Redis, job_id: str, stage: str) -> None:
    """Take a stage job off its queue if it has not started (a running one stops by itself)."""
    try:
        job = Job.fetch(
            stage_job_id(job_id, stage), connection=connection, serializer=JSONSerializer
        )
    except NoSuchJobError:
        return
    if job.get_status() in ("queued", "scheduled", "deferred"):
        job.cancel()
