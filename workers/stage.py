"""The stage job: run one stage of a job, store its output, hand on to the next stage's queue.

Every step is idempotent so a retried stage (after a crash or a killed worker) resumes the job:
the input is the previous stage's stored float tensor, and a stage that already finished only
hands on again. Seeds are per stage (`stage_seed`), so a rerun gives the same image, and so
does a run batched with other jobs (`workers.batching`).

Each run holds its stage's lease (`jobs.lifecycle`): one whose stage was taken over by a newer
attempt stops at its next sampler step and writes nothing, and one whose worker is stopping
past its grace period hands the stage back (queued again at the front) instead of finishing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job, Retry
from rq.timeouts import JobTimeoutException
from torch import Tensor

from cascade import logformat
from cascade.checkpoints import CheckpointError
from cascade.images import bytes_to_tensor, tensor_to_bytes, to_png
from cascade.pipeline import Stage, StageError
from cascade.samplers import SamplingCanceled
from jobs import tracing
from jobs.fairness import priority_of
from jobs.lifecycle import Jobs
from jobs.queues import enqueue_stage
from jobs.record import JobRecord, job_key
from jobs.settings import Settings, get_settings
from jobs.stats import record_stage
from jobs.status import WAITING, JobStatus, StageStatus
from jobs.store import DiskFull, object_name, stage_preview
from workers.batching import Member, sample_each
from workers.memory import memory_refusal
from workers.results import encode_result
from workers.runtime import Runtime, current

log = logging.getLogger(__name__)
T = TypeVar("T")


# What a job is told when its stage's output holds NaN or infinity: saved, it would be a black
# image reported as a success. It happens again on every run, so it is never retried.
NON_FINITE = "{stage} produced NaN: its weights or inputs are broken"


class InputMissing(RuntimeError):
    """The previous stage's output expired before this stage ran."""


class HandedBack(Exception):
    """The worker is stopping: the stage was queued again for another (or the restarted) one."""


# What a handed-back stage job returns: RQ queues it again at the front at once, without using
# up one of the retries that crashes get.
HAND_BACK = Retry(max=1000, enqueue_at_front=True)
HANDED_BACK_REASON = "its worker was stopped before the stage finished; the next worker runs it"


def run_stage(job_id: str, stage: str) -> Retry | None:
    """RQ job with JSON arguments: run `stage` of job `job_id`; `HAND_BACK` when the worker
    stopping handed the stage back.

    When the worker claimed compatible jobs beside this one (`workers.batching`), the lead's run
    samples them all in one call, and each other member's run only reports its own outcome."""
    runtime = current()
    # Every log line of this run names the job and stage (`cascade.logformat`).
    tokens = logformat.JOB_ID.set(job_id), logformat.STAGE.set(stage)
    try:
        if not tracing.enabled():
            return _run_stage(runtime, job_id, stage)
        parent = runtime.jobs.connection.hget(job_key(job_id), "traceparent") or b""
        names = {"cascade.job.id": job_id, "cascade.stage": stage}
        with tracing.span(f"cascade.stage {stage}", parent=parent.decode(), **names):
            return _run_stage(runtime, job_id, stage)
    finally:
        logformat.JOB_ID.reset(tokens[0])
        logformat.STAGE.reset(tokens[1])


def _run_stage(runtime: Runtime, job_id: str, stage: str) -> Retry | None:
    batch = runtime.batch
    if batch is not None and job_id == batch.lead:
        batch.outcomes.update(run_jobs(runtime, batch.job_ids, stage))
    if batch is not None and job_id in batch.outcomes:
        error = batch.outcomes.pop(job_id)
    elif runtime.jobs.handing_back:  # the worker is stopping: start nothing more
        return HAND_BACK
    else:  # alone, or a member its lead's run did not reach
        error = run_jobs(runtime, [job_id], stage)[job_id]
    if isinstance(error, HandedBack):
        return HAND_BACK
    if error is not None:
        raise error  # RQ's failure callback (`on_stage_failure`) retries the stage
    return None


def run_jobs(runtime: Runtime, job_ids: list[str], name: str) -> dict[str, Exception | None]:
    """Run stage `name` of each job, sampling those that need it in one batch; each job's
    outcome: None, or the exception RQ should see for it (one job's error never ends another)."""
    stage = runtime.stage(name)
    stage_job = get_current_job()
    worker = (stage_job.worker_name if stage_job else None) or "unknown"
    outcomes: dict[str, Exception | None] = {}
    members = []
    for job_id in job_ids:
        member = _caught(start, runtime, job_id, stage, worker)
        if isinstance(member, Member):
            members.append(member)
        else:  # nothing to sample (None), or an error
            outcomes[job_id] = member
    started = time.monotonic()
    results = sample_each(runtime, stage, members) if members else {}
    for member in members:
        result = results[member.job_id]
        outcome = _caught(finish, runtime, member, stage, result, started, len(members))
        outcomes[member.job_id] = outcome
    return outcomes


def _caught(function: Callable[..., T], *args: object) -> T | Exception:
    """`function(*args)`, or the exception it raised: one job's error is that job's outcome.
    RQ's job timeout still propagates, since it ends the whole batch."""
    try:
        return function(*args)
    except JobTimeoutException:
        raise
    except Exception as error:
        return error


def start(runtime: Runtime, job_id: str, stage: Stage, worker: str) -> Member | None:
    """Mark the job's stage running and load its input; None when there is nothing to sample
    (no record, a retry of a finished stage, a canceled job, a missing input)."""
    jobs, name = runtime.jobs, stage.name
    record = jobs.get(job_id)
    if record is None:
        log.warning("job %s: no record (expired or deleted); stage %s skipped", job_id, name)
        return None
    if record.stage(name, "status") == StageStatus.SUCCEEDED:
        log.info("job %s: stage %s already finished (a retry); handing on", job_id, name)
        hand_on(runtime, job_id, name)
        return None
    attempt = jobs.stage_started(job_id, name, runtime.describe(name), worker)
    if not attempt:
        latest = jobs.get(job_id) or record
        if latest.stage(name, "status") == StageStatus.SUCCEEDED:  # another attempt finished it
            hand_on(runtime, job_id, name)
            return None
        # Its end has ended the stage too (`Jobs.end`).
        log.info("job %s has %s; stage %s not run", job_id, latest.status, name)
        return None
    log.info(
        "job %s%s: stage %s started (attempt %d, %s)%s",
        job_id,
        _request(record),
        name,
        attempt,
        stage.model.id,
        _tag(stage),
    )
    if refusal := memory_refusal(runtime, record, name):
        fail(runtime.connection, jobs, job_id, name, refusal)
        return None
    try:
        return Member(record, load_input(runtime, record, stage))
    except InputMissing as error:
        fail(runtime.connection, jobs, job_id, name, str(error))
        return None


def load_input(runtime: Runtime, record: JobRecord, stage: Stage) -> Tensor | None:
    """The stage's input: the previous stage's float output, an upscale's upload (a JPEG one
    cleaned for its quality first: `Stage.prepare_input`), or None."""
    names = [planned.name for planned in record.plan]
    index = names.index(stage.name)
    if record.kind != "upscale" and index == 0:
        return None
    source = names[index - 1] if index > 0 else "input"
    data = runtime.jobs.get_tensor(record.id, source)
    if data is None:
        raise InputMissing(
            f"the input of stage {stage.name} ({source} output) expired before the stage ran; "
            "submit the job again"
        )
    tensor = bytes_to_tensor(data)
    if index == 0:
        described = record.request.get("input")
        quality = described.get("jpeg_quality") if isinstance(described, dict) else None
        tensor = stage.prepare_input(tensor, quality if isinstance(quality, int) else None)
    return tensor


def finish(
    runtime: Runtime,
    member: Member,
    stage: Stage,
    result: Tensor | Exception,
    started: float,
    batch: int = 1,
) -> Exception | None:
    """Store the sampled image and hand on, or end the stage as the error says: an error no
    retry can mend fails the job, any other is returned for RQ to retry. `batch` jobs were
    sampled with this one (they share the time recorded for a quote's per-step costs)."""
    jobs, name, job_id = runtime.jobs, stage.name, member.job_id
    if jobs.superseded(job_id, name):  # its worker hung past the TTL; a newer attempt runs it
        log.warning(
            "job %s%s: stage %s was taken over by a newer attempt; this one stops, writing nothing",
            job_id,
            _request(member.record),
            name,
        )
        return None
    if isinstance(result, SamplingCanceled):  # the job's end (`Jobs.end`) has ended the stage
        latest = jobs.get(job_id)
        if latest is not None and not latest.ended and jobs.handing_back:
            return hand_back(runtime, member, name)
        record_stage(runtime.connection, name, time.monotonic() - started, "canceled")
        log.info(
            "job %s%s: stage %s canceled%s", job_id, _request(member.record), name, _tag(stage)
        )
        return None
    if isinstance(result, StageError):  # this request can never succeed
        fail(runtime.connection, jobs, job_id, name, str(result))
        return None
    if isinstance(result, Exception):
        return result
    if not bool(torch.isfinite(result).all()):
        log.error(
            "job %s%s: stage %s output holds NaN or infinity (weights %s, sha256 %s)%s",
            job_id,
            _request(member.record),
            name,
            runtime.weights[name],
            stage.model.sha256,
            _tag(stage),
        )
        fail(runtime.connection, jobs, job_id, name, NON_FINITE.format(stage=name))
        return None
    if not save_outputs(runtime, member.record, name, result):
        return None  # a newer attempt took the stage over while this one saved
    seconds = time.monotonic() - started
    work = next(planned.cost for planned in member.record.plan if planned.name == name)
    if not jobs.stage_ended(job_id, name, StageStatus.SUCCEEDED):
        return None
    record_stage(runtime.connection, name, seconds, "succeeded", work, batch)
    log.info(
        "job %s%s: stage %s finished in %.2f s%s",
        job_id,
        _request(member.record),
        name,
        seconds,
        _tag(stage),
    )
    hand_on(runtime, job_id, name)
    return None


def hand_back(runtime: Runtime, member: Member, stage: str) -> HandedBack | None:
    """Queue the stage again for the next worker (this one is stopping), or nothing when a
    newer attempt holds it or the job ended."""
    job_id = member.job_id
    if not runtime.jobs.stage_retrying(job_id, stage, HANDED_BACK_REASON):
        return None
    record_stage(runtime.connection, stage, 0.0, "retried")
    log.warning(
        "job %s%s: stage %s handed back (the worker is stopping); queued again at the front",
        job_id,
        _request(member.record),
        stage,
    )
    return HandedBack(job_id)


def _tag(stage: Stage) -> str:
    return " [RANDOM weights]" if stage.model.random_weights else ""


def save_outputs(runtime: Runtime, record: JobRecord, stage: str, image: Tensor) -> bool:
    """The stage's PNG preview; its float tensor for the next stage, or the result in the
    request's format (`workers.results`). False, having stored nothing more, once a newer
    attempt holds the stage (the store's files are written only after a check of the lease,
    and a rerun's image is the same: same seed)."""
    store = runtime.store
    png = to_png(image)
    if runtime.jobs.superseded(record.id, stage):
        return False
    store.put(object_name(record.id, stage_preview(stage)), png, "image/png")
    names = [planned.name for planned in record.plan]
    if stage != names[-1]:
        data = tensor_to_bytes(image)
        return runtime.jobs.put_tensor(record.id, stage, data, runtime.settings.tensor_ttl)
    height, width = record.output
    if tuple(image.shape[-2:]) != (height, width):  # a target_size below the stage's scale
        image = F.interpolate(
            image, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
        image = image.clamp(-1, 1)
    name, data, media_type = encode_result(runtime, record, stage, image)
    store.put(object_name(record.id, name), data, media_type)
    return True


def hand_on(runtime: Runtime, job_id: str, stage: str) -> None:
    """Queue the next stage, or end the job after the last one (idempotent: a retry may repeat
    it, and a duplicate stage job finds its stage done)."""
    jobs = runtime.jobs
    record = jobs.get(job_id)
    if record is None:
        return
    names = [planned.name for planned in record.plan]
    index = names.index(stage)
    if index + 1 < len(names):
        following = names[index + 1]
        if record.stage(following, "status") not in WAITING:
            return
        if jobs.advance(job_id, following):
            enqueue_stage(
                runtime.connection,
                runtime.settings,
                job_id,
                following,
                owner=record.owner,
                priority=priority_of(record.request),
            )
        else:
            log.info("job %s has %s; stage %s will not start", job_id, record.status, following)
        return
    jobs.end(job_id, JobStatus.SUCCEEDED)  # once: a repeated hand-on finds the job ended


def _request(record: JobRecord | None) -> str:
    """ " (request ID)": the X-Request-ID of the POST that made the job, so an API log line and a
    worker's lines about the same job can be found together."""
    return f" (request {record.request_id})" if record is not None and record.request_id else ""


def fail(connection: Redis, jobs: Jobs, job_id: str, stage: str, reason: str) -> None:
    """End the job as failed because of `stage`, and say so (once); nothing when a newer
    attempt holds the stage or the job has ended."""
    error = f"stage {stage} failed: {reason}"
    if jobs.end(job_id, JobStatus.FAILED, error, stage=stage, stage_error=reason):
        record_stage(connection, stage, 0.0, "failed")
        record = jobs.get(job_id)
        log.warning("job %s%s failed in stage %s: %s", job_id, _request(record), stage, reason)


def on_stage_failure(
    job: Job, connection: Redis, exc_type: type, exc_value: object, tb: object
) -> None:
    """RQ failure callback: a stage job raised, timed out, or its worker died (abandoned).
    A transient failure is retried while retries remain; any other, and the last retry, fail
    the whole job. Clients are told what happened in words, never the exception's text (the
    log has it, under the stage job's id)."""
    job_id, stage = job.args
    settings = get_settings()
    jobs = _jobs(connection, settings)
    if jobs.superseded(job_id, stage):  # this attempt's failure is not the stage's any more
        log.warning(
            "job %s stage %s: an attempt a newer one took over raised %s; ignored",
            job_id,
            stage,
            exc_type.__name__,
        )
        return
    reason, transient = failure_reason(stage, exc_type, settings.timeout_for(stage), exc_value)
    if not transient:
        log.error(
            "job %s%s stage %s (stage job %s) failed: %s: %s",
            job_id,
            _request(jobs.get(job_id)),
            stage,
            job.id,
            exc_type.__name__,
            exc_value,
            exc_info=(exc_type, exc_value, tb) if isinstance(exc_value, BaseException) else None,
        )
        job.retries_left = 0  # RQ reads this after the callback: no retry
    attempt = (jobs.get(job_id) or JobRecord({})).stage(stage, "attempts", "?")
    if job.retries_left:
        log.warning(
            "job %s stage %s attempt %s failed (%s); retrying", job_id, stage, attempt, reason
        )
        record_stage(connection, stage, 0.0, "retried")
        jobs.stage_retrying(job_id, stage, reason)
        return
    if transient:
        reason = f"{reason} (attempt {attempt}, no retries left)"
    fail(connection, jobs, job_id, stage, reason)


def _jobs(connection: Redis, settings: Settings) -> Jobs:
    """The worker's own job records, which know the leases it holds (a plain `rq worker` or
    another process calling back gets fresh ones, holding none)."""
    runtime = current()
    if runtime.connection is connection:
        return runtime.jobs
    return Jobs(
        connection, settings.result_ttl, settings=settings, store=runtime.store, about=runtime.about
    )


def failure_reason(
    stage: str, exc_type: type, timeout: int, error: object = None
) -> tuple[str, bool]:
    """What a client is told about a stage's failure, and whether a retry may mend it."""
    if issubclass(exc_type, DiskFull):  # an OSError, but a retry would only sample again
        return (str(error) if isinstance(error, DiskFull) else "the result disk is full"), False
    if issubclass(exc_type, AbandonedJobError):
        return "the worker running it stopped (killed, crashed or lost its connection)", True
    if issubclass(exc_type, JobTimeoutException):
        return f"it ran longer than its {timeout} s timeout", False
    if issubclass(exc_type, CheckpointError):  # a broken file loads no better on a retry
        return f"the worker that took it could not load stage {stage}'s weights", False
    if issubclass(exc_type, torch.cuda.OutOfMemoryError):
        return "the GPU ran out of memory", True
    if issubclass(exc_type, RedisConnectionError | RedisTimeoutError):
        return "the worker lost its connection to the job queue (Redis)", True
    if issubclass(exc_type, OSError):
        return "the worker could not reach the result store", True
    return f"an internal error in stage {stage}; the service logged the details", False
