"""Training low-res inputs: SR3 bicubic, Real-ESRGAN/SR3+ second-order chain, CDM noise aug."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

Degradation = Callable[[Tensor, int, torch.Generator], Tensor]


def _check_scale(hr: Tensor, scale: int) -> tuple[int, int]:
    """Low-res size for `hr` at an integer `scale`; both sides must divide exactly."""
    if hr.dim() != 4:
        raise ValueError(f"expected NCHW, got shape {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if scale < 1 or h % scale or w % scale:
        raise ValueError(f"size {h}x{w} is not divisible by scale {scale}")
    return h // scale, w // scale


def bicubic_degrade(hr: Tensor, scale: int) -> Tensor:
    """SR3 low-res recipe: antialiased bicubic downsample by `scale`, clamped to [-1, 1]."""
    size = _check_scale(hr, scale)
    low = F.interpolate(hr, size=size, mode="bicubic", antialias=True, align_corners=False)
    # Bicubic overshoots near edges; the model only ever sees in-range images.
    return low.clamp(-1.0, 1.0)


def upsample_condition(low_res: Tensor, size: tuple[int, int]) -> Tensor:
    """SR3 conditioning image: bicubic upsample of the low-res input to `size`, clamped."""
    up = F.interpolate(low_res, size=size, mode="bicubic", align_corners=False)
    return up.clamp(-1.0, 1.0)


# Parameter ranges of the Real-ESRGAN second-order model (Wang et al. 2021, "Real-ESRGAN:
# Training Real-World Blind Super-Resolution with Pure Synthetic Data", Sec. 3 and the
# training settings of Sec. 4.1), which SR3+ (Sahak et al. 2023, "Denoising Diffusion
# Probabilistic Models for Robust Image Super-Resolution in the Wild") adopts for training.
# Simplifications: only the isotropic/anisotropic Gaussian kernels (no generalized/plateau/
# sinc kernels) and only Gaussian noise (no Poisson branch). Noise sigmas are on the 0..255
# scale; resize ranges of the second stage are relative to the final low-res size.
@dataclass(frozen=True)
class _Stage:
    blur_prob: float
    blur_sigma: tuple[float, float]
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    noise_sigma: tuple[float, float]
    gray_noise_prob: float
    jpeg_quality: tuple[int, int]


FIRST_STAGE = _Stage(1.0, (0.2, 3.0), (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), 0.4, (30, 95))
SECOND_STAGE = _Stage(0.8, (0.2, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), 0.4, (30, 95))
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
ANISOTROPIC_PROB = 0.25 / (0.45 + 0.25)  # Real-ESRGAN's iso:aniso Gaussian ratio, renormalised
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    """One U(lo, hi) draw from `gen`, so every choice is reproducible from the seed."""
    return lo + (hi - lo) * torch.rand((), generator=gen, device=gen.device).item()


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """One integer in [lo, hi] inclusive from `gen`."""
    return int(torch.randint(lo, hi + 1, (), generator=gen, device=gen.device).item())


def _choice(gen: torch.Generator, probs: tuple[float, ...]) -> int:
    """Index drawn with the given probabilities from `gen`."""
    weights = torch.tensor(probs, dtype=torch.float64, device=gen.device)
    return int(torch.multinomial(weights, 1, generator=gen).item())


def _gaussian_kernel(gen: torch.Generator, sigma_range: tuple[float, float]) -> Tensor:
    """Random isotropic or anisotropic (rotated) Gaussian blur kernel, normalised to sum 1."""
    size = KERNEL_SIZES[_randint(gen, 0, len(KERNEL_SIZES) - 1)]
    sx = _uniform(gen, *sigma_range)
    if _uniform(gen, 0.0, 1.0) < ANISOTROPIC_PROB:
        sy, theta = _uniform(gen, *sigma_range), _uniform(gen, -math.pi, math.pi)
    else:
        sy, theta = sx, 0.0
    # Covariance R diag(sx^2, sy^2) R^T; the kernel is exp(-x^T cov^-1 x / 2) on the grid.
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    cov = rot @ torch.diag(torch.tensor([sx * sx, sy * sy], dtype=torch.float64)) @ rot.T
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="xy"), dim=-1)  # [k, k, 2] as (x, y)
    quad = torch.einsum("...i,ij,...j->...", grid, torch.linalg.inv(cov), grid)
    kernel = torch.exp(-0.5 * quad)
    return (kernel / kernel.sum()).float()


def _blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise 2-D convolution of [1,C,H,W]; replicate padding works at any size."""
    c, pad = img.shape[1], kernel.shape[-1] // 2
    weight = kernel.to(img)[None, None].expand(c, 1, -1, -1)
    return F.conv2d(F.pad(img, (pad, pad, pad, pad), mode="replicate"), weight, groups=c)


def _resize(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize without antialiasing, as Real-ESRGAN does, so aliasing is part of the degradation."""
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img, size=size, mode=mode, **kwargs).clamp(0.0, 1.0)


def _jpeg(img: Tensor, quality: int) -> Tensor:
    """JPEG round trip through PIL at `quality`; [1,C,H,W] in [0,1] with C in {1, 3}."""
    c = img.shape[1]
    if c not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {c}")
    arr = (img[0].detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    pil = Image.fromarray(arr.numpy()[..., 0] if c == 1 else arr.numpy(), "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    decoded = np.array(Image.open(buf).convert("L" if c == 1 else "RGB"), dtype=np.float32)
    out = torch.from_numpy(decoded.reshape(*decoded.shape[:2], c)).permute(2, 0, 1)[None]
    return (out / 255.0).to(img)


def _stage(img: Tensor, st: _Stage, base: tuple[int, int], gen: torch.Generator) -> Tensor:
    """One blur -> resize -> noise -> JPEG pass; resize factors are relative to `base`."""
    if _uniform(gen, 0.0, 1.0) < st.blur_prob:
        img = _blur(img, _gaussian_kernel(gen, st.blur_sigma))
    direction = _choice(gen, st.resize_probs)
    if direction == 0:
        factor = _uniform(gen, 1.0, st.resize_range[1])
    elif direction == 1:
        factor = _uniform(gen, st.resize_range[0], 1.0)
    else:
        factor = 1.0
    mode = RESIZE_MODES[_randint(gen, 0, len(RESIZE_MODES) - 1)]
    # At least 2 px per side so the blur/JPEG steps never see an empty image.
    size = (max(2, int(base[0] * factor)), max(2, int(base[1] * factor)))
    img = _resize(img, size, mode)
    sigma = _uniform(gen, *st.noise_sigma) / 255.0
    gray = _uniform(gen, 0.0, 1.0) < st.gray_noise_prob
    shape = (1, 1 if gray else img.shape[1], *img.shape[-2:])
    noise = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)
    img = (img + sigma * noise.to(img)).clamp(0.0, 1.0)
    return _jpeg(img, _randint(gen, *st.jpeg_quality))


def realistic_degrade(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN / SR3+ second-order degradation (blur, resize, noise, JPEG twice) per image."""
    low_size = _check_scale(hr, scale)
    outs = []
    for img in hr.float().add(1.0).div(2.0).clamp(0.0, 1.0).split(1):
        # Stage one resizes relative to the current (HR) size, stage two to the low-res target.
        img = _stage(img, FIRST_STAGE, tuple(img.shape[-2:]), generator)
        img = _stage(img, SECOND_STAGE, low_size, generator)
        mode = RESIZE_MODES[_randint(generator, 0, len(RESIZE_MODES) - 1)]
        outs.append(_resize(img, low_size, mode))
    return (torch.cat(outs) * 2.0 - 1.0).clamp(-1.0, 1.0).to(hr.dtype)


def _bicubic_entry(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """`bicubic_degrade` under the common degradation signature; the recipe is deterministic."""
    return bicubic_degrade(hr, scale)


DEGRADATIONS: dict[str, Degradation] = {
    "bicubic": _bicubic_entry,
    "realistic": realistic_degrade,
}


def noise_augment(
    condition: Tensor, level: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """CDM conditioning augmentation (Ho et al. 2021): sqrt(1-a) * cond + sqrt(a) * eps per item."""
    if level.dim() != 1 or level.shape[0] != condition.shape[0]:
        raise ValueError(f"level must be [B]={condition.shape[0]}, got {tuple(level.shape)}")
    if bool((level < 0).any()) or bool((level > 1).any()):
        raise ValueError("noise levels must lie in [0, 1]")
    device = generator.device if generator is not None else condition.device
    eps = torch.randn(condition.shape, generator=generator, device=device, dtype=condition.dtype)
    a = level.to(condition).view(-1, *([1] * (condition.dim() - 1)))
    # Variance preserving, so a level-0 item is returned bit-for-bit (1 * x + 0 * eps).
    return (1.0 - a).sqrt() * condition + a.sqrt() * eps.to(condition.device)
