"""Request and response bodies. Validation lives here, at the boundary: `Field` limits and
`Literal` choices, unknown fields rejected."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import UploadFile
from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from cascade.formats import check_output
from cascade.stages import (
    DEFAULT_FIDELITY,
    DEFAULT_QUALITY,
    LOSSY_FORMATS,
    SCALES,
    ColorFix,
    LowBand,
    OutputFormat,
    SamplerName,
)
from jobs.fairness import Priority
from jobs.status import JobStatus
from jobs.view import JobView, Links, StageView, StageWeights

# The job's view is job control's own model (`jobs.view`), the same for the API, events and
# webhooks.
__all__ = ["JobView", "Links", "StageView", "StageWeights"]

MAX_SEED = 2**63 - 1  # stage seeds are taken modulo 2**63 (cascade.pipeline.stage_seed)

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="reproduces the image when reused")]
Steps = Annotated[
    int,
    Field(
        ge=1,
        le=1000,
        description="sampler steps for every stage (default: each stage's own, GET /v1/limits). "
        "1 is the fastest setting: a stage with a distilled student (sr256's demo weights) "
        "runs it in one network call",
    ),
]
ClassId = Annotated[int, Field(ge=0, le=999, description="ImageNet class index")]
PRIORITY = (
    "each stage's queue serves high before normal before low; within a priority, jobs of "
    "different API keys take turns"
)
FORMAT = (
    "the result's file format; the generation parameters are embedded (PNG: an iTXt chunk "
    "named parameters; WebP and JPEG: XMP)"
)
QUALITY = (
    f"{' and '.join(LOSSY_FORMATS)} only (1..100, default {DEFAULT_QUALITY}); refused for png, "
    "which is lossless"
)
Quality = Annotated[int, Field(ge=1, le=100, description=QUALITY)]
DRY_RUN = (
    "true: queue nothing and answer 200 with a quote (the stages it would run, their cost and "
    "estimated seconds)"
)


def _scale(value: int) -> int:
    if value not in SCALES:
        raise ValueError(f"scale must be {' or '.join(map(str, SCALES))}, got {value}")
    return value


# Checked by _scale (its message names the choices); documented as the enum it is.
Scale = Annotated[int, AfterValidator(_scale), Field(json_schema_extra={"enum": list(SCALES)})]


class GenerationRequest(BaseModel):
    """Generate one image of an ImageNet class at 64, 256 or 1024 pixels."""

    model_config = ConfigDict(extra="forbid", strict=True)

    class_id: ClassId | None = None
    class_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a class name (GET /v1/classes lists those the base knows)",
        examples=["tabby"],  # one of the demo base's classes
    )
    size: Literal[64, 256, 1024] = 256
    seed: Seed | None = None
    steps: Steps | None = None
    sampler: SamplerName | None = None
    guidance: float = Field(
        1.0, ge=0, le=50, allow_inf_nan=False, description="classifier-free guidance (1 = none)"
    )
    color_fix: ColorFix = Field(
        "none", description="colour correction of each upscaling stage against its input"
    )
    format: OutputFormat = Field("png", description=FORMAT)
    quality: Quality | None = None
    webhook_url: AnyHttpUrl | None = Field(None, strict=False)
    priority: Priority = Field("normal", description=PRIORITY)
    dry_run: bool = Field(False, description=DRY_RUN)

    @model_validator(mode="after")
    def _one_class(self) -> GenerationRequest:
        if (self.class_id is None) == (self.class_name is None):
            raise ValueError("give exactly one of class_id (0..999) or class_name")
        check_output(self.format, self.quality)
        return self


class UpscaleForm(BaseModel):
    """Upscale an uploaded PNG, JPEG or WebP by 4 or 16 (or to a target size)."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile
    scale: Scale | None = None
    target_size: int | None = Field(None, ge=1, le=65536, description="output's longer side")
    seed: Seed | None = None
    steps: Steps | None = None
    sampler: SamplerName | None = None
    color_fix: ColorFix = Field(
        "none",
        description="colour correction against the input (the residual upscalers keep "
        "colour exact; wavelet or adain help eps-prediction weights)",
    )
    fidelity: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="1: the most faithful output (the same for every seed: the clean "
        "estimate averaged over the input's eight flips and rotations); 0: the full "
        "generative sample; between: more generated detail and less fidelity as it falls "
        "(default: each stage's own; for the project's upscalers "
        + ", ".join(f"{stage} {value}" for stage, value in DEFAULT_FIDELITY.items())
        + ")",
    )
    low_band: LowBand | None = Field(
        None,
        description="where the output's coarse structure (the frequencies the input itself "
        "carries) comes from: estimate, the model's clean estimate (fidelity 1's, in one "
        "view), so sampling adds only the finer detail the input cannot carry; or sample, the "
        "sampled image as is "
        "(default: estimate for the project's upscalers, sample for released eps weights)",
    )
    class_id: ClassId | None = Field(None, description="for class-conditional upscalers only")
    format: OutputFormat = Field(
        "png",
        description=FORMAT + ". An input's alpha, greyscale, ICC profile and EXIF carry over "
        "(jpeg holds no alpha: refused for an image with one)",
    )
    quality: Quality | None = None
    webhook_url: AnyHttpUrl | None = None
    priority: Priority = Field("normal", description=PRIORITY)
    dry_run: bool = Field(False, description=DRY_RUN)

    @model_validator(mode="after")
    def _one_size(self) -> UpscaleForm:
        if self.scale is not None and self.target_size is not None:
            raise ValueError("give scale or target_size, not both")
        check_output(self.format, self.quality)
        return self


class JobAccepted(BaseModel):
    """A queued job: poll `links.self`, fetch `links.result` when it has succeeded."""

    id: str
    status: JobStatus
    seed: int
    stages: list[str]
    links: Links
    random_weights: bool | None = Field(
        None, description="whether a planned stage's workers run random weights (None: unknown)"
    )
    warning: str | None = None
    waiting: str | None = Field(
        None, description="a stage the job needs has no live worker now: the job waits for one"
    )
    replayed: bool = Field(
        False, description="true: an earlier request with this Idempotency-Key made this job"
    )


class JobList(BaseModel):
    """A page of the caller's jobs, newest first."""

    jobs: list[JobView]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )


class StageQuote(BaseModel):
    name: str
    height: int
    width: int
    sampler: str
    steps: int
    cost: int = Field(description="sampler steps x output pixels")
    queue_depth: int = Field(description="stage jobs waiting in this stage's queue now")
    workers: int = Field(description="workers serving this stage now")
    measured_runs: int = Field(description="runs of this stage the estimate is measured from")
    seconds_per_megapixel_step: float | None = Field(
        description="measured seconds per sampler step per million output pixels"
    )
    wait_seconds: float | None = Field(description="queue wait at this stage; None: unknown")
    run_seconds: float | None = Field(description="sampling time; None: not measured yet")
    memory_mb: int = Field(description="estimated peak memory of a worker running this stage")


class Quote(BaseModel):
    """What a request would run and cost, answered for `dry_run`; nothing is queued."""

    dry_run: Literal[True] = True
    kind: Literal["generation", "upscale"]
    request: dict[str, object] = Field(description="the request as it would be queued")
    seed: int | None = Field(description="the seed given; None: one would be drawn")
    output: dict[str, int]
    stages: list[StageQuote]
    cost: int = Field(description="sampler steps x output pixels, every stage")
    wait_seconds: float | None
    run_seconds: float | None
    total_seconds: float | None
    memory_mb: int = Field(description="the most memory one of its stages needs on a worker")
    random_weights: bool | None
    notes: list[str] = Field(description="why a figure is missing, and other caveats")


class Limits(BaseModel):
    """What the service accepts: sizes, scales, choices, limits and per-stage defaults."""

    sizes: list[int]
    scales: list[int]
    samplers: list[str]
    color_fixes: list[str]
    low_bands: list[str]
    formats: list[str] = Field(description="result file formats (`format` on both POST routes)")
    default_quality: int = Field(description="webp and jpeg's quality when none is given")
    max_upload_bytes: int
    max_input_pixels: int
    max_output_pixels: int
    max_steps: int
    default_fidelity: float = Field(description="the first upscaling stage's (sr256) default")
    defaults: dict[str, dict[str, object]] = Field(
        description="stage -> sampler and steps (upscalers: and their default fidelity and low "
        "band)"
    )


class ClassInfo(BaseModel):
    id: int
    name: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a sentence saying what was wrong, and details where useful."""

    error: str
    detail: object | None = None


# The job's Server-Sent Events (`GET /v1/jobs/{id}/events`), one model per event type: the SSE
# `id`, `event` (the type) and `data` (JSON) lines, documented as one object each.
class QueuedData(BaseModel):
    status: Literal["queued"]
    kind: Literal["generation", "upscale"]
    stages: list[dict[str, object]] = Field(description="the planned stages and their settings")


class StageStartedData(BaseModel):
    stage: str
    attempt: int = Field(description="1 for the first run, more when the stage was retried")
    worker: str
    model: str | None
    random_weights: bool


class ProgressData(BaseModel):
    stage: str
    step: int
    steps: int
    progress: float = Field(description="the job's progress, 0..1")
    eta_seconds: float | None
    preview: str | None = Field(
        None,
        description="on `CASCADE_PREVIEWS_PER_STAGE` steps of each stage (default 4, evenly "
        "spaced, the last included) only: the sampler's current clean estimate as a "
        "`data:image/webp;base64,...` URL, at most 128 px on its longer side and 16 KB; a tiled "
        "stage shows its current tile",
        examples=["data:image/webp;base64,UklGRh4AAABXRUJQVlA4TBEAAAAvAAAAAAfQ//73v/+BiOh/AAA="],
    )


class StageFinishedData(BaseModel):
    stage: str
    seconds: float | None
    preview: str = Field(description="the stage's image (PNG)")


class StageRetryingData(BaseModel):
    stage: str
    error: str = Field(description="why the stage runs again")


class QueuedEvent(BaseModel):
    """The job was accepted: its first event."""

    id: str = Field(description="send back as Last-Event-ID to resume after it")
    event: Literal["queued"]
    data: QueuedData


class StageStartedEvent(BaseModel):
    """A worker took a stage up."""

    id: str
    event: Literal["stage_started"]
    data: StageStartedData


class ProgressEvent(BaseModel):
    """A stage's sampler step (at most every half second, and always its first and last and
    those carrying a live preview)."""

    id: str
    event: Literal["progress"]
    data: ProgressData


class StageFinishedEvent(BaseModel):
    """A stage's image is ready."""

    id: str
    event: Literal["stage_finished"]
    data: StageFinishedData


class StageRetryingEvent(BaseModel):
    """A stage whose worker was lost or stopped is queued again."""

    id: str
    event: Literal["stage_retrying"]
    data: StageRetryingData


class EndEvent(BaseModel):
    """The last event: its data is the job as GET /v1/jobs/{id} shows it (and webhooks get)."""

    id: str
    event: Literal["succeeded", "failed", "canceled"]
    data: JobView


JobEvent = Annotated[
    QueuedEvent
    | StageStartedEvent
    | ProgressEvent
    | StageFinishedEvent
    | StageRetryingEvent
    | EndEvent,
    Field(discriminator="event"),
]
