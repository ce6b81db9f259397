"""Frequency bands of images: a smooth radial high-pass, and the band split upscales use to keep
what the input already shows from the model's faithful estimate.

An upscale by s cannot learn anything about frequencies its input carries (below 1/s of the
output's Nyquist frequency) from sampling: there the model's clean estimate (fidelity 1, the
MMSE output of an L2-trained model) is already the best guess, and a sample's departures from it
are only error. Above it, a sample's detail is what the input cannot carry. `keep_low_band`
takes each from where it is best; it changes no frequency above the band edge.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The raised-cosine transition spans cutoff * (1 -+ TRANSITION): 0.2-0.3 of Nyquist for a 4x
# upscale, which keeps the whole hf_ratio band (0.3-0.9) of the sample.
TRANSITION = 0.2


def _radial_gain(height: int, width: int, cutoff: float, device: torch.device) -> Tensor:
    """Gain over an rfft2 grid of `height` x `width`: 0 below cutoff(1 - TRANSITION) of Nyquist
    (radially), 1 above cutoff(1 + TRANSITION), a raised cosine between."""
    fy = torch.fft.fftfreq(height, device=device)[:, None] * 2.0  # in units of Nyquist
    fx = torch.fft.rfftfreq(width, device=device)[None, :] * 2.0
    radius = (fy.square() + fx.square()).sqrt()
    low, high = cutoff * (1.0 - TRANSITION), cutoff * (1.0 + TRANSITION)
    t = ((radius - low) / (high - low)).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def high_pass(x: Tensor, cutoff: float) -> Tensor:
    """`x` (..., H, W) without its frequencies below `cutoff` (a fraction of Nyquist, radial),
    through a raised-cosine edge. Each image is mirrored to twice its size first (even symmetric
    extension), so its borders do not wrap round into each other. Computed in float32."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must lie in (0, 1] of Nyquist, got {cutoff}")
    height, width = x.shape[-2:]
    source = x.float()
    mirrored = torch.cat([source, source.flip(-1)], -1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], -2)
    gain = _radial_gain(2 * height, 2 * width, cutoff, x.device)
    spectrum = torch.fft.rfft2(mirrored) * gain
    filtered = torch.fft.irfft2(spectrum, s=mirrored.shape[-2:])
    return filtered[..., :height, :width].to(x.dtype)


def keep_low_band(estimate: Tensor, sample: Tensor, scale: int) -> Tensor:
    """`sample` with its frequencies below its input's Nyquist (1/scale of its own) taken from
    `estimate`: estimate + high_pass(sample - estimate)."""
    if estimate.shape != sample.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and sample {tuple(sample.shape)}")
    if scale < 2:
        raise ValueError(f"an upscale's scale is at least 2, got {scale}")
    return estimate + high_pass(sample - estimate, 1.0 / scale)
