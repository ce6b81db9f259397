"""Tests for the SR3 bicubic, Real-ESRGAN-style and CDM noise-augmentation degradations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascade.degradations import (
    DEGRADATIONS,
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
