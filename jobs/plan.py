"""Which stages a request runs, at what size and cost: the cascade's plan without torch.

The stage rules live in the torch-free `cascade.stages` (import them from there), which
`cascade.pipeline` uses too, so the API can plan a job without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from cascade.stages import SCALES, STAGE_OUTPUT, StageRun

RUN_FIELDS = tuple(field.name for field in fields(StageRun))
UPSCALE_FACTOR = 4  # every upscaling stage multiplies each side by 4


def upscale_factor(height: int, width: int, scale: int | None, target: int | None) -> int:
    """The requested scale, or the smallest one that reaches `target` (the longer side)."""
    if target is None:
        return scale or SCALES[0]
    side = max(height, width)
    for factor in SCALES:
        if side * factor >= target:
            return factor
    raise ValueError(
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
