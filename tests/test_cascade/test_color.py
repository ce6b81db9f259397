"""Tests for the AdaIN and wavelet colour fixes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascade.color import (
    COLOR_FIXES,
    adain_color_fix,
    apply_color_fix,
    wavelet_color_fix,
    wavelet_decompose,
)


def _smooth(seed: int, size: int = 64, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, 8, 8, generator=g) * 1.6 - 0.8
    return F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)


def _checker(size: int = 64, period: int = 2) -> torch.Tensor:
    idx = torch.arange(size)
    return ((idx[:, None] // period + idx[None, :] // period) % 2).float() * 2 - 1


def test_adain_matches_reference_stats() -> None:
    output = _smooth(1) * 0.5 + 0.2
    reference = _smooth(2, size=16) * 0.3 - 0.1  # low-res reference, different size
    fixed = adain_color_fix(output, reference)
    assert fixed.shape == output.shape
    torch.testing.assert_close(
        fixed.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        fixed.std(dim=(2, 3), unbiased=False),
        reference.std(dim=(2, 3), unbiased=False),
        atol=1e-4,
        rtol=0,
    )


def test_adain_keeps_structure() -> None:
    # An affine per-channel change of the output is undone completely.
    output = _smooth(3)
    shifted = output * 0.5 + 0.3
    torch.testing.assert_close(adain_color_fix(shifted, output), output, atol=1e-5, rtol=0)


def test_wavelet_decompose_is_exact() -> None:
    x = _smooth(4) + 0.1 * _checker()
    high, low = wavelet_decompose(x)
    torch.testing.assert_close(high + low, x, atol=1e-6, rtol=0)
    # A constant image is pure low frequency.
    high_c, low_c = wavelet_decompose(torch.full((1, 3, 32, 32), 0.4))
    assert high_c.abs().max() < 1e-6
    torch.testing.assert_close(low_c, torch.full((1, 3, 32, 32), 0.4))


def test_wavelet_identity_when_output_is_upsampled_reference() -> None:
    reference = _smooth(5, size=16)
    up = F.interpolate(reference, size=(64, 64), mode="bicubic", align_corners=False)
    up = up.clamp(-1, 1)
    torch.testing.assert_close(wavelet_color_fix(up, reference), up, atol=1e-5, rtol=0)


def test_wavelet_low_frequency_follows_reference() -> None:
    reference = _smooth(6, size=16)
    up = F.interpolate(reference, size=(64, 64), mode="bicubic", align_corners=False)
    up = up.clamp(-1, 1)
    # A colour-shifted output is pulled back exactly: a constant shift is all low frequency.
    shift = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close(wavelet_color_fix(up + shift, reference), up, atol=1e-5, rtol=0)
    # The same scene with a smooth colour cast and extra fine detail: the low band (and so
    # the mean colour) follows the reference while the detail of the output survives.
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64)
    cast = shift * (1 + 0.2 * ramp)
    detail = 0.2 * _checker()
    fixed = wavelet_color_fix(up + cast + detail, reference)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), up.mean(dim=(2, 3)), atol=0.01, rtol=0)
    _, low_fixed = wavelet_decompose(fixed)
    _, low_ref = wavelet_decompose(up)
    assert (low_fixed - low_ref).abs().max() < 0.02
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    kept = (fixed - up)[inner]
    assert (kept - detail[4:-4, 4:-4]).abs().mean() < 0.1 * detail.abs().mean()


@pytest.mark.parametrize("name", [name for name in COLOR_FIXES if name != "none"])
def test_every_color_fix_brings_a_colour_cast_back_to_the_reference(name: str) -> None:
    reference = _smooth(9, size=16)
    cast = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    output = F.interpolate(reference, size=(64, 64), mode="bicubic", align_corners=False) + cast
    fixed = apply_color_fix(output, reference, name)  # type: ignore[arg-type]
    assert fixed.shape == output.shape
    before = (output.mean((2, 3)) - reference.mean((2, 3))).abs().max()
    after = (fixed.mean((2, 3)) - reference.mean((2, 3))).abs().max()
    assert before > 0.25 and after < 0.1 * before, (before, after)


def test_color_fix_dispatch() -> None:
    output, reference = _smooth(8), _smooth(9, size=16)
    assert apply_color_fix(output, reference, "none") is output
    torch.testing.assert_close(
        apply_color_fix(output, reference, "adain"), adain_color_fix(output, reference)
    )
    torch.testing.assert_close(
        apply_color_fix(output, reference, "wavelet"), wavelet_color_fix(output, reference)
    )
    with pytest.raises(ValueError):
        apply_color_fix(output, reference, "histogram")  # type: ignore[arg-type]
