"""The cascade as a chain of stages: which stages a generation or an upscale runs
(`cascade.stages` rules) and the plain loop that hands each stage's float output to the next."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cascade.pipeline import Stage, StageError, default_weights, load_stage
from cascade.stages import DEFAULT_RUNS, STAGES, StageRun, generation_stages, upscale_stages

StageCallback = Callable[[str, int, int, Tensor], None]


@dataclass
class CascadeResult:
    """Each stage's output (float, [-1, 1], CPU) in order, and the seeds that made them."""

    images: dict[str, Tensor]
    seeds: list[int]

    @property
    def final(self) -> Tensor:
        return list(self.images.values())[-1]


class Cascade:
    """The stages in order; `generate` and `upscale` run the ones a request needs."""

    def __init__(self, stages: Sequence[Stage]):
        self.stages = {stage.name: stage for stage in stages}

    @classmethod
    def load(
        cls,
        weights: Mapping[str, str] | None = None,
        device: torch.device | str = "cpu",
        runs: Mapping[str, StageRun] | None = None,
        compile: bool = False,
        stages: Sequence[str] = STAGES,
    ) -> Cascade:
        """Stages from checkpoint paths or `preset:NAME` sources (default: the demo weights
        where present, else tiny random presets), on the fast path for `device`."""
        sources = {**default_weights(), **(weights or {})}
        defaults = {**DEFAULT_RUNS, **(runs or {})}
        loaded = [
            load_stage(name, sources[name], device, defaults[name], compile) for name in stages
        ]
        return cls(loaded)

    def plan_generation(self, size: int) -> list[Stage]:
        """The stages a generation at `size` runs through (`cascade.stages` rules)."""
        try:
            return [self.stages[name] for name in generation_stages(size)]
        except ValueError as error:
            raise StageError(str(error)) from None

    def plan_upscale(self, height: int, width: int, scale: int) -> list[Stage]:
        """Stages for an upscale by 4 or 16 (`cascade.stages.upscale_stages`). Larger inputs
        than a stage's native size are tiled; smaller ones run at their own size."""
        try:
            return [self.stages[name] for name in upscale_stages(height, width, scale)]
        except ValueError as error:
            raise StageError(str(error)) from None

    def generate(
        self,
        class_ids: Sequence[int],
        size: int,
        seeds: Sequence[int],
        *,
        runs: Mapping[str, StageRun] | None = None,
        callback: StageCallback | None = None,
    ) -> CascadeResult:
        """Class-conditional generation at 64, 256 or 1024 pixels; `runs` by stage name
        (default: each stage's own)."""
        return self._loop(self.plan_generation(size), seeds, class_ids, None, runs, callback)

    def upscale(
        self,
        image: Tensor,
        seeds: Sequence[int],
        *,
        scale: int = 4,
        class_ids: Sequence[int] | None = None,
        runs: Mapping[str, StageRun] | None = None,
        callback: StageCallback | None = None,
        jpeg_quality: int | None = None,
    ) -> CascadeResult:
        """Upscale images ([B,3,H,W] in [-1,1]) by 4 or 16; JPEG ones (`jpeg_quality` from
        their file) cleaned first by the first stage's pre-clean (`Stage.prepare_input`)."""
        stages = self.plan_upscale(*image.shape[-2:], scale)
        image = stages[0].prepare_input(image, jpeg_quality)
        return self._loop(stages, seeds, class_ids, image, runs, callback)

    @staticmethod
    def _loop(
        stages: Sequence[Stage],
        seeds: Sequence[int],
        class_ids: Sequence[int] | None,
        x: Tensor | None,
        runs: Mapping[str, StageRun] | None,
        callback: StageCallback | None,
    ) -> CascadeResult:
        images: dict[str, Tensor] = {}
        for stage in stages:

            def report(step: int, total: int, x0: Tensor, name: str = stage.name) -> None:
                if callback is not None:
                    callback(name, step, total, x0)

            x = stage.run(
                seeds=seeds,
                class_ids=class_ids,
                low_res=x,
                run=(runs or {}).get(stage.name),
                callback=report,
            )
            images[stage.name] = x.cpu()
        return CascadeResult(images, list(seeds))
