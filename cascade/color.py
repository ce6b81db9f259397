"""Colour correction of upscales: AdaIN and wavelet colour fix (StableSR, Wang et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.stages import COLOR_FIXES, ColorFix

# Guards the division for flat channels; far below any real image's std.
_STD_FLOOR = 1e-6
WAVELET_LEVELS = 5


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and population std of NCHW `x`, shaped [B,C,1,1]."""
    flat = x.flatten(2)
    mean = flat.mean(-1)[..., None, None]
    std = flat.std(-1, unbiased=False).clamp_min(_STD_FLOOR)[..., None, None]
    return mean, std


def adain_color_fix(output: Tensor, reference: Tensor) -> Tensor:
    """AdaIN colour fix (Huang & Belongie 2017, as in StableSR): output takes reference stats."""
    if output.shape[:2] != reference.shape[:2]:
        raise ValueError(f"batch/channels differ: {output.shape} vs {reference.shape}")
    mu_o, std_o = _channel_stats(output)
    mu_r, std_r = _channel_stats(reference.to(output))
    # Statistics are size-independent, so the low-res reference is used as is (no resampling).
    # No clamp: callers clamp before quantising, and clamping here would break the matched stats.
    return (output - mu_o) / std_o * std_r + mu_r


def _dilated_blur(x: Tensor, dilation: int) -> Tensor:
    """One a-trous level: 3x3 binomial kernel [1,2,1]^T[1,2,1]/16 with holes of `dilation`."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4.0
    weight = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    # Replicate padding keeps a constant image constant, so flat colour shifts stay in the low band.
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, weight, groups=c, dilation=dilation)


def wavelet_decompose(x: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """Stationary (a-trous) wavelet split into (high, low); high + low == x up to rounding."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = _dilated_blur(low, 2**i)  # dilations 1, 2, 4, 8, 16
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(output: Tensor, reference: Tensor) -> Tensor:
    """StableSR wavelet colour fix: high frequencies of output + low frequency of reference."""
    if output.shape[:2] != reference.shape[:2]:
        raise ValueError(f"batch/channels differ: {output.shape} vs {reference.shape}")
    reference = reference.to(output)
    if reference.shape[-2:] != output.shape[-2:]:
        reference = F.interpolate(
            reference, size=output.shape[-2:], mode="bicubic", align_corners=False
        ).clamp(-1.0, 1.0)
    high, _ = wavelet_decompose(output)
    _, low = wavelet_decompose(reference)
    return high + low


def apply_color_fix(output: Tensor, reference: Tensor, color_fix: ColorFix) -> Tensor:
    """Dispatch to the named colour fix ("none" returns `output` unchanged)."""
    if color_fix == "none":
        return output
    if color_fix == "adain":
        return adain_color_fix(output, reference)
    if color_fix == "wavelet":
        return wavelet_color_fix(output, reference)
    raise ValueError(f"unknown colour fix {color_fix!r}; expected one of {sorted(COLOR_FIXES)}")
