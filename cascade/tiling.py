"""Tiled denoising for inputs larger than a network's native size, with overlap-weighted
blending, so memory is bounded by one tile's activations."""

from __future__ import annotations

import torch
from torch import Tensor

from cascade.denoiser import Cond, Denoiser, Prediction
from cascade.schedule import Schedule


def axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: stride tile-overlap, last tile flush with the border."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        # Aligning the last tile to the border (instead of padding) keeps every tile full-size
        # and real content; it just overlaps its neighbour by more than `overlap`.
        starts.append(n - tile)
    return starts


def blend_ramp(length: int, ramp: int, ramp_start: bool, ramp_end: bool) -> Tensor:
    """1-D blend window: linear ramp over `ramp` samples at interior edges, 1 elsewhere, > 0."""
    window = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length)
    if ramp > 0:
        # (i + 1) / (ramp + 1) never reaches 0, so a pixel seen by a single tile keeps weight.
        up = torch.arange(1, ramp + 1, dtype=torch.float64) / (ramp + 1)
        if ramp_start:
            window[:ramp] = torch.minimum(window[:ramp], up)
        if ramp_end:
            window[length - ramp :] = torch.minimum(window[length - ramp :], up.flip(0))
    return window


class TiledDenoiser:
    """Tiled denoising at every sampler step with blended predictions (MultiDiffusion,
    Bar-Tal et al. 2023): one noise field for the whole image, so tiles agree and no seams form.

    `tile` is the network's native output size; x tiles start at multiples of `scale` so each
    lines up with its low-res tile. Only one tile's activations are alive at a time.
    """

    def __init__(self, denoiser: Denoiser, tile: int, scale: int, overlap: int | None = None):
        self.denoiser = denoiser
        self.tile = tile
        self.scale = scale
        self.overlap = tile // 4 if overlap is None else overlap

    def _windows(self, n: int) -> list[tuple[int, Tensor]]:
        tile = min(self.tile, n)
        low_tile, low_overlap = (
            tile // self.scale,
            min(self.overlap // self.scale, tile // self.scale - 1),
        )
        starts = [s * self.scale for s in axis_starts(n // self.scale, low_tile, low_overlap)]
        ramp = low_overlap * self.scale
        return [(start, blend_ramp(tile, ramp, start > 0, start + tile < n)) for start in starts]

    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction:
        height, width = x.shape[-2:]
        low_res = cond["low_res"]
        weight = x.new_zeros(1, 1, height, width)
        sums: dict[str, Tensor] = {}
        for top, row_window in self._windows(height):
            for left, col_window in self._windows(width):
                th, tw = len(row_window), len(col_window)
                window = (row_window[:, None] * col_window[None, :]).to(x)
                low = low_res[
                    ...,
                    top // self.scale : (top + th) // self.scale,
                    left // self.scale : (left + tw) // self.scale,
                ]
                pred = self.denoiser(
                    x[..., top : top + th, left : left + tw], t, schedule, {**cond, "low_res": low}
                )
                for name in ("eps", "log_variance", "x0"):
                    value = getattr(pred, name)
                    if value is not None:
                        total = sums.setdefault(name, torch.zeros_like(x))
                        total[..., top : top + th, left : left + tw] += value * window
                weight[..., top : top + th, left : left + tw] += window
        return Prediction(**{name: total / weight for name, total in sums.items()})
