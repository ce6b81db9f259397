"""Tests for PSNR/SSIM (RGB and Y), SR3 consistency, uint8 quantisation and flat grain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascade.degradations import bicubic_degrade
from cascade.metrics import (
    consistency,
    flat_grain,
    flat_mask,
    hf_ratio,
    image_metrics,
    psnr,
    psnr_y,
    ssim,
    ssim_y,
    to_uint8,
)


def _from_uint8(values: torch.Tensor) -> torch.Tensor:
    """uint8-valued CHW tensor to the [-1, 1] float convention."""
    return values.float() / 255.0 * 2.0 - 1.0


def _image(seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)[0]


def test_to_uint8_matches_tensor2img() -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 5).expand(3, 1, 5)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    # 0.0 -> 127.5 rounds half to even, as numpy's round in SR3's tensor2img does.
    assert out[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_identity_is_perfect() -> None:
    x = _image()
    assert psnr(x, x) == math.inf and psnr_y(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim_y(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_constant_offset_psnr_is_analytic(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    values = torch.randint(0, 200, (3, 24, 24), generator=g)
    target, output = _from_uint8(values), _from_uint8(values + d)
    assert psnr(output, target) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)
    # Y is affine in RGB, so an equal offset on R, G, B shifts Y by d * 219/255 exactly.
    dy = d * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(output, target) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)
    assert ssim(output, target) < 1.0


def test_ssim_orders_by_distortion() -> None:
    target = _image(1)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(target.shape, generator=g)
    mild, strong = target + 0.02 * noise, target + 0.2 * noise
    assert 1.0 > ssim(mild, target) > ssim(strong, target)
    assert 1.0 > ssim_y(mild, target) > ssim_y(strong, target)
    assert psnr(mild, target) > psnr(strong, target)


def test_y_of_white_is_235() -> None:
    from cascade.metrics import _y_channel

    white = to_uint8(torch.ones(3, 4, 4))
    assert np.allclose(_y_channel(white), 235.0)
    black = to_uint8(-torch.ones(3, 4, 4))
    assert np.allclose(_y_channel(black), 16.0)


def test_consistency() -> None:
    output = _image(3, size=64)
    low = bicubic_degrade(output[None], 4)[0]
    assert consistency(output, low) < 1e-12
    # A shift of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025.
    assert consistency(output, low + 0.1 * (low < 0.9)) > 0
    flat = torch.zeros(3, 64, 64)
    assert consistency(flat, torch.full((3, 16, 16), 0.1)) == pytest.approx(0.0025, rel=1e-5)
    with pytest.raises(ValueError):
        consistency(torch.zeros(3, 64, 64), torch.zeros(3, 24, 24))


def test_image_metrics_keys_and_batch_of_one() -> None:
    target = _image(4, size=64)
    output = target + 0.05
    low = bicubic_degrade(target[None], 4)[0]
    metrics = image_metrics(output, target, low)
    keys = {"psnr", "ssim", "psnr_y", "ssim_y", "consistency", "hf_ratio", "flat_grain"}
    assert set(metrics) == keys
    assert all(isinstance(v, float) for v in metrics.values())
    assert image_metrics(output[None], target[None], low[None]) == metrics
    assert 0 < metrics["consistency"] < 1e-3


def _grating(size: int, cycles_per_pixel: float, amplitude: float) -> torch.Tensor:
    """A grey CHW image in [-1, 1]: a vertical cosine grating at a given frequency."""
    x = torch.arange(size, dtype=torch.float64)
    row = amplitude * torch.cos(2 * math.pi * cycles_per_pixel * x)
    return row.expand(3, size, size).float()


def test_hf_ratio_of_known_spectra() -> None:
    from cascade.metrics import HF_BAND, band_power, hf_ratio, luminance

    size = 128
    nyquist = 0.5
    inside = _grating(size, 0.6 * nyquist, 0.4)  # 0.6 of Nyquist: in the 0.3-0.9 band
    below = _grating(size, 0.1 * nyquist, 0.4)  # 0.1 of Nyquist: what a 4x input carries
    # Power scales with amplitude squared: half the amplitude, a quarter of the power.
    assert hf_ratio(_grating(size, 0.6 * nyquist, 0.2), inside) == pytest.approx(0.25, rel=1e-6)
    assert hf_ratio(inside, inside) == pytest.approx(1.0)
    # A low-frequency grating has (almost) no power in the band: the Hann window keeps the
    # leakage tiny; a constant offset is removed with the mean.
    assert hf_ratio(below + 0.3, inside) < 1e-3
    # Power in the band adds over uncorrelated frequencies.
    both = band_power(luminance(inside + below))
    assert both == pytest.approx(band_power(luminance(inside)), rel=1e-2)
    assert HF_BAND == (0.3, 0.9)


def test_hf_ratio_of_bicubic_is_small_on_a_textured_image() -> None:
    from cascade.degradations import upsample_condition
    from cascade.metrics import hf_ratio

    generator = torch.Generator().manual_seed(0)
    # White noise: power spread evenly, so the band holds a fixed share of it.
    target = (torch.rand(3, 128, 128, generator=generator) * 2 - 1) * 0.5
    low = bicubic_degrade(target[None], 4)
    assert hf_ratio(upsample_condition(low, (128, 128))[0], target) < 0.05
    assert hf_ratio(target, target) == pytest.approx(1.0)


def _flat_plus_edge(noise_sigma: float, seed: int, size: int = 128) -> torch.Tensor:
    """Grey CHW image in [-1, 1]: two flat halves (luma 90 and 170 on 0..255) meeting at a
    vertical edge, plus grey Gaussian noise of `noise_sigma` on the 0..255 scale."""
    generator = torch.Generator().manual_seed(seed)
    luma = torch.where(torch.arange(size) < size // 2, 90.0, 170.0).expand(size, size)
    noisy = luma + noise_sigma * torch.randn(size, size, generator=generator)
    return (noisy / 127.5 - 1).expand(3, size, size)


def test_flat_grain_of_known_noise_levels() -> None:
    target = _flat_plus_edge(2.0, seed=0)
    assert flat_grain(target, target) == 1.0
    # Independent noise of the same level and three times as strong: 1 and 3, up to the ~8 %
    # that choosing the mask where the target's own noise happens to be low adds to both.
    same = flat_grain(_flat_plus_edge(2.0, seed=1), target)
    triple = flat_grain(_flat_plus_edge(6.0, seed=1), target)
    assert same == pytest.approx(1.0, rel=0.1) and triple == pytest.approx(3.0, rel=0.1)
    assert triple / same == pytest.approx(3.0, rel=0.01)
    # A denoised output (the clean image, edge and all) has no grain where the photo is flat.
    assert flat_grain(_flat_plus_edge(0.0, seed=1), target) < 0.02


def test_flat_grain_looks_only_at_the_flat_areas() -> None:
    target = _flat_plus_edge(2.0, seed=0)
    mask = flat_mask(target)
    assert mask.mean() == pytest.approx(0.3, abs=0.01)
    columns = np.nonzero(mask.any(axis=0))[0]
    assert not set(range(60, 68)) & set(columns)  # the edge's neighbourhood is not flat
    # A softer edge changes the picture (and hf_ratio) but not the grain in the flat areas.
    generator = torch.Generator().manual_seed(1)
    x = torch.arange(128.0)
    soft = 130 + 40 * torch.tanh((x - 63.5) / 3) + 2.0 * torch.randn(128, 128, generator=generator)
    soft = (soft / 127.5 - 1).expand(3, 128, 128)
    assert hf_ratio(soft, target) < 0.8 * hf_ratio(_flat_plus_edge(2.0, seed=1), target)
    assert flat_grain(soft, target) == pytest.approx(1.0, rel=0.1)
