"""A stage's upscale larger than its network, in tiles and in bounded memory (`cascade.tiling`).

Each output window runs the whole sampler on its own crop of the input; only one band of float
rows is alive at a time, and the input stays in its own dtype (uint8 for a decoded upload) but
for the crop being sampled. A 4096² upscale thus holds its uint8 input, one tile's activations,
one band of rows and whatever the caller keeps of the output: `output="uint8"` keeps uint8
(or pass the bands straight to `cascade.images.write_png` with `upscale_bands`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from cascade.color import apply_color_fix
from cascade.degradations import noise_augment, upsample_condition
from cascade.denoiser import Parameterization
from cascade.formats import Output, save_bands
from cascade.images import as_float_image, save_image, to_uint8
from cascade.samplers import Callback, NoiseSource, randn_like
from cascade.stages import StageRun, stage_seed
from cascade.tiling import PositionNoise, axis_windows, blend_bands


class Stage(Protocol):
    """What a tiled upscale needs of a stage (`cascade.pipeline.Stage`)."""

    name: str

    @property
    def device(self) -> torch.device: ...

    @property
    def scale(self) -> int: ...

    @property
    def output_size(self) -> int: ...

    def effective(self, run: StageRun | None = None) -> StageRun: ...

    def check_input(self, low_res: Tensor | None, batch: int) -> None: ...

    def pad_input(self, low_res: Tensor) -> tuple[Tensor, tuple[int, int]]: ...

    def aug_levels(self, aug_level: float | None, batch: int) -> Tensor: ...

    def upscale_denoiser(self) -> Parameterization: ...

    def tiled(self, height: int, width: int) -> bool: ...

    def run(
        self,
        *,
        seeds: Sequence[int],
        low_res: Tensor | None = None,
        run: StageRun | None = None,
        callback: Callback | None = None,
    ) -> Tensor: ...

    def sample_window(
        self,
        denoiser: Parameterization,
        x: Tensor,
        cond: dict[str, Tensor],
        run: StageRun,
        noise: NoiseSource,
        fixed_noise: NoiseSource | None,
        callback: Callback | None,
    ) -> Tensor: ...


# Low-res pixels a tile's crop reaches past the tile on each side (bicubic taps reach 2).
CROP_MARGIN = 4


def tile_count(stage: Stage, height: int, width: int, tile: int | None = None) -> int:
    """How many tiles an upscale to `height` x `width` output pixels runs."""
    size, scale = tile or stage.output_size, stage.scale
    return len(axis_windows(height, size, scale)) * len(axis_windows(width, size, scale))


def upscale_bands(
    stage: Stage,
    low_res: Tensor,
    seeds: Sequence[int],
    *,
    run: StageRun | None = None,
    aug_level: float | None = None,
    callback: Callback | None = None,
    tile: int | None = None,
) -> Iterator[Tensor]:
    """The upscale of `low_res` ([B,3,h,w], uint8 or float in [-1, 1]) as finished bands of
    rows, float32 [B,3,rows,W] in [-1, 1], top to bottom. Each window of `tile` output pixels
    (default: the network's size) runs the whole sampler on its own crop with noise keyed to
    absolute position (from the item's stage seed), its bicubic condition cut from the upsample
    of a wider crop, and the colour fix applied per tile. `callback(step, total, x0)` counts the
    steps of all tiles (`x0`: the current tile's estimate)."""
    stage.check_input(low_res, len(seeds))
    device, scale = stage.device, stage.scale
    run = stage.effective(run)
    low_res, crop = stage.pad_input(low_res)
    height, width = (side * scale for side in low_res.shape[-2:])
    rows = axis_windows(height, tile or stage.output_size, scale)
    cols = axis_windows(width, tile or stage.output_size, scale)
    item_seeds = [stage_seed(seed, stage.name) for seed in seeds]
    batch = len(seeds)
    levels = stage.aug_levels(aug_level, batch)
    denoiser = stage.upscale_denoiser()
    count, tiles = 0, len(rows) * len(cols)

    def sample_tile(top: int, left: int, tile_h: int, tile_w: int) -> Tensor:
        nonlocal count
        low_top, low_left = top // scale, left // scale
        low_h, low_w = tile_h // scale, tile_w // scale
        y0, x0 = max(0, low_top - CROP_MARGIN), max(0, low_left - CROP_MARGIN)
        y1 = min(low_res.shape[-2], low_top + low_h + CROP_MARGIN)
        x1 = min(low_res.shape[-1], low_left + low_w + CROP_MARGIN)
        wide = as_float_image(low_res[..., y0:y1, x0:x1]).to(device)
        if bool(levels.any()):
            eps = PositionNoise(item_seeds, y0, x0, stream="augment")(wide)
            wide = noise_augment(wide, levels, eps=eps)
        # The upsample of the wider crop equals the whole image's over the tile.
        up = upsample_condition(wide, ((y1 - y0) * scale, (x1 - x0) * scale))
        dy, dx = low_top - y0, low_left - x0
        cond = {
            "low_res": wide[..., dy : dy + low_h, dx : dx + low_w],
            "upsampled": up[
                ..., dy * scale : dy * scale + tile_h, dx * scale : dx * scale + tile_w
            ],
            "aug_level": levels,
        }
        noise = PositionNoise(item_seeds, top, left)
        x = randn_like(torch.empty(batch, 3, tile_h, tile_w, device=device), noise)
        fixed = PositionNoise([0] * batch, top, left)

        def report(step: int, total: int, x0: Tensor) -> None:
            if callback is not None:
                callback(count * total + step, tiles * total, x0)

        image = stage.sample_window(denoiser, x, cond, run, noise, fixed, report)
        count += 1
        return apply_color_fix(image, cond["low_res"], run.color_fix).float().cpu()

    crop_out = (crop[0] * scale, crop[1] * scale)
    for band in blend_bands(rows, cols, sample_tile, batch=batch, crop=crop_out):
        yield band.clamp_(-1, 1)  # weights summing to 1 in float32 may overshoot by an ulp


def tiled_upscale(
    stage: Stage,
    low_res: Tensor,
    seeds: Sequence[int],
    *,
    run: StageRun | None = None,
    aug_level: float | None = None,
    callback: Callback | None = None,
    tile: int | None = None,
    output: Literal["float", "uint8"] = "float",
) -> Tensor | np.ndarray:
    """`upscale_bands` assembled: float32 [B,3,H,W] in [-1, 1] (one float copy of the output),
    or uint8 [B,H,W,3] (no full-size float copy at all)."""
    height, width = (side * stage.scale for side in low_res.shape[-2:])
    batch = len(seeds)
    if output == "uint8":
        out: Tensor | np.ndarray = np.empty((batch, height, width, 3), dtype=np.uint8)
    elif output == "float":
        out = torch.empty(batch, 3, height, width)
    else:
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    row = 0
    for band in upscale_bands(
        stage, low_res, seeds, run=run, aug_level=aug_level, callback=callback, tile=tile
    ):
        rows = band.shape[-2]
        if isinstance(out, np.ndarray):
            out[:, row : row + rows] = to_uint8(band)
        else:
            out[..., row : row + rows, :] = band
        row += rows
    return out


def upscale_to_file(
    stage: Stage,
    low_res: Tensor,
    seed: int,
    path: str | Path,
    output: Output,
    *,
    run: StageRun | None = None,
    callback: Callback | None = None,
    tile: int | None = None,
) -> Path:
    """One image's upscale ([1,3,h,w], uint8 or float) written to `path` as `output` says
    (`cascade.formats.encode`): larger than the network (or than `tile` output pixels), in
    tiles with each finished band encoded as it comes for a PNG (the output never exists whole,
    in float or uint8; WebP and JPEG assemble its uint8 pixels once); else in one window, as
    `Stage.run` samples it."""
    height, width = (side * stage.scale for side in low_res.shape[-2:])
    if not stage.tiled(height, width) and max(height, width) <= (tile or stage.output_size):
        image = stage.run(seeds=[seed], low_res=low_res, run=run, callback=callback)
        return save_image(image, path, output)
    bands = upscale_bands(stage, low_res, [seed], run=run, callback=callback, tile=tile)
    return save_bands(path, height, width, (to_uint8(band)[0] for band in bands), output)


def upscale_to_png(
    stage: Stage,
    low_res: Tensor,
    seed: int,
    path: str | Path,
    *,
    run: StageRun | None = None,
    callback: Callback | None = None,
) -> Path:
    """`upscale_to_file` as a plain RGB PNG."""
    return upscale_to_file(stage, low_res, seed, path, Output(), run=run, callback=callback)
