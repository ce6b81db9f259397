"""Requests become jobs: planned by `jobs.plan`, their record written and first stage queued;
or, for a dry run, a quote of what the job would run and cost."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
from fastapi import HTTPException
from redis import Redis

from api import request_id as request_ids
from api.schemas import GenerationRequest, JobAccepted, Links, Quote, UpscaleForm
from cascade.classes import class_names
from cascade.formats import Carried, check_output
from jobs import tracing
from jobs.catalog import announced
from jobs.estimate import quote_stages
from jobs.fairness import priority_of
from jobs.health import check_served
from jobs.idempotency import IdempotencyConflict, bind
from jobs.lifecycle import Jobs
from jobs.listing import index_job
from jobs.plan import PlannedStage, plan_generation, plan_upscale, planned_class
from jobs.queues import enqueue_stage, live_workers, stage_job_exists
from jobs.quotas import QuotaExceeded, check_active, check_cost, check_queue, track
from jobs.record import CARRIED, JobRecord, NewJob
from jobs.settings import Settings
from jobs.store import space_shortfall
from jobs.urls import RELATIVE, Urls
from jobs.view import RANDOM_WEIGHTS_WARNING, links, waiting_for
from jobs.webhooks import WebhookRefused, check_destination

log = logging.getLogger(__name__)
PLAIN = Carried()  # an 8-bit RGB input with nothing to carry over
DISK_RETRY_AFTER = 60  # seconds: space comes back when someone frees it, not by itself


def known_classes(connection: Redis) -> list[int]:
    """Class ids the base's workers announced they were trained on; every id when none said."""
    announced_classes = announced(connection).get("base64", {}).get("classes")
    if announced_classes:
        return sorted(int(index) for index in announced_classes)  # type: ignore[union-attr]
    return list(range(len(class_names())))


def generation_job(
    body: GenerationRequest, settings: Settings, known: list[int] | None = None
) -> NewJob:
    """A generation's job: the class resolved (and one the base knows), a seed drawn if none
    was given."""
    class_id = planned_class(body.class_id, body.class_name, known)
    seed = body.seed if body.seed is not None else new_seed()
    plan = plan_generation(
        settings,
        body.size,
        sampler=body.sampler,
        steps=body.steps,
        guidance=body.guidance,
        color_fix=body.color_fix,
    )
    request = body.model_dump(mode="json", exclude_none=True, exclude={"dry_run"})
    request.update(class_id=class_id, class_name=class_names()[class_id], seed=seed)
    return NewJob(
        id=new_job_id(),
        kind="generation",
        request=request,
        seed=seed,
        plan=plan.stages,
        output=plan.output,
        webhook_url=checked_webhook(body.webhook_url, settings),
    )


def upscale_job(
    form: UpscaleForm, pixels: np.ndarray, settings: Settings, carried: Carried = PLAIN
) -> NewJob:
    """An upscale's job, planned from the decoded image's size; refuses outputs over the limit,
    and a jpeg result of an image with alpha. The request keeps what its input carries."""
    height, width = pixels.shape[-2:]
    try:
        check_output(form.format, form.quality, alpha=carried.alpha is not None)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    plan = plan_upscale(
        settings,
        height,
        width,
        scale=form.scale,
        target=form.target_size,
        sampler=form.sampler,
        steps=form.steps,
        color_fix=form.color_fix,
        fidelity=form.fidelity,
        low_band=form.low_band,
    )
    seed = form.seed if form.seed is not None else new_seed()
    request = form.model_dump(mode="json", exclude={"file", "dry_run"}, exclude_none=True)
    request.update(
        seed=seed,
        scale=plan.scale,
        filename=form.file.filename,
        input={"height": height, "width": width, **carried.describe()},
    )
    if carried.bits > 8:
        log.info("upscale input %s: %s", form.file.filename, carried.describe()["note"])
    return NewJob(
        id=new_job_id(),
        kind="upscale",
        request=request,
        seed=seed,
        plan=plan.stages,
        output=plan.output,
        webhook_url=checked_webhook(form.webhook_url, settings),
    )


def checked_webhook(url: object | None, settings: Settings) -> str | None:
    """The webhook URL, refused (422) when it points at an internal address; the sender checks
    again after resolving it at send time."""
    if url is None:
        return None
    try:
        check_destination(str(url), settings.webhook_allow, must_resolve=False)
    except WebhookRefused as error:
        raise HTTPException(422, str(error)) from None
    return str(url)


@dataclass(frozen=True)
class Idempotency:
    """A POST's Idempotency-Key, whose key it is, and a fingerprint of what it asked."""

    key: str
    owner: str
    request: str


def accept(
    connection: Redis,
    settings: Settings,
    jobs: Jobs,
    job: NewJob,
    input_tensor: bytes | None = None,
    idempotency: Idempotency | None = None,
    owner: str = "",
    carried: Carried = PLAIN,
) -> JobAccepted:
    """Store the job (and an upload's tensor, and what its result carries of it unless there
    is nothing), queue its first stage, say what will run. With an Idempotency-Key an earlier
    request already used, answer that request's job instead."""
    check_cost(job.plan, settings)
    request_id = request_ids.current.get()
    job = replace(job, owner=owner, request_id="" if request_id == "-" else request_id)
    if idempotency is not None:
        try:
            earlier = bind(
                connection, idempotency.owner, idempotency.key, idempotency.request, job.id
            )
        except IdempotencyConflict as error:
            raise HTTPException(422, str(error)) from None
        if earlier is not None:
            record = wait_for_record(jobs, earlier)
            if record is not None:
                log.info("job %s: Idempotency-Key replayed", earlier)
                first = record.plan[0].name
                if record.status == "queued" and not stage_job_exists(connection, earlier, first):
                    # The first request died between storing its job and queuing it: queue it
                    # now, or the job would wait forever.
                    enqueue_stage(
                        connection,
                        settings,
                        earlier,
                        first,
                        owner=record.owner,
                        priority=priority_of(record.request),
                    )
                return accepted(
                    connection,
                    settings,
                    record.id,
                    record.seed,
                    record.plan,
                    True,
                    record.status,
                    jobs.urls,
                )
            # The first request died between binding the key and storing its job: finish it.
            job = replace(job, id=earlier)
    check_space(settings)
    check_queue(connection, job.plan[0].name, settings)
    check_served(connection, [stage.name for stage in job.plan], settings)
    if owner:
        check_active(connection, settings, jobs, owner)
        track(connection, settings, owner, job.id)
    names = {"cascade.job.id": job.id, "cascade.job.kind": job.kind}
    with tracing.span("cascade.job.submit", **names) as traceparent:  # the job's trace root
        job = replace(job, traceparent=traceparent)
        if input_tensor is not None:
            jobs.put_tensor(job.id, "input", input_tensor, settings.tensor_ttl)
        if not carried.plain:
            jobs.put_tensor(job.id, CARRIED, carried.to_bytes(), settings.tensor_ttl)
        jobs.create(job)
        index_job(connection, job.owner, job.id, settings.result_ttl)
        first, priority = job.plan[0].name, priority_of(job.request)
        enqueue_stage(connection, settings, job.id, first, owner=owner, priority=priority)
    result = accepted(connection, settings, job.id, job.seed, job.plan, urls=jobs.urls)
    log.info(
        "job %s accepted: %s %s, seed %s%s",
        job.id,
        job.kind,
        "+".join(result.stages),
        job.seed,
        " [RANDOM weights]" if result.random_weights else "",
    )
    return result


def check_space(settings: Settings) -> None:
    """507 while the result disk is under its floor: workers take no stages then, so a job
    accepted now would only wait, and could not store its images."""
    shortfall = space_shortfall(settings)
    if shortfall is not None:
        raise QuotaExceeded(
            507,
            f"{shortfall}: new jobs are refused until space is freed; try again later",
            retry_after=DISK_RETRY_AFTER,
        )


def accepted(
    connection: Redis,
    settings: Settings,
    job_id: str,
    seed: int,
    plan: list[PlannedStage],
    replayed: bool = False,
    status: str = "queued",
    urls: Urls = RELATIVE,
) -> JobAccepted:
    names = [stage.name for stage in plan]
    random_weights, warning = weights_warning(connection, names)
    # Accepted all the same (an autoscaler starts workers from the queue's length), but said.
    fresh = settings.worker_fresh_seconds
    waiting = waiting_for(names, lambda stage: live_workers(connection, stage, fresh))
    return JobAccepted(
        id=job_id,
        status=status,
        seed=seed,
        stages=names,
        links=Links(**links(job_id, names, urls)),
        random_weights=random_weights,
        warning=warning,
        waiting=waiting,
        replayed=replayed,
    )


def wait_for_record(jobs: Jobs, job_id: str, seconds: float = 2.0) -> JobRecord | None:
    """The job an earlier request with the same key made, once that request has stored it."""
    deadline = time.monotonic() + seconds
    while (record := jobs.get(job_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return record


def quote(connection: Redis, job: NewJob, seed: int | None) -> Quote:
    """What `job` would run and cost, queuing nothing (`seed`: the one the request gave)."""
    names = [stage.name for stage in job.plan]
    random_weights, warning = weights_warning(connection, names)
    estimate = quote_stages(connection, job.plan)
    height, width = job.output
    return Quote.model_validate(
        {
            **estimate,
            "kind": job.kind,
            "request": {key: value for key, value in job.request.items() if key != "seed"},
            "seed": seed,
            "output": {"height": height, "width": width},
            "random_weights": random_weights,
            "notes": [*estimate["notes"], *([warning] if warning else [])],
        }
    )


def weights_warning(connection: Redis, names: list[str]) -> tuple[bool | None, str | None]:
    """Whether a planned stage's workers run random weights (None: no worker announced one),
    and the warning that says so."""
    models = announced(connection)
    random_stages = [name for name in names if models.get(name, {}).get("random_weights")]
    if random_stages:
        return True, RANDOM_WEIGHTS_WARNING.format(stages=", ".join(random_stages))
    return (False if all(name in models for name in names) else None), None


def new_seed() -> int:
    return secrets.randbelow(2**31)


def new_job_id() -> str:
    return uuid.uuid4().hex
