"""Cross-request batching: stage jobs waiting in one queue with equal settings share a
`Stage.run` call.

A worker that takes a stage job (the lead) looks at the next jobs waiting in the same queue and
claims those whose `BatchKey` equal the lead's, up to `CASCADE_MAX_BATCH` jobs in all. Only
jobs already waiting are taken: the worker never waits for a batch to fill. Claiming is one Redis
transaction that takes each job off the queue and into RQ's started registry with an execution
the worker heartbeats, just as if it had dequeued the job itself, so a worker that dies mid-batch
leaves every member to be found abandoned and retried.

Each member keeps its own seed (one generator per item), so its image is the one it gets alone,
up to float rounding. A member canceled before the batch starts is dropped from it; one canceled
mid-batch stops the call within a step, is marked canceled, and the others run again from the
start (their seeds give the same images). A call that raises runs its members one at a time, so
one bad request fails alone.

The lead's stage job samples the batch and finishes each member on its own (its images, the
hand-off to its next stage, its webhook); each member's RQ job then reports that member's
outcome, so RQ's bookkeeping, failure callback and retries stay per job. A job record's
`{stage}.batch` says how many jobs its stage was sampled with. The whole batch runs under the
lead's stage timeout; should it expire, the members the lead did not finish run alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from redis.exceptions import WatchError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.worker import BaseWorker
from torch import Tensor

from cascade.images import as_float_image
from cascade.pipeline import Stage
from cascade.samplers import SamplingCanceled
from cascade.stages import StageRun
from jobs.queues import RUN_STAGE
from jobs.record import JobRecord
from workers.previews import due, previews
from workers.runtime import Runtime

log = logging.getLogger(__name__)

LOOK_AHEAD = 4  # queue entries examined per batch slot: most traffic shares the defaults
CLAIM_ATTEMPTS = 3  # the queue changed while claiming: look again, then run the lead alone


BatchKey = tuple[StageRun, int, int]


def batch_key(record: JobRecord, stage: Stage) -> BatchKey | None:
    """What one `Stage.run` call shares across its batch (seeds, classes and inputs may differ):
    the run as the stage applies it, and the planned output size (equal sizes, equal input
    shapes). None when the job's plan has no such stage."""
    planned = next((planned for planned in record.plan if planned.name == stage.name), None)
    if planned is None:
        return None
    return stage.effective(planned.run), planned.height, planned.width


@dataclass(frozen=True)
class Member:
    """A started job in a batch: its record and its input (None for a generation's base)."""

    record: JobRecord
    low_res: Tensor | None

    @property
    def job_id(self) -> str:
        return self.record.id


class JobsCanceled(SamplingCanceled):
    """Jobs of a batch ended (canceled) while it ran."""

    def __init__(self, job_ids: list[str]):
        super().__init__(f"job(s) {', '.join(job_ids)} ended during sampling")
        self.job_ids = job_ids


def claim(
    worker: BaseWorker, queue: Queue, lead: Job, runtime: Runtime, limit: int
) -> list[tuple[Job, Execution]]:
    """Claim up to `limit - 1` jobs waiting in `queue` that can run with `lead` (module doc)."""
    job_id, name = lead.args
    record = runtime.jobs.get(job_id)
    if limit <= 1 or record is None:
        return []
    stage = runtime.stage(name)
    wanted = batch_key(record, stage)
    if wanted is None:
        return []
    for _ in range(CLAIM_ATTEMPTS):
        with queue.connection.pipeline() as pipeline:
            try:
                pipeline.watch(queue.key)  # a push or another worker's pop aborts the claim
                waiting = pipeline.lrange(queue.key, 0, limit * LOOK_AHEAD - 1)
                stage_jobs = _compatible(waiting, wanted, limit - 1, runtime, stage, queue)
                if not stage_jobs:
                    return []
                pipeline.multi()
                ttl = worker.get_heartbeat_ttl(lead)
                executions = []
                for stage_job in stage_jobs:
                    pipeline.lrem(queue.key, 1, stage_job.id)
                    executions.append(Execution.create(stage_job, ttl, pipeline, worker.name))
                    stage_job.prepare_for_execution(worker.name, pipeline)
                pipeline.execute()
            except WatchError:
                continue
        for execution in executions:
            worker.executions[execution.id] = execution
        log.info("job %s: stage %s batched with %d waiting job(s)", job_id, name, len(stage_jobs))
        return list(zip(stage_jobs, executions, strict=True))
    return []


def _compatible(
    rq_ids: list[bytes | str],
    wanted: BatchKey,
    count: int,
    runtime: Runtime,
    stage: Stage,
    queue: Queue,
) -> list[Job]:
    """Up to `count` queued jobs among `rq_ids` that run `stage` with `wanted`."""
    found: list[Job] = []
    ids = [_text(rq_id) for rq_id in rq_ids]
    for job in Job.fetch_many(ids, queue.connection, serializer=JSONSerializer):
        if len(found) == count:
            break
        if job is None or job.func_name != RUN_STAGE:
            continue
        if job.get_status(refresh=False) != JobStatus.QUEUED or job.args[1] != stage.name:
            continue
        record = runtime.jobs.get(job.args[0])
        if record is not None and not record.ended and batch_key(record, stage) == wanted:
            found.append(job)
    return found


def sample(runtime: Runtime, stage: Stage, members: list[Member]) -> Tensor:
    """One `Stage.run` call for every member, checking for cancels after every sampler step
    and carrying live previews in the progress events (`workers.previews`)."""
    key = batch_key(members[0].record, stage)
    assert key is not None
    job_ids = [member.job_id for member in members]
    classes = [member.record.request.get("class_id") for member in members]
    known = all(item is not None for item in classes)  # Stage.run uses them if its model does
    lows = [member.low_res for member in members]

    count = runtime.settings.previews_per_stage

    def check(step: int, total: int, x0: Tensor) -> None:
        shown = previews(job_ids, x0) if due(step, total, count) else None
        if ended := runtime.jobs.progress(job_ids, stage.name, step, total, shown):
            raise JobsCanceled(ended)

    images = stage.run(
        seeds=[member.record.seed for member in members],
        class_ids=[int(item) for item in classes] if known else None,  # type: ignore[arg-type]
        low_res=None if lows[0] is None else _batched(lows),  # type: ignore[arg-type]
        run=key[0],
        callback=check,
    )
    return images.cpu()


def _batched(lows: list[Tensor]) -> Tensor:
    """The members' inputs as one batch: uploads stay uint8 together; any mix is float."""
    if all(low.dtype == torch.uint8 for low in lows):
        return torch.cat(lows)
    return torch.cat([as_float_image(low) for low in lows])


def sample_each(
    runtime: Runtime, stage: Stage, members: list[Member]
) -> dict[str, Tensor | Exception]:
    """Each member's image ([1, 3, H, W]), or the exception that ended it, sampled together
    where possible (cancels and failures as the module doc says)."""
    results: dict[str, Tensor | Exception] = {}
    while members:
        try:
            images = sample(runtime, stage, members)
        except JobsCanceled as canceled:
            results.update({job_id: canceled for job_id in canceled.job_ids})
            members = [member for member in members if member.job_id not in canceled.job_ids]
            continue
        except JobTimeoutException:
            raise  # RQ's timeout for the whole batch: the lead fails, the rest run alone
        except Exception as error:
            if len(members) == 1:
                results[members[0].id] = error
            else:
                log.warning("a batch of %d failed (%s); one job at a time", len(members), error)
                for member in members:
                    results.update(sample_each(runtime, stage, [member]))
            break
        for index, member in enumerate(members):
            results[member.job_id] = images[index : index + 1].clone()
        break
    return results


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
