"""Tiled upscales in bounded memory: each output window runs the whole sampler on its own, and
the finished tiles are blended into one band of rows at a time.

Two things keep independent tiles seamless. Noise is keyed to absolute position
(`PositionNoise`): every fixed block of the image draws from a seed of (seed, block row, block
column, draw), so two tiles that overlap see the same noise where they overlap, and a tiled run
sees the noise a single window over the whole image would. Tiles are blended with raised-cosine
ramps (`blend_ramp`) normalised per axis: the blend weights are separable, so each tile's
normalised weight is computed from two 1-D windows and no full-size weight map exists.

Memory: one float band (the tile height times the output width) is alive at a time; rows no
later tile touches are handed out finished (`blend_bands`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 64  # side of the blocks position-keyed noise is drawn in (output pixels)


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
    """1-D blend window: a raised-cosine ramp over `ramp` samples at interior edges, 1 elsewhere,
    > 0 everywhere. Two ramps overlapping by exactly `ramp` samples sum to 1."""
    window = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length)
    if ramp > 0:
        # Sampled at half-integer points, so the ramp never reaches 0 (a pixel seen by one tile
        # keeps weight) and up(i) + up(ramp - 1 - i) == 1.
        phase = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
        up = 0.5 - 0.5 * torch.cos(math.pi * phase)
        if ramp_start:
            window[:ramp] = torch.minimum(window[:ramp], up)
        if ramp_end:
            window[length - ramp :] = torch.minimum(window[length - ramp :], up.flip(0))
    return window


@dataclass(frozen=True)
class Window:
    """One tile's extent along an axis (output pixels) and its normalised blend weights."""

    start: int
    weight: Tensor  # float64 [length]; the windows of an axis sum to 1 at every pixel

    @property
    def length(self) -> int:
        return len(self.weight)

    @property
    def stop(self) -> int:
        return self.start + self.length


def axis_windows(n: int, tile: int, scale: int, overlap: int | None = None) -> list[Window]:
    """Windows along an axis of `n` output pixels: tiles of `tile` (or `n` if shorter) that
    start at multiples of `scale` (so each lines up with its low-res crop), overlapping by
    `overlap` (default tile / 4), ramped there and normalised to sum to 1."""
    tile = min(tile, n)
    overlap = tile // 4 if overlap is None else overlap
    low_tile = tile // scale
    low_overlap = max(0, min(overlap // scale, low_tile - 1))
    starts = [s * scale for s in axis_starts(n // scale, low_tile, low_overlap)]
    ramp = low_overlap * scale
    raw = [blend_ramp(tile, ramp, start > 0, start + tile < n) for start in starts]
    total = torch.zeros(n, dtype=torch.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start : start + tile] += weight
    return [
        Window(start, weight / total[start : start + tile])
        for start, weight in zip(starts, raw, strict=True)
    ]


def tile_edges(windows: Sequence[Window]) -> list[int]:
    """The interior tile borders along an axis (where a seam could show), in order."""
    n = windows[-1].stop
    edges = {edge for window in windows for edge in (window.start, window.stop) if 0 < edge < n}
    return sorted(edges)


def _block_seed(seed: int, row: int, col: int, draw: int, stream: str) -> int:
    key = f"{stream}:{seed}:{row}:{col}:{draw}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class PositionNoise:
    """Standard normal noise keyed to absolute position: a noise source (`noise(like)`) for the
    window of an image at (`top`, `left`), one seed per batch item. Each call is the next draw;
    every `BLOCK`-pixel block of the image takes its values from a generator seeded by (seed,
    block row, block column, draw), so windows that overlap agree where they overlap as long as
    they draw in the same order (the same sampler over the same schedule). `stream` names an
    independent noise field over the same positions."""

    def __init__(
        self, seeds: Sequence[int], top: int, left: int, block: int = BLOCK, stream: str = ""
    ):
        self.seeds = [int(seed) for seed in seeds]
        self.top, self.left, self.block, self.stream = top, left, block, stream
        self.draws = 0

    def __call__(self, like: Tensor) -> Tensor:
        batch, channels, height, width = like.shape
        if batch != len(self.seeds):
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {batch}")
        block, top, left, draw = self.block, self.top, self.left, self.draws
        self.draws += 1
        out = torch.empty(batch, channels, height, width, dtype=torch.float32)
        rows = range(top // block, (top + height - 1) // block + 1)
        cols = range(left // block, (left + width - 1) // block + 1)
        generator = torch.Generator()
        for item, seed in enumerate(self.seeds):
            for row in rows:
                y0, y1 = max(row * block, top), min((row + 1) * block, top + height)
                for col in cols:
                    x0, x1 = max(col * block, left), min((col + 1) * block, left + width)
                    generator.manual_seed(_block_seed(seed, row, col, draw, self.stream))
                    values = torch.randn(channels, block, block, generator=generator)
                    out[item, :, y0 - top : y1 - top, x0 - left : x1 - left] = values[
                        :, y0 - row * block : y1 - row * block, x0 - col * block : x1 - col * block
                    ]
        return out.to(device=like.device, dtype=like.dtype)


# `sample_tile(top, left, height, width)`: the finished tile at those output pixels, [B,3,h,w].
TileSampler = Callable[[int, int, int, int], Tensor]


def blend_bands(
    rows: Sequence[Window],
    cols: Sequence[Window],
    sample_tile: TileSampler,
    *,
    batch: int,
    crop: tuple[int, int] | None = None,
) -> Iterator[Tensor]:
    """Blend every tile `sample_tile` makes into finished bands of rows, top to bottom: float32
    [B, 3, rows, width] in the tiles' range, cropped to `crop` (height, width) when given.
    One band of the tile height is alive at a time; it moves down in place."""
    height, width = rows[-1].stop, cols[-1].stop
    crop_h, crop_w = crop or (height, width)
    tile_h = max(window.length for window in rows)
    band = torch.zeros(batch, 3, tile_h, width)
    offset = 0  # the output row of band[..., 0, :]
    emitted = 0
    for row in rows:
        if row.start > offset:  # rows above this tile row are finished
            yield from _emit(band[..., : row.start - offset, :], offset, emitted, crop_h, crop_w)
            emitted = max(emitted, min(row.start, crop_h))
            _shift_up(band, row.start - offset)
            offset = row.start
        for col in cols:
            tile = sample_tile(row.start, col.start, row.length, col.length)
            weight = (row.weight[:, None] * col.weight[None, :]).to(tile.dtype)
            top = row.start - offset
            band[..., top : top + row.length, col.start : col.stop] += tile * weight
    yield from _emit(band[..., : height - offset, :], offset, emitted, crop_h, crop_w)


def _emit(rows: Tensor, offset: int, emitted: int, crop_h: int, crop_w: int) -> Iterator[Tensor]:
    stop = min(offset + rows.shape[-2], crop_h)
    if stop > emitted:
        yield rows[..., emitted - offset : stop - offset, :crop_w].clone()


def _shift_up(band: Tensor, shift: int) -> None:
    """Move band rows [shift:] to the top in place (chunks no longer than `shift` never overlap
    their source), and zero the rows freed at the bottom."""
    length = band.shape[-2]
    keep = max(0, length - shift)
    for start in range(0, keep, shift):
        stop = min(start + shift, keep)
        band[..., start:stop, :] = band[..., start + shift : stop + shift, :]
    band[..., keep:, :] = 0
