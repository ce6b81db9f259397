"""Which stages a request runs, at what size and cost: the cascade's plan without torch.

The rules mirror `Cascade.plan_generation` and `Cascade.plan_upscale` in `cascade.pipeline`
(tests check that they agree), so the API can plan a job without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

STAGES: tuple[str, ...] = ("base64", "sr256", "sr1024")
STAGE_OUTPUT: dict[str, int] = {"base64": 64, "sr256": 256, "sr1024": 1024}
STAGE_INPUT: dict[str, int] = {"sr256": 64, "sr1024": 256}
UPSCALE_FACTOR = 4  # every upscaling stage multiplies each side by 4
SIZES: tuple[int, ...] = tuple(STAGE_OUTPUT.values())
SCALES: tuple[int, ...] = (4, 16)


def generation_stages(size: int) -> list[str]:
    """Stages a generation at `size` pixels runs through, in order."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size}")
    return [name for name in STAGES if STAGE_OUTPUT[name] <= size]


def upscale_stages(height: int, width: int, scale: int) -> list[str]:
    """Stages an upscale runs: 4x enters at the stage whose native input is nearest the longer
    side; 16x runs sr256 then sr1024."""
    if scale == 16:
        return ["sr256", "sr1024"]
    if scale != 4:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale}")
    side = max(height, width)
    return [min(STAGE_INPUT, key=lambda name: abs(math.log(side / STAGE_INPUT[name])))]


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
    """One stage of a job as planned at submission: sampler, steps and output size."""

    name: str
    sampler: str
    steps: int
    height: int
    width: int

    @property
    def cost(self) -> int:
        """Relative work: output pixels times sampler steps (what a step costs scales with
        pixels), used to weight progress across stages."""
        return self.height * self.width * self.steps

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
