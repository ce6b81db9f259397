"""Tile placement and blend windows of `TiledDenoiser` (its output against untiled denoising is
tested in test_pipeline.py)."""

from __future__ import annotations

import torch

from cascade.tiling import axis_starts, blend_ramp


def test_tile_starts_cover_the_axis_and_align_the_last_tile() -> None:
    assert axis_starts(16, 16, 4) == [0]
    assert axis_starts(8, 16, 4) == [0]  # shorter than a tile: one tile
    assert axis_starts(40, 16, 4) == [0, 12, 24]  # stride 12, the last flush with the border
    assert axis_starts(29, 16, 4) == [0, 12, 13]
    for n in (17, 29, 40, 100):
        covered = torch.zeros(n, dtype=torch.bool)
        for start in axis_starts(n, 16, 4):
            covered[start : start + 16] = True
        assert covered.all()


def test_blend_ramp_is_positive_and_ramps_only_at_shared_edges() -> None:
    window = blend_ramp(8, 3, ramp_start=True, ramp_end=False)
    assert torch.allclose(window[:3], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert (window[3:] == 1).all()
    both = blend_ramp(8, 3, ramp_start=True, ramp_end=True)
    assert both.min() > 0 and torch.equal(both, both.flip(0))
    assert (blend_ramp(8, 3, ramp_start=False, ramp_end=False) == 1).all()
