"""Tiled image-to-image upscaling with overlap-weighted blending, so memory is bounded."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.denoiser import Cond, Denoiser, Prediction
from cascade.schedule import Schedule

TileFn = Callable[[Tensor, Tensor], Tensor]


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


def plan_tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Row-major (top, left) positions of `tile`-sized tiles covering an h x w image."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got {tile=}, {overlap=}")
    if h < 1 or w < 1:
        raise ValueError(f"empty image {h}x{w}")
    return [
        (t, left) for t in axis_starts(h, tile, overlap) for left in axis_starts(w, tile, overlap)
    ]


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


def _reflect_pad_to(x: Tensor, h: int, w: int) -> Tensor:
    """Reflection-pad bottom/right up to h x w; repeated because one reflect pad must be < size."""
    while x.shape[-2] < h or x.shape[-1] < w:
        ph = min(h - x.shape[-2], x.shape[-2] - 1) if x.shape[-2] < h else 0
        pw = min(w - x.shape[-1], x.shape[-1] - 1) if x.shape[-1] < w else 0
        if ph == 0 and pw == 0:
            # A 1-pixel side cannot reflect; replicate is the only meaningful extension.
            return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


def tiled_apply(fn: TileFn, low_res: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """Overlapping-tile application of an upscaler with normalised linear-ramp blending.

    `fn(tile_lr, pos)` maps a low-res tile [B,C,tile,tile] to [B,C',tile*scale,tile*scale];
    `pos` is the tile's (top, left) in low-res pixels as a long tensor [2]. Seeding per tile
    from `pos` (e.g. ``gen.manual_seed(base + int(pos[0]) * w + int(pos[1]))``) makes noise,
    and so the result, independent of processing order and batch composition.

    Tiles run one at a time into preallocated output/weight accumulators, so peak memory is
    one tile's activations plus the output. Each tile's output is weighted by a separable
    window that ramps linearly over `overlap * scale` pixels at edges shared with another tile
    (image borders stay at weight 1) and the sum is divided by the summed weights. Pick
    overlap >= 2 * (receptive radius of fn) so overlapping tiles agree in the blended band.
    Autograd is left to the caller: wrap in ``torch.no_grad()`` for inference.
    """
    if low_res.dim() != 4:
        raise ValueError(f"expected [B,C,h,w], got {tuple(low_res.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = low_res.shape[-2:]
    # Inputs smaller than a tile are padded so fn always sees its native tile size.
    padded = _reflect_pad_to(low_res, max(h, tile), max(w, tile))
    ph, pw = padded.shape[-2:]
    positions = plan_tiles(ph, pw, tile, overlap)
    size = tile * scale
    out: Tensor | None = None
    weight: Tensor | None = None
    for top, left in positions:
        pos = torch.tensor([top, left], dtype=torch.long)
        result = fn(padded[..., top : top + tile, left : left + tile], pos)
        expected = (low_res.shape[0], size, size)
        if result.dim() != 4 or (result.shape[0], *result.shape[-2:]) != expected:
            raise ValueError(f"fn returned {tuple(result.shape)}, expected [B,C',{size},{size}]")
        if out is None:
            # Allocated once, from the first tile, so fn may change channels/dtype/device.
            out = result.new_zeros(result.shape[0], result.shape[1], ph * scale, pw * scale)
            weight = result.new_zeros(1, 1, ph * scale, pw * scale)
        win_h = blend_ramp(size, overlap * scale, top > 0, top + tile < ph)
        win_w = blend_ramp(size, overlap * scale, left > 0, left + tile < pw)
        win = (win_h[:, None] * win_w[None, :]).to(result)
        oy, ox = top * scale, left * scale
        out[..., oy : oy + size, ox : ox + size] += result * win
        weight[..., oy : oy + size, ox : ox + size] += win
    assert out is not None and weight is not None  # plan_tiles always yields >= 1 tile
    out /= weight
    return out[..., : h * scale, : w * scale]


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
