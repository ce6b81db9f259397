"""A job's plan: which stages a generation or an upscale runs, at what sizes and settings, and
the output it makes; a request that cannot be planned raises `PlanError`.

The stage rules (the maths) live in the torch-free `cascade.stages`, which `cascade.pipeline`
uses too, so the API plans a job without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from cascade.classes import class_names, resolve_class
from cascade.stages import (
    SCALES,
    STAGE_OUTPUT,
    ColorFix,
    LowBand,
    SamplerName,
    StageRun,
    generation_stages,
    run_sampler,
    upscale_stages,
)
from jobs.settings import Settings

RUN_FIELDS = tuple(field.name for field in fields(StageRun))
UPSCALE_FACTOR = 4  # every upscaling stage multiplies each side by 4


class PlanError(ValueError):
    """A request no plan can serve: the message says what was wrong and what is allowed;
    `reason` "too_large" when only its size is (the API answers 413 then, else 422)."""

    def __init__(self, message: str, reason: Literal["invalid", "too_large"] = "invalid"):
        super().__init__(message)
        self.reason = reason


def upscale_factor(height: int, width: int, scale: int | None, target: int | None) -> int:
    """The requested scale, or the smallest one that reaches `target` (the longer side)."""
    if target is None:
        return scale or SCALES[0]
    side = max(height, width)
    for factor in SCALES:
        if side * factor >= target:
            return factor
    raise PlanError(
        f"target_size {target} is more than {SCALES[-1]}x the image's longer side ({side} pixels)"
    )


def upscaled_size(height: int, width: int, scale: int, target: int | None) -> tuple[int, int]:
    """Final (height, width): scaled, then shrunk so the longer side is `target` when given."""
    height, width = height * scale, width * scale
    if target is not None and target < max(height, width):
        ratio = target / max(height, width)
        height, width = max(1, round(height * ratio)), max(1, round(width * ratio))
    return height, width


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a job as planned at submission: its output size and how it runs (the
    request's settings as given; the stage applies those that concern its model)."""

    name: str
    height: int
    width: int
    run: StageRun

    @property
    def cost(self) -> int:
        """Relative work: output pixels times sampler steps (what a step costs scales with
        pixels), used to weight progress across stages."""
        return self.height * self.width * self.run.steps

    def to_dict(self) -> dict[str, object]:
        """Flat JSON for the job record: name, size and the run's fields."""
        return {"name": self.name, "height": self.height, "width": self.width, **asdict(self.run)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PlannedStage:
        run = {key: data[key] for key in RUN_FIELDS if key in data}
        if "color" in data:  # a record written before the field was named color_fix
            run.setdefault("color_fix", data["color"])
        return cls(str(data["name"]), int(data["height"]), int(data["width"]), StageRun(**run))


def sizes(stages: list[str], height: int | None, width: int | None) -> list[tuple[int, int]]:
    """Output (height, width) after each stage; a generation starts from nothing."""
    out = []
    for name in stages:
        if name == "base64":
            height = width = STAGE_OUTPUT[name]
        else:
            assert height is not None and width is not None
            height, width = height * UPSCALE_FACTOR, width * UPSCALE_FACTOR
        out.append((height, width))
    return out


@dataclass(frozen=True)
class Plan:
    """What a job runs (its stages in order) and the (height, width) it makes; an upscale's
    `scale` as chosen (the request's, or the one that reaches its target size)."""

    stages: list[PlannedStage]
    output: tuple[int, int]
    scale: int | None = None


def plan_stages(
    settings: Settings,
    stages: list[str],
    start: tuple[int, int] | None,
    *,
    sampler: SamplerName | None,
    steps: int | None,
    guidance: float = 1.0,
    color_fix: ColorFix = "none",
    fidelity: float | None = None,
    low_band: LowBand | None = None,
) -> list[PlannedStage]:
    """Each stage's output size and run: the request's sampler and steps, else the stage's
    defaults, and the request's guidance, colour fix, fidelity and low band (the stage applies
    those that concern its model)."""
    if steps is not None and not 1 <= steps <= settings.max_steps:
        raise PlanError(f"steps must be between 1 and {settings.max_steps}, got {steps}")
    height, width = start if start else (None, None)
    planned = []
    for name, (h, w) in zip(stages, sizes(stages, height, width), strict=True):
        count = steps or settings.steps_for(name)
        try:
            chosen = run_sampler(sampler, settings.sampler_for(name), count)
        except ValueError as error:
            raise PlanError(f"stage {name}: {error}") from None
        run = StageRun(
            chosen,
            count,
            guidance=guidance,
            color_fix=color_fix,
            fidelity=fidelity,
            low_band=low_band,
        )
        planned.append(PlannedStage(name, h, w, run))
    return planned


def planned_class(class_id: int | None, class_name: str | None, known: list[int] | None) -> int:
    """The class a generation draws: its id, or its name resolved; one of `known` (the ids the
    base's workers announced) when given."""
    if class_name is not None:
        try:
            class_id = resolve_class(class_name)
        except ValueError:
            raise PlanError(f"unknown class name {class_name!r}: see GET /v1/classes") from None
    assert class_id is not None  # the request's schema asks for one of the two
    if known is not None and class_id not in known:
        names = class_names()
        listed = ", ".join(f"{index} ({names[index]})" for index in known)
        raise PlanError(
            f"class {class_id} ({names[class_id]}) is not one the loaded base model was trained "
            f"on; it knows: {listed}"
        )
    return class_id


def plan_generation(
    settings: Settings,
    size: int,
    *,
    sampler: SamplerName | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    color_fix: ColorFix = "none",
) -> Plan:
    """A generation at `size` pixels: the base, then the upscalers up to that size."""
    try:
        names = generation_stages(size)
    except ValueError as error:
        raise PlanError(str(error)) from None
    stages = plan_stages(
        settings, names, None, sampler=sampler, steps=steps, guidance=guidance, color_fix=color_fix
    )
    return Plan(stages, (size, size))


def plan_upscale(
    settings: Settings,
    height: int,
    width: int,
    *,
    scale: int | None = None,
    target: int | None = None,
    sampler: SamplerName | None = None,
    steps: int | None = None,
    color_fix: ColorFix = "none",
    fidelity: float | None = None,
    low_band: LowBand | None = None,
) -> Plan:
    """An upscale of a `height` x `width` image by `scale`, or to `target` on the longer side;
    refused when its output would pass `settings.max_output_pixels`."""
    factor = upscale_factor(height, width, scale, target)
    if height * factor * width * factor > settings.max_output_pixels:
        raise PlanError(
            f"a {factor}x upscale of {width}x{height} would be {width * factor}x{height * factor} "
            f"pixels; the limit is {settings.max_output_pixels} pixels",
            reason="too_large",
        )
    try:
        names = upscale_stages(height, width, factor)
    except ValueError as error:
        raise PlanError(str(error)) from None
    stages = plan_stages(
        settings,
        names,
        (height, width),
        sampler=sampler,
        steps=steps,
        color_fix=color_fix,
        fidelity=fidelity,
        low_band=low_band,
    )
    return Plan(stages, upscaled_size(height, width, factor, target), factor)
