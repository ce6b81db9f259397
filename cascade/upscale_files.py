"""An image's upscale through the cascade into files: the one path `cascade sample --upscale`
and `cascade upscale` both run. The input stays uint8 until a stage crops it, every stage but the
last runs in float as the service runs it, the last is encoded straight to its file (in tiles,
band by band, when larger than its window), and each file appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

from torch import Tensor

from cascade.chain import Cascade, StageCallback
from cascade.formats import Output, generation_parameters
from cascade.images import save_image
from cascade.pipeline import Stage
from cascade.stages import StageRun
from cascade.tiled_upscale import tile_count, tiled_upscale, upscale_to_file


def file_output(
    output: Output,
    cascade: Cascade,
    runs: Mapping[str, StageRun],
    stages: Sequence[str],
    seed: int,
    kind: str,
    request: dict[str, object],
) -> Output:
    """`output` (format, quality, what the input carries) with the parameters of the stages
    that made the file (each stage's run as it applies to its model) and the request's fields."""
    made = [
        (name, cascade.stages[name].model.id, cascade.stages[name].effective(runs[name]))
        for name in stages
    ]
    parameters = generation_parameters(kind, seed, made, **request)
    return dataclasses.replace(output, parameters=parameters)


def stage_window(stage: Stage, tile: int | None) -> int | None:
    """The window side a stage's tiles take under `--tile` (at most its native output size; None:
    the native size); ValueError when its network cannot run windows of that size."""
    if tile is None:
        return None
    window = min(tile, stage.output_size)
    multiple = math.lcm(stage.scale, stage.model.network.config.size_multiple)
    if window % multiple:
        raise ValueError(
            f"--tile {tile}: {stage.name} ({stage.model.id}) runs windows in multiples of "
            f"{multiple} output pixels, up to its native {stage.output_size}"
        )
    return window


def stage_labels(
    stages: Sequence[Stage], height: int, width: int, tile: int | None = None
) -> dict[str, str]:
    """`sr256 384x384, 4 tiles` by stage: the output size each stage makes of an input of
    `height` x `width`, and how many windows it runs."""
    labels = {}
    for stage in stages:
        height, width = height * stage.scale, width * stage.scale
        window = stage_window(stage, tile) or stage.output_size
        tiles = tile_count(stage, height, width, window) if max(height, width) > window else 1
        labels[stage.name] = f"{stage.name} {width}x{height}" + (
            f", {tiles} tiles" if tiles > 1 else ""
        )
    return labels


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary)` beside `path`, renamed to `path` once whole (removed if it fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def upscale_image(
    stages: Sequence[Stage],
    image: Tensor,
    seed: int,
    runs: Mapping[str, StageRun],
    files: Mapping[str, tuple[Path, Output]],
    *,
    tile: int | None = None,
    callback: StageCallback | None = None,
    jpeg_quality: int | None = None,
) -> Iterator[Path]:
    """One decoded image (uint8 [1,3,h,w]) upscaled through `stages`, yielding each file as it
    is written: every stage but the last in float as the service runs it (written when `files`
    names it), the last encoded straight to its file (`files` must name it) by
    `cascade.tiled_upscale.upscale_to_file`, in tiles of at most `tile` output pixels when
    given and band by band. `callback(stage, step, total, x0)` reports each stage's steps.
    A JPEG input (`jpeg_quality` from its file) is cleaned first as the service cleans it
    (`Stage.prepare_input`)."""
    x = stages[0].prepare_input(image, jpeg_quality) if stages else image
    for index, stage in enumerate(stages):
        run, window = runs[stage.name], stage_window(stage, tile)

        def progress(step: int, total: int, x0: Tensor, name: str = stage.name) -> None:
            if callback is not None:
                callback(name, step, total, x0)

        if index == len(stages) - 1:
            path, output = files[stage.name]
            write = partial(
                upscale_to_file, stage, x, seed, output=output, run=run, callback=progress,
                tile=window,
            )  # fmt: skip
            yield write_atomically(path, write)
            return
        # As `Stage.run` samples it (one window when it fits), in windows of at most `window`.
        tiled = tiled_upscale(stage, x, [seed], run=run, callback=progress, tile=window)
        assert isinstance(tiled, Tensor)
        x = tiled
        if stage.name in files:
            path, output = files[stage.name]
            yield write_atomically(path, partial(save_image, x, output=output))
