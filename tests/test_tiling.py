"""Tests for tile planning and overlap-blended tiled application."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from cascade.tiling import plan_tiles, tiled_apply

SCALE = 2


def _nearest(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest")


def _conv_fn(radius: int) -> Callable[..., torch.Tensor]:
    """Fixed depthwise conv (zero padding) of receptive radius `radius`, then nearest upsample."""
    g = torch.Generator().manual_seed(0)
    k = 2 * radius + 1
    weight = torch.randn(3, 1, k, k, generator=g, dtype=torch.float64)

    def fn(x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        return _nearest(F.conv2d(x, weight, padding=radius, groups=3))

    return fn


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1


def _valid_mask(h: int, w: int, tile: int, overlap: int, radius: int) -> torch.Tensor:
    """Low-res pixels at least `radius` from every tile edge that is not an image border."""
    ok = torch.ones(h, w, dtype=torch.bool)
    for top, left in plan_tiles(h, w, tile, overlap):
        near = torch.zeros(h, w, dtype=torch.bool)
        if top > 0:
            near[top : top + radius, left : left + tile] = True
        if top + tile < h:
            near[top + tile - radius : top + tile, left : left + tile] = True
        if left > 0:
            near[top : top + tile, left : left + radius] = True
        if left + tile < w:
            near[top : top + tile, left + tile - radius : left + tile] = True
        ok &= ~near
    return ok


def test_plan_tiles_cover_and_align() -> None:
    assert plan_tiles(16, 16, 16, 4) == [(0, 0)]
    assert plan_tiles(8, 8, 16, 4) == [(0, 0)]
    tiles = plan_tiles(40, 29, 16, 4)
    tops = sorted({t for t, _ in tiles})
    lefts = sorted({left for _, left in tiles})
    assert tops == [0, 12, 24]  # stride 12, last flush with the border
    assert lefts == [0, 12, 13]
    assert len(tiles) == len(tops) * len(lefts)
    covered = torch.zeros(40, 29, dtype=torch.bool)
    for t, left in tiles:
        covered[t : t + 16, left : left + 16] = True
    assert covered.all()
    with pytest.raises(ValueError):
        plan_tiles(32, 32, 16, 16)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 23), (9, 50), (5, 5), (1, 40)])
def test_identity_is_exact_everywhere(h: int, w: int) -> None:
    x = _image(h, w)
    out = tiled_apply(lambda t, p: _nearest(t), x, SCALE, tile=16, overlap=4)
    assert out.shape == (2, 3, h * SCALE, w * SCALE)
    torch.testing.assert_close(out, _nearest(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("h,w,tile,overlap,radius", [(48, 48, 16, 6, 1), (45, 37, 16, 8, 2)])
def test_local_fn_matches_untiled(h: int, w: int, tile: int, overlap: int, radius: int) -> None:
    assert overlap >= 2 * radius
    fn = _conv_fn(radius)
    x = _image(h, w, seed=1)
    out = tiled_apply(fn, x, SCALE, tile=tile, overlap=overlap)
    full = fn(x)
    assert out.shape == full.shape
    mask = _nearest(_valid_mask(h, w, tile, overlap, radius)[None, None].double()).bool()
    mask = mask.expand_as(out)
    # The compared region includes blended overlap bands, not only single-tile pixels.
    cover = torch.zeros(h, w)
    for top, left in plan_tiles(h, w, tile, overlap):
        cover[top : top + tile, left : left + tile] += 1
    assert (_valid_mask(h, w, tile, overlap, radius) & (cover >= 2)).any()
    torch.testing.assert_close(out[mask], full[mask], atol=1e-5, rtol=0)


def test_blend_region_is_exercised() -> None:
    # With overlap > 2*radius some compared pixels get fractional weights from two tiles;
    # a fn that adds a per-tile constant reveals the weights: they must sum to one.
    x = torch.zeros(1, 1, 40, 40, dtype=torch.float64)

    def offset(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return _nearest(t) + float(pos[0] * 100 + pos[1])

    out = tiled_apply(offset, x, SCALE, tile=16, overlap=8)
    values = torch.unique(out)
    tile_ids = {float(t * 100 + left) for t, left in plan_tiles(40, 40, 16, 8)}
    assert len(set(values.tolist()) - tile_ids) > 0  # genuinely blended pixels exist
    assert out.min() >= min(tile_ids) and out.max() <= max(tile_ids)
    # Seamless: the blend changes smoothly, with no jump larger than one ramp step.
    row_step = (out[..., 1:, :] - out[..., :-1, :]).abs().max()
    biggest_gap = max(tile_ids) - min(tile_ids)
    assert row_step < biggest_gap / 4


def test_position_argument_and_tile_sizes() -> None:
    seen: list[tuple[int, int, tuple[int, ...]]] = []

    def record(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        assert pos.dtype == torch.long and pos.shape == (2,)
        seen.append((int(pos[0]), int(pos[1]), tuple(t.shape)))
        return _nearest(t)

    tiled_apply(record, _image(30, 20), SCALE, tile=12, overlap=4)
    assert [(a, b) for a, b, _ in seen] == plan_tiles(30, 20, 12, 4)
    assert all(shape == (2, 3, 12, 12) for _, _, shape in seen)


def test_small_input_padded_by_reflection() -> None:
    shapes: list[tuple[int, ...]] = []

    def record(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return _nearest(t, 4)

    x = _image(6, 10)
    out = tiled_apply(record, x, 4, tile=16, overlap=4)
    assert shapes == [(2, 3, 16, 16)]
    assert out.shape == (2, 3, 24, 40)
    torch.testing.assert_close(out, _nearest(x, 4), atol=1e-12, rtol=0)


def test_fn_may_change_channels_and_bad_shape_raises() -> None:
    x = _image(20, 20)
    out = tiled_apply(lambda t, p: _nearest(t.mean(1, keepdim=True)), x, SCALE, 8, 2)
    torch.testing.assert_close(out, _nearest(x.mean(1, keepdim=True)), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        tiled_apply(lambda t, p: t, x, SCALE, 8, 2)
