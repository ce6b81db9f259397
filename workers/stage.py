"""The stage job: run one stage of a job, store its output, hand on to the next stage's queue.

Every step is idempotent so a retried stage (after a crash or a killed worker) resumes the job:
the input is the previous stage's stored float tensor, and a stage that already finished only
hands on again. Seeds are per stage (`stage_seed`), so a rerun gives the same image.
"""

from __future__ import annotations

import json
import logging
import time

import torch
import torch.nn.functional as F
from redis import Redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException
from torch import Tensor

from api.settings import get_settings
from cascade.images import bytes_to_tensor, tensor_to_bytes, to_png
from cascade.pipeline import Stage, StageError, stage_seed
from cascade.samplers import SamplerSettings, SamplingCanceled
from workers.queues import enqueue_stage
from workers.record import JobRecord, Jobs
from workers.runtime import Runtime, current
from workers.stats import record_stage
from workers.store import RECORD, RESULT, object_name, stage_preview
from workers.view import describe
from workers.webhooks import send_webhook

log = logging.getLogger(__name__)


class InputMissing(RuntimeError):
    """The previous stage's output expired before this stage ran."""


def run_stage(job_id: str, stage: str) -> None:
    """RQ job with JSON arguments: run `stage` of job `job_id`."""
    runtime = current()
    jobs = runtime.jobs
    record = jobs.get(job_id)
    if record is None:
        log.warning("job %s: no record (expired or deleted); stage %s skipped", job_id, stage)
        return
    if record.stage(stage, "status") == "succeeded":
        log.info("job %s: stage %s already finished (a retry); handing on", job_id, stage)
        hand_on(runtime, job_id, stage)
        return
    model = runtime.stage(stage)
    description = model.describe()
    rq_job = get_current_job()
    worker = (rq_job.worker_name if rq_job else None) or "unknown"
    if not jobs.stage_started(job_id, stage, description, worker):
        log.info("job %s has %s; stage %s not run", job_id, record.status, stage)
        jobs.stage_ended(job_id, stage, "canceled")
        return
    tag = " [RANDOM weights]" if description["random_weights"] else ""
    log.info("job %s: stage %s started (%s)%s", job_id, stage, model.model.id, tag)
    started = time.monotonic()
    try:
        image = sample(runtime, record, model)
    except SamplingCanceled:
        jobs.stage_ended(job_id, stage, "canceled")
        record_stage(runtime.connection, stage, time.monotonic() - started, "canceled")
        log.info("job %s: stage %s canceled%s", job_id, stage, tag)
        return
    except (StageError, InputMissing, ValueError) as error:  # this request can never succeed
        fail(runtime.connection, jobs, job_id, stage, str(error))
        return
    sampling = time.monotonic() - started
    save_outputs(runtime, record, stage, image)
    seconds = time.monotonic() - started
    record_stage(runtime.connection, stage, seconds, "succeeded")
    jobs.stage_ended(job_id, stage, "succeeded")
    log.info(
        "job %s: stage %s finished in %.2f s (sampling %.2f s)%s",
        job_id,
        stage,
        seconds,
        sampling,
        tag,
    )
    hand_on(runtime, job_id, stage)


def sample(runtime: Runtime, record: JobRecord, model: Stage) -> Tensor:
    """Run the stage's model on its input, checking for a cancel after every sampler step."""
    plan = record.plan
    names = [planned.name for planned in plan]
    index = names.index(model.name)
    planned = plan[index]
    request = record.request
    low_res = None
    if record.kind == "upscale" or index > 0:
        source = names[index - 1] if index > 0 else "input"
        data = runtime.jobs.get_tensor(record.id, source)
        if data is None:
            raise InputMissing(
                f"the input of stage {model.name} ({source} output) expired before the stage "
                "ran; submit the job again"
            )
        low_res = bytes_to_tensor(data)
    spec = model.model.spec
    class_id = request.get("class_id")
    class_ids = [int(class_id)] if spec.class_conditional and class_id is not None else None

    def check(step: int, total: int, x0: Tensor) -> None:
        if not runtime.jobs.progress(record.id, model.name, step, total):
            raise SamplingCanceled(f"job {record.id} ended during stage {model.name}")

    image = model.run(
        seeds=[stage_seed(record.seed, model.name)],
        class_ids=class_ids,
        low_res=low_res,
        sampler=SamplerSettings(planned.sampler, planned.steps),
        guidance=float(request.get("guidance", 1.0)) if spec.task == "generate" else 1.0,
        color=request.get("color_fix", "none"),
        callback=check,
    )
    return image.cpu()


def save_outputs(runtime: Runtime, record: JobRecord, stage: str, image: Tensor) -> None:
    """The stage's PNG preview; its float tensor for the next stage, or the final PNG."""
    store = runtime.store
    png = to_png(image)
    store.put(object_name(record.id, stage_preview(stage)), png, "image/png")
    names = [planned.name for planned in record.plan]
    if stage != names[-1]:
        runtime.jobs.put_tensor(
            record.id, stage, tensor_to_bytes(image), runtime.settings.tensor_ttl
        )
        return
    height, width = record.output
    if tuple(image.shape[-2:]) != (height, width):  # a target_size below the stage's scale
        image = F.interpolate(
            image, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
        png = to_png(image.clamp(-1, 1))
    store.put(object_name(record.id, RESULT), png, "image/png")  # the last preview, or resized


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
        if record.stage(following, "status") not in ("pending", "queued"):
            return
        if jobs.advance(job_id, following):
            enqueue_stage(runtime.connection, runtime.settings, job_id, following)
        else:
            log.info("job %s has %s; stage %s will not start", job_id, record.status, following)
        return
    if jobs.finish(job_id, "succeeded"):
        jobs.drop_tensors(job_id, ["input", *names])
        finished = jobs.get(job_id)
        if finished is not None:
            save_record(runtime, finished)
            announce_end(runtime.settings.webhook_timeout, finished)


def save_record(runtime: Runtime, record: JobRecord) -> None:
    """job.json beside the PNGs: request, seed, plan, models, timings, enough to reproduce."""
    view = describe(record)
    view["weights"] = runtime.weights
    view["torch"] = torch.__version__
    runtime.store.put(
        object_name(record.id, RECORD), json.dumps(view, indent=2).encode(), "application/json"
    )


def announce_end(timeout: float, record: JobRecord) -> None:
    if record.webhook_url:
        send_webhook(record.webhook_url, describe(record), timeout)


def fail(connection: Redis, jobs: Jobs, job_id: str, stage: str, reason: str) -> None:
    """End the job as failed because of `stage`, and say so (once)."""
    jobs.stage_ended(job_id, stage, "failed", reason)
    record_stage(connection, stage, 0.0, "failed")
    log.warning("job %s failed in stage %s: %s", job_id, stage, reason)
    if jobs.finish(job_id, "failed", f"stage {stage} failed: {reason}"):
        record = jobs.get(job_id)
        if record is not None:
            announce_end(get_settings().webhook_timeout, record)


def on_stage_failure(
    job: Job, connection: Redis, exc_type: type, exc_value: object, tb: object
) -> None:
    """RQ failure callback: a stage job raised, timed out, or its worker died (abandoned).
    RQ retries it while retries remain; after the last, the whole job fails."""
    job_id, stage = job.args
    settings = get_settings()
    jobs = Jobs(connection, settings.result_ttl)
    if exc_type is AbandonedJobError:
        reason = "the worker running it stopped (killed, crashed or lost its connection)"
    elif exc_type is JobTimeoutException:
        reason = f"it ran longer than its {settings.timeout_for(stage)} s timeout"
    else:
        reason = f"{exc_type.__name__}: {exc_value}"[:500]
    attempt = (jobs.get(job_id) or JobRecord({})).stage(stage, "attempts", "?")
    if job.retries_left:
        log.warning(
            "job %s stage %s attempt %s failed (%s); retrying", job_id, stage, attempt, reason
        )
        record_stage(connection, stage, 0.0, "retried")
        jobs.update(job_id, {f"{stage}.status": "queued", f"{stage}.error": f"retrying: {reason}"})
        return
    fail(connection, jobs, job_id, stage, f"{reason} (attempt {attempt}, no retries left)")
