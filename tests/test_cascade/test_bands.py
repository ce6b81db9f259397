"""The band split of upscales: a radial high-pass with a raised-cosine edge, and keeping the
faithful estimate's frequencies below the input's Nyquist."""

from __future__ import annotations

import math

import pytest
import torch

from cascade.bands import TRANSITION, high_pass, keep_low_band
from cascade.metrics import hf_ratio


def wave(k: int, size: int = 64, axis: int = -1) -> torch.Tensor:
    """A cosine along `axis` at k / size of Nyquist, one image [1, 3, size, size], sampled so that
    its mirrored extension is exactly periodic (one frequency, no edge effects)."""
    n = torch.arange(size, dtype=torch.float64) + 0.5
    line = torch.cos(math.pi * k / size * n).float()
    image = line[None, :] if axis == -1 else line[:, None]
    return image.expand(size, size).expand(1, 3, size, size).contiguous()


@pytest.mark.parametrize("axis", [-1, -2])
def test_high_pass_removes_what_lies_below_the_edge_and_keeps_what_lies_above(axis):
    cutoff, size = 0.25, 64
    assert 6 / size < cutoff * (1 - TRANSITION) and 24 / size > cutoff * (1 + TRANSITION)
    below, above = wave(6, size, axis), wave(24, size, axis)
    assert high_pass(below, cutoff).abs().max() < 1e-5
    torch.testing.assert_close(high_pass(above, cutoff), above, atol=1e-5, rtol=0)
    mixed = 0.3 * below + 0.2 * above - 0.1  # a flat offset is the lowest frequency of all
    torch.testing.assert_close(high_pass(mixed, cutoff), 0.2 * above, atol=1e-5, rtol=0)


def test_high_pass_edge_is_monotone_between_its_ends():
    """On the edge itself the gain rises from 0 to 1 (half at the cutoff)."""
    gains = []
    for k in (14, 16, 18):  # 0.22, 0.25 and 0.28 of Nyquist
        x = wave(k)
        gains.append(float((high_pass(x, 0.25) * x).sum() / (x * x).sum()))
    assert 0 < gains[0] < gains[1] < gains[2] < 1
    assert gains[1] == pytest.approx(0.5, abs=1e-4)


def test_high_pass_does_not_wrap_borders_and_keeps_shape_and_dtype():
    """A ramp differs at its two borders; filtered periodically, its jump would ring at both."""
    ramp = torch.linspace(-1, 1, 48).expand(2, 3, 40, 48).contiguous()
    out = high_pass(ramp, 0.25)
    assert out.shape == ramp.shape and out.dtype == ramp.dtype
    assert out.abs().max() < 0.05  # a ramp is all low frequency
    assert high_pass(ramp.double(), 0.25).dtype == torch.float64
    with pytest.raises(ValueError, match="cutoff"):
        high_pass(ramp, 0.0)


def test_keep_low_band_takes_the_estimate_below_and_the_sample_above():
    torch.manual_seed(0)
    truth = torch.rand(1, 3, 64, 64) * 2 - 1
    estimate = truth - high_pass(truth, 0.2)  # the truth's low band
    sample = truth + 0.3 * torch.randn_like(truth)  # detail, but errors in every band
    kept = keep_low_band(estimate, sample, scale=4)
    # Above the edge (the hf_ratio band 0.3-0.9 of Nyquist) the sample is untouched ...
    # (hf_ratio's Hann window leaks a little across the band's edge, hence 2 %).
    assert hf_ratio(kept[0], truth[0]) == pytest.approx(hf_ratio(sample[0], truth[0]), rel=2e-2)
    # (this edge runs 0.3-0.45, wholly above the split's)
    torch.testing.assert_close(high_pass(kept, 0.375), high_pass(sample, 0.375), atol=1e-4, rtol=0)
    # ... below it the output is the estimate's: the sample's low-band error is gone.
    # (The split's edge runs 0.2-0.3 of Nyquist; this one 0.12-0.18, wholly below it.)
    low = kept - high_pass(kept, 0.15)
    torch.testing.assert_close(low, estimate - high_pass(estimate, 0.15), atol=1e-4, rtol=0)
    assert (kept - truth).square().mean() < (sample - truth).square().mean()
    torch.testing.assert_close(keep_low_band(estimate, estimate, 4), estimate)
    with pytest.raises(ValueError, match="scale"):
        keep_low_band(estimate, sample, scale=1)
