"""The degradations (SR3 bicubic, the second-order chain, web, the mixture, the fixed cases),
the corruptions they are built of, and CDM noise augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cascade import corruptions
from cascade.degradations import (
    DEGRADATIONS,
    MIXTURE,
    bicubic_degrade,
    noise_augment,
    realistic_degrade,
    upsample_condition,
)


def _hr(batch: int = 2, seed: int = 1, base: int = 16) -> torch.Tensor:
    """Smooth-ish 64x64 RGB test images in [-1, 1]; detail on a `base`-cell grid."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(batch, 3, base, base, generator=g) * 2 - 1
    return F.interpolate(cells, size=(64, 64), mode="bilinear", align_corners=False)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bicubic_degrade_shape_range_and_constant() -> None:
    low = bicubic_degrade(_hr(), 4)
    assert low.shape == (2, 3, 16, 16)
    assert low.min() >= -1 and low.max() <= 1
    # A constant image stays constant: the antialiased kernel is normalised.
    flat = torch.full((1, 3, 64, 64), 0.25)
    torch.testing.assert_close(bicubic_degrade(flat, 4), torch.full((1, 3, 16, 16), 0.25))


def test_bicubic_degrade_clamps_overshoot() -> None:
    checker = (torch.arange(64)[:, None] // 8 + torch.arange(64)[None, :] // 8) % 2
    hr = (checker.float() * 2 - 1).expand(1, 3, 64, 64)
    low = bicubic_degrade(hr, 2)
    assert low.min() >= -1 and low.max() <= 1


def test_bicubic_degrade_rejects_non_divisible() -> None:
    with pytest.raises(ValueError):
        bicubic_degrade(torch.zeros(1, 3, 30, 32), 4)


def test_upsample_condition() -> None:
    low = bicubic_degrade(_hr(), 4)
    up = upsample_condition(low, (64, 64))
    assert up.shape == (2, 3, 64, 64)
    assert up.min() >= -1 and up.max() <= 1
    # Down-then-up of a smooth image stays close to it (it is a conditioning image, not noise).
    assert (up - _hr()).abs().mean() < 0.1


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_degradations_shape_range(name: str) -> None:
    low = DEGRADATIONS[name](_hr(), 4, _gen(0))
    assert low.shape == (2, 3, 16, 16)
    assert low.dtype == torch.float32
    assert torch.isfinite(low).all()
    assert low.min() >= -1 and low.max() <= 1


def test_realistic_reproducible_and_seed_dependent() -> None:
    hr = _hr(batch=3)
    a = realistic_degrade(hr, 4, _gen(123))
    b = realistic_degrade(hr, 4, _gen(123))
    c = realistic_degrade(hr, 4, _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Per-image randomness: the images of one batch get different degradations.
    same = realistic_degrade(_hr(batch=1).expand(2, -1, -1, -1), 4, _gen(5))
    assert not torch.equal(same[0], same[1])


def test_realistic_roughly_preserves_content() -> None:
    # Heavily degraded but still the same picture at coarse scale: correlated with its own
    # bicubic low-res and closer to it than to that of an unrelated image.
    hr, other = _hr(batch=1, seed=1, base=4), _hr(batch=1, seed=2, base=4)
    own_ref, other_ref = bicubic_degrade(hr, 4), bicubic_degrade(other, 4)
    for seed in range(5):
        low = realistic_degrade(hr, 4, _gen(seed))
        assert (low - own_ref).abs().mean() < (low - other_ref).abs().mean()
        assert torch.corrcoef(torch.stack([low.flatten(), own_ref.flatten()]))[0, 1] > 0.5


def test_realistic_grayscale_and_other_scales() -> None:
    gray = _hr()[:, :1]
    assert realistic_degrade(gray, 4, _gen(0)).shape == (2, 1, 16, 16)
    assert realistic_degrade(_hr(), 2, _gen(0)).shape == (2, 3, 32, 32)
    assert realistic_degrade(_hr(), 8, _gen(0)).shape == (2, 3, 8, 8)


def test_noise_augment_level_zero_is_identity() -> None:
    cond = _hr()
    out = noise_augment(cond, torch.zeros(2), _gen(0))
    assert torch.equal(out, cond)


def test_noise_augment_formula_and_mixed_levels() -> None:
    cond = _hr()
    level = torch.tensor([0.0, 0.36])
    out = noise_augment(cond, level, _gen(3))
    eps = torch.randn(cond.shape, generator=_gen(3))
    assert torch.equal(out[0], cond[0])
    torch.testing.assert_close(out[1], 0.8 * cond[1] + 0.6 * eps[1])
    full = noise_augment(cond, torch.ones(2), _gen(3))
    torch.testing.assert_close(full, eps)


def test_noise_augment_validates_level() -> None:
    with pytest.raises(ValueError):
        noise_augment(_hr(), torch.tensor([0.5]), _gen(0))
    with pytest.raises(ValueError):
        noise_augment(_hr(), torch.tensor([0.5, 1.5]), _gen(0))


RANDOM = ("noise5", "realistic", "web", "mixed")


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_every_degradation_is_deterministic_under_a_seed(name: str) -> None:
    hr = _hr(batch=3)
    a = DEGRADATIONS[name](hr, 4, _gen(7))
    assert torch.equal(a, DEGRADATIONS[name](hr, 4, _gen(7)))
    assert not torch.equal(a, bicubic_degrade(hr, 4)) or name == "bicubic"
    if name in RANDOM:  # the seed matters; the fixed cases draw nothing
        assert not torch.equal(a, DEGRADATIONS[name](hr, 4, _gen(8)))


def _boundary_steps(image: torch.Tensor, period: int = 8) -> tuple[float, float]:
    """Mean |pixel step| (horizontal and vertical) across block boundaries and inside blocks."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs()
    across_x = (torch.arange(dx.shape[-1]) % period) == period - 1
    across_y = (torch.arange(dy.shape[-2]) % period) == period - 1
    boundary = (dx[..., across_x].mean() + dy[..., across_y, :].mean()) / 2
    inside = (dx[..., ~across_x].mean() + dy[..., ~across_y, :].mean()) / 2
    return float(boundary), float(inside)


@pytest.mark.parametrize("name", ["jpeg50", "jpeg75"])
def test_jpeg_is_blockier_at_8_pixel_boundaries(name: str) -> None:
    # The luma of the JPEG error over the clean low-res of a smooth image (64 px: 8x8 blocks):
    # each block is coded alone, so the error jumps where blocks meet, less inside them.
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    waves = (torch.sin(x / 23 + y / 31), torch.cos(x / 17 - y / 29), torch.sin((x + y) / 37))
    hr = 0.7 * torch.stack(waves)[None]
    error = DEGRADATIONS[name](hr, 4, _gen(0)) - bicubic_degrade(hr, 4)
    luma = (0.299 * error[:, 0] + 0.587 * error[:, 1] + 0.114 * error[:, 2])[:, None]
    boundary, inside = _boundary_steps(luma)
    assert boundary > 1.3 * inside, (boundary, inside)
    # Shifted by 4 px the same measure finds no grid: the blocks are where JPEG puts them.
    shifted, shifted_inside = _boundary_steps(luma[..., 4:, 4:])
    assert shifted < shifted_inside, (shifted, shifted_inside)


def _ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """JFIF YCbCr of [1, 3, H, W] in [0, 1]."""
    r, g, b = rgb[0]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.5 + (b - y) / 1.772, 0.5 + (r - y) / 1.402])


def test_jpeg_420_halves_the_chroma_resolution_and_keeps_the_luma() -> None:
    # A 1 px chroma checkerboard at constant luma, and an image of 1 px luma stripes.
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float()
    y = torch.full((32, 32), 0.5)
    cb = 0.5 + 0.2 * (checker - 0.5)
    # JFIF's inverse transform with Cr at its neutral 0.5.
    rgb = torch.stack([y, y - 0.344136 * (cb - 0.5), y + 1.772 * (cb - 0.5)])[None]
    torch.testing.assert_close(_ycbcr(rgb)[0], y, atol=1e-4, rtol=0)  # constant luma
    stripes = (torch.arange(32) % 2).float().expand(32, 32) * 0.6 + 0.2
    gray = stripes.expand(1, 3, 32, 32)

    def amplitude(plane: torch.Tensor) -> float:
        """The checkerboard's / stripes' component: mean |step| between neighbours."""
        return float((plane[:, 1:] - plane[:, :-1]).abs().mean())

    full = corruptions.jpeg(rgb, 95, "4:4:4")
    half = corruptions.jpeg(rgb, 95, "4:2:0")
    original = amplitude(_ycbcr(rgb)[1])
    assert amplitude(_ycbcr(full)[1]) > 0.7 * original
    assert amplitude(_ycbcr(half)[1]) < 0.1 * original  # a 1 px chroma pattern cannot survive
    # Luma keeps its full resolution either way.
    luma = amplitude(_ycbcr(corruptions.jpeg(gray, 95, "4:2:0"))[0])
    assert luma > 0.8 * amplitude(_ycbcr(gray)[0])


def test_noise5_adds_noise_of_the_named_sigma() -> None:
    hr = torch.zeros(2, 3, 256, 256)  # mid-grey: nothing clipped
    added = (DEGRADATIONS["noise5"](hr, 4, _gen(0)) - bicubic_degrade(hr, 4)) / 2  # [0, 1] units
    assert float(added.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(added.std()) == pytest.approx(5 / 255, rel=0.05)


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_sigma(gray: bool) -> None:
    img = torch.full((1, 3, 128, 128), 0.5)
    noise = corruptions.gaussian_noise(img, 0.04, _gen(1), gray=gray) - img
    assert float(noise.std()) == pytest.approx(0.04, rel=0.05)
    shared = torch.equal(noise[:, 0], noise[:, 1])
    assert shared == gray


def test_poisson_noise_variance_scales_with_intensity() -> None:
    variances = {}
    for intensity in (0.1, 0.4, 0.8):
        img = torch.full((1, 3, 128, 128), intensity)
        noise = corruptions.poisson_noise(img, 2.0, _gen(2)) - img
        variances[intensity] = float(noise.var())
        # Shot noise: variance scale^2 x / photons, zero mean.
        expected = 4.0 * intensity / corruptions.PHOTONS
        assert variances[intensity] == pytest.approx(expected, rel=0.1)
        assert abs(float(noise.mean())) < 0.01
    assert variances[0.8] / variances[0.1] == pytest.approx(8.0, rel=0.15)


def test_unsharp_mask_overshoots_on_both_sides_of_an_edge() -> None:
    step = torch.where(torch.arange(32) < 16, 0.3, 0.6).expand(1, 3, 32, 32).clone()
    sharp = corruptions.unsharp_mask(step, 1.0, 0.8)
    row = sharp[0, 0, 16]
    assert float(row[:16].min()) < 0.3 - 0.05  # dark halo before the edge
    assert float(row[16:].max()) > 0.6 + 0.05  # bright halo after it
    torch.testing.assert_close(row[:4], torch.full((4,), 0.3))  # flat parts untouched
    torch.testing.assert_close(row[-4:], torch.full((4,), 0.6))


def test_blur_kernels_are_normalised_and_shaped_as_named() -> None:
    gaussian = corruptions.blur_kernel(21, 2.0)
    x = torch.arange(21, dtype=torch.float64) - 10
    expected = torch.exp(-(x[None] ** 2 + x[:, None] ** 2) / 8)
    torch.testing.assert_close(gaussian.double(), expected / expected.sum(), rtol=1e-5, atol=0)
    plateau = corruptions.blur_kernel(21, 2.0, shape="plateau", beta=2.0)
    heavy = corruptions.blur_kernel(21, 2.0, shape="generalized", beta=0.5)
    for kernel in (plateau, heavy):
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
        # Both have heavier tails than the Gaussian of the same sigma.
        assert float(kernel[10, 0] / kernel[10, 10]) > float(gaussian[10, 0] / gaussian[10, 10])
    wide = corruptions.blur_kernel(21, 3.0, 1.0, theta=0.0)
    assert float(wide[10, 13]) > float(wide[13, 10])  # x spread > y spread


def test_sinc_kernel_is_a_low_pass_at_its_cutoff() -> None:
    kernel = corruptions.sinc_kernel(21, math.pi / 2)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(kernel.min()) < 0  # the ringing lobes
    response = torch.fft.fft2(kernel.double(), s=(64, 64)).abs()
    # Passes low frequencies, stops those above the cut-off (a quarter of the way to 64 = Nyquist
    # at pi/2: bin 16), and is radially symmetric.
    assert float(response[0, 4]) == pytest.approx(1.0, abs=0.1)
    assert float(response[0, 24]) < 0.1 and float(response[24, 0]) < 0.1


def test_mixed_draws_each_branch_per_image() -> None:
    hr = _hr(batch=1).expand(60, -1, -1, -1)
    low = DEGRADATIONS["mixed"](hr, 4, _gen(0))
    clean = bicubic_degrade(hr[:1], 4)[0]
    bicubic_items = sum(torch.equal(item, clean) for item in low)
    # About MIXTURE["bicubic"] of the items are SR3's clean input, the others degraded.
    assert 5 <= bicubic_items <= 25, bicubic_items
    assert sum(MIXTURE.values()) == pytest.approx(1.0)
