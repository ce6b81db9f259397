"""What a client sees of a job: status, per-stage progress and timings, progress and ETA, links.

One typed model (`JobView`), shared by `GET /v1/jobs/{id}` (its response model), the events
workers log (`jobs.lifecycle`) and the job's terminal event, which webhooks post and job.json
keeps, so all of them say the same thing.
Links are paths relative to the API's root, or absolute under `CASCADE_PUBLIC_URL`
(`jobs.urls`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from jobs.record import JobRecord
from jobs.status import JobStatus, StageStatus
from jobs.urls import RELATIVE, Urls

RANDOM_WEIGHTS_WARNING = (
    "RANDOM weights in stage(s) {stages}: images are noise-like, not meaningful pictures "
    "(set trained weights with CASCADE_WEIGHTS_<STAGE>)"
)
# How much of a stage's work counts as done, by its status; a running stage's share is its
# steps so far, and so is that of a stage a cancel or failure stopped (the view's progress
# never goes backwards when a job ends).
_STOPPED = (StageStatus.RUNNING, StageStatus.CANCELED, StageStatus.FAILED)


class Links(BaseModel):
    self: str
    result: str
    stages: dict[str, str]
    cancel: str
    events: str = Field(description="Server-Sent Events: the job's event log, live")


class StageWeights(BaseModel):
    """A stage's weights as the worker that ran it loaded them."""

    file: str = Field(description="the checkpoint's file name")
    sha256: str = Field(description="the checkpoint file's SHA-256, hex")


class StageView(BaseModel):
    name: str
    status: StageStatus
    step: int
    steps: int
    sampler: str
    height: int
    width: int
    started_at: str | None
    ended_at: str | None
    seconds: float | None
    attempts: int
    model: str | None
    weights: StageWeights | None = Field(None, description="None: random weights, or not run yet")
    worker: str | None
    host: str | None = Field(None, description="the host of the worker that ran the stage")
    random_weights: bool | None
    error: str | None
    preview: str | None


class JobView(BaseModel):
    """A job: the union of its stage jobs."""

    id: str
    kind: Literal["generation", "upscale"]
    status: JobStatus
    stage: str | None
    progress: float = Field(description="0..1, each stage weighted by output pixels x steps")
    eta_seconds: float | None
    error: str | None
    seed: int
    request: dict[str, object]
    output: dict[str, int]
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    random_weights: bool
    warning: str | None
    waiting: str | None = Field(
        None,
        description="set while a stage the job still needs has no live worker: the job waits "
        "for one (a worker started by hand or by an autoscaler), and eta_seconds is null",
    )
    stages: list[StageView]
    result: str | None
    result_url: str | None = Field(
        None,
        description="where to download the result once the job has succeeded: `result`, or "
        "with CASCADE_PRESIGN_RESULTS and an S3 store a presigned URL of the bucket's object "
        "(no API key; valid for CASCADE_PRESIGN_SECONDS from when this view was made)",
    )
    links: Links


def links(job_id: str, stages: list[str], urls: Urls = RELATIVE) -> dict[str, object]:
    return {
        "self": urls.job(job_id),
        "result": urls.job(job_id, "/result"),
        "stages": {name: urls.job(job_id, f"/stages/{name}") for name in stages},
        "cancel": urls.job(job_id),
        "events": urls.job(job_id, "/events"),
    }


def describe(
    record: JobRecord, now: float | None = None, urls: Urls = RELATIVE
) -> dict[str, object]:
    """The public view of a job record as JSON (events, webhooks, job.json)."""
    return job_view(record, now, urls).model_dump(mode="json")


def job_view(record: JobRecord, now: float | None = None, urls: Urls = RELATIVE) -> JobView:
    """The public view of a job record."""
    now = time.time() if now is None else now
    plan = record.plan
    stages = []
    done = 0.0
    for planned in plan:
        status = record.stage(planned.name, "status", StageStatus.PENDING)
        step = int(record.stage(planned.name, "step") or 0)
        # The sampler's own count once it runs (an upscale's fidelity can shorten it).
        steps = int(record.stage(planned.name, "total") or planned.run.steps)
        started = _float(record.stage(planned.name, "started_at"))
        ended = _float(record.stage(planned.name, "ended_at"))
        if status == StageStatus.SUCCEEDED:
            fraction = 1.0
        else:
            fraction = min(step / steps, 1.0) if status in _STOPPED else 0.0
        done += planned.cost * fraction
        random_weights = record.stage(planned.name, "random_weights")
        stages.append(
            {
                "name": planned.name,
                "status": status,
                "step": step,
                "steps": steps,
                "sampler": planned.run.sampler,
                "height": planned.height,
                "width": planned.width,
                "started_at": _iso(started),
                "ended_at": _iso(ended),
                "seconds": _seconds(started, ended if status != StageStatus.RUNNING else now),
                "attempts": int(record.stage(planned.name, "attempts") or 0),
                "model": record.stage(planned.name, "model") or None,
                "weights": _weights(record, planned.name),
                "worker": record.stage(planned.name, "worker") or None,
                "host": record.stage(planned.name, "host") or None,
                "random_weights": None if random_weights is None else random_weights == "1",
                "error": record.stage(planned.name, "error") or None,
                "preview": urls.job(record.id, f"/stages/{planned.name}")
                if status == StageStatus.SUCCEEDED
                else None,
            }
        )
    total = sum(stage.cost for stage in plan)
    succeeded = record.status == JobStatus.SUCCEEDED
    progress = 1.0 if record.status == JobStatus.SUCCEEDED else done / total
    random_stages = [stage["name"] for stage in stages if stage["random_weights"]]
    height, width = record.output
    view = {
        "id": record.id,
        "kind": record.kind,
        "status": record.status,
        "stage": None if record.ended else record.fields.get("stage"),
        "progress": round(progress, 4),
        "eta_seconds": _eta(record, progress, now),
        "error": record.fields.get("error") or None,
        "seed": record.seed,
        "request": _shown_request(record.request),
        "output": {"height": height, "width": width},
        "created_at": _iso(record.time("created_at")),
        "started_at": _iso(record.time("started_at")),
        "ended_at": _iso(record.time("ended_at")),
        "random_weights": bool(random_stages),
        "warning": RANDOM_WEIGHTS_WARNING.format(stages=", ".join(random_stages))
        if random_stages
        else None,
        "stages": stages,
        "result": urls.job(record.id, "/result") if succeeded else None,
        "result_url": urls.result_url(record.id, record.output_format) if succeeded else None,
        "links": links(record.id, [stage.name for stage in plan], urls),
    }
    return JobView.model_validate(view)


def _weights(record: JobRecord, stage: str) -> dict[str, str] | None:
    """The stage's weights by file name and SHA-256, once a worker with a checkpoint file ran it
    (None before, and for random weights)."""
    file, sha256 = record.stage(stage, "weights_file"), record.stage(stage, "weights_sha256")
    return {"file": file, "sha256": sha256} if file and sha256 else None


def redact_url(url: str) -> str:
    """A URL without its userinfo, query and fragment, where receivers keep their tokens."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _shown_request(request: dict[str, object]) -> dict[str, object]:
    """The request as the job shows it: its webhook URL redacted (the view is sent to
    webhooks and events too; the sender posts to the URL the record keeps)."""
    url = request.get("webhook_url")
    return {**request, "webhook_url": redact_url(url)} if isinstance(url, str) else request


def _eta(record: JobRecord, progress: float, now: float) -> float | None:
    """Remaining seconds at the rate seen so far (cost-weighted), once there is a rate."""
    started = record.time("started_at")
    if record.ended or started is None or progress <= 0:
        return 0.0 if record.status == JobStatus.SUCCEEDED else None
    elapsed = now - started
    return round(elapsed * (1 - progress) / progress, 1)


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _seconds(started: float | None, ended: float | None) -> float | None:
    if started is None or ended is None:
        return None
    return round(ended - started, 3)


ORPHANED = "retrying: its worker stopped responding; another worker will take the stage up"
ORPHANED_ALONE = (
    "retrying: its worker stopped responding and no other worker serves stage {stage}; it waits "
    "for one (`cascade serve` restarts its worker, which retries it)"
)


WAITING_FOR = "waiting for a worker for {stage}: no live worker serves it now"


def waiting_for(stages: Iterable[str], serving: Callable[[str], int]) -> str | None:
    """`WAITING_FOR` the first of `stages` (those a job still needs) no live worker serves."""
    idle = next((stage for stage in stages if serving(stage) == 0), None)
    return None if idle is None else WAITING_FOR.format(stage=idle)


def mark_waiting(view: dict[str, object], serving: Callable[[str], int]) -> dict[str, object]:
    """An active job that still needs a stage no live worker serves says so (`waiting`), and
    its ETA is unknown rather than extrapolated from the stages that did run."""
    if view["status"] not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return view
    needed = [s["name"] for s in view["stages"] if s["status"] != StageStatus.SUCCEEDED]  # type: ignore[union-attr]
    if waiting := waiting_for(needed, serving):
        view["waiting"], view["eta_seconds"] = waiting, None
    return view


def mark_orphaned(
    view: dict[str, object], alive: Callable[[str], bool], serving: Callable[[str], int]
) -> dict[str, object]:
    """A running stage whose worker is no longer alive is shown as waiting to be retried (RQ's
    maintenance requeues it within heartbeat_ttl + one maintenance interval), not frozen at
    its last step; `serving(stage)` counts the live workers that could retry it, and only when
    there is one does the view say that another worker will."""
    for stage in view["stages"]:  # type: ignore[union-attr]
        if (
            stage["status"] == StageStatus.RUNNING
            and stage["worker"]
            and not alive(stage["worker"])
        ):
            others = serving(stage["name"]) > 0
            stage["status"] = StageStatus.QUEUED.value
            stage["error"] = ORPHANED if others else ORPHANED_ALONE.format(stage=stage["name"])
    return view
