"""What real low-res photos carry, one operation each, on [1, C, H, W] images in [0, 1]: blur
kernels (Gaussian, generalised Gaussian, plateau, 2-D sinc), resizing, Gaussian and Poisson
noise, JPEG with explicit chroma subsampling, unsharp-mask sharpening; and the seeded draws
that choose their parameters. `cascade.degradations` chains them into named recipes.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

KernelShape = Literal["gaussian", "generalized", "plateau"]
Subsampling = Literal["4:4:4", "4:2:0"]

KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
# Real-ESRGAN's kernel mix (Sec. 3.1): isotropic/anisotropic Gaussian, generalised Gaussian and
# plateau kernels, with the shape exponents' ranges.
KERNEL_KINDS: tuple[tuple[KernelShape, bool], ...] = (
    ("gaussian", False),
    ("gaussian", True),
    ("generalized", False),
    ("generalized", True),
    ("plateau", False),
    ("plateau", True),
)  # (shape, anisotropic)
KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
GENERALIZED_BETA = (0.5, 4.0)
PLATEAU_BETA = (1.0, 2.0)
RESIZE_MODES = ("area", "bilinear", "bicubic")
# Shot noise: photon counts of Poisson(PHOTONS * x) at intensity x, one photon per 8-bit level at
# white (Real-ESRGAN counts the 8-bit image's levels), scaled by the draw's `scale`.
PHOTONS = 255.0
LUMA = (0.299, 0.587, 0.114)  # BT.601, for grey noise on colour images


def uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    """One U(lo, hi) draw from `gen`, so every choice is reproducible from the seed."""
    return lo + (hi - lo) * torch.rand((), generator=gen, device=gen.device).item()


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """One integer in [lo, hi] inclusive from `gen`."""
    return int(torch.randint(lo, hi + 1, (), generator=gen, device=gen.device).item())


def choice(gen: torch.Generator, probs: tuple[float, ...]) -> int:
    """Index drawn with the given probabilities from `gen`."""
    weights = torch.tensor(probs, dtype=torch.float64, device=gen.device)
    return int(torch.multinomial(weights, 1, generator=gen).item())


def _grid(size: int) -> Tensor:
    """Pixel offsets from the centre of a size x size kernel, [k, k, 2] as (x, y), float64."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.stack(torch.meshgrid(ax, ax, indexing="xy"), dim=-1)


def blur_kernel(
    size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    theta: float = 0.0,
    shape: KernelShape = "gaussian",
    beta: float = 1.0,
) -> Tensor:
    """Rotated anisotropic kernel, sum 1, over q = x^T C^-1 x with C = R diag(sx^2, sy^2) R^T:
    Gaussian exp(-q/2), generalised Gaussian exp(-q^beta/2) or plateau 1/(1 + q^beta)."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    grid = _grid(size)
    q = torch.einsum("...i,ij,...j->...", grid, torch.linalg.inv(cov), grid)
    if shape == "gaussian":
        kernel = torch.exp(-0.5 * q)
    elif shape == "generalized":
        kernel = torch.exp(-0.5 * q.pow(beta))
    elif shape == "plateau":
        kernel = 1.0 / (1.0 + q.pow(beta))
    else:
        raise ValueError(f"unknown kernel shape {shape!r}; choose gaussian, generalized, plateau")
    return (kernel / kernel.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> Tensor:
    """Circular low-pass (2-D sinc) at angular `cutoff` (pi: Nyquist): cutoff J1(cutoff r) /
    (2 pi r), normalised to sum 1; it rings, as over-sharpened and resampled photos do."""
    radius = _grid(size).norm(dim=-1)
    safe = torch.where(radius > 0, radius, torch.ones_like(radius))
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    # The limit at r = 0: J1(z) ~ z / 2.
    kernel = torch.where(radius > 0, kernel, torch.full_like(kernel, cutoff**2 / (4 * math.pi)))
    return (kernel / kernel.sum()).float()


def random_kernel(
    gen: torch.Generator, sigma_range: tuple[float, float], sinc_prob: float
) -> Tensor:
    """A blur kernel drawn as Real-ESRGAN does: a sinc with `sinc_prob`, else one of
    `KERNEL_KINDS` by `KERNEL_PROBS` with sigmas in `sigma_range`, rotated when anisotropic."""
    size = KERNEL_SIZES[randint(gen, 0, len(KERNEL_SIZES) - 1)]
    if uniform(gen, 0.0, 1.0) < sinc_prob:
        # Small kernels keep a higher cut-off, so the result rings rather than only blurs.
        low = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, uniform(gen, low, math.pi))
    shape, anisotropic = KERNEL_KINDS[choice(gen, KERNEL_PROBS)]
    sigma_x = uniform(gen, *sigma_range)
    if anisotropic:
        sigma_y, theta = uniform(gen, *sigma_range), uniform(gen, -math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    beta = 1.0
    if shape == "generalized":
        # Half heavy-tailed (beta < 1), half flat-topped (beta > 1).
        lo, hi = GENERALIZED_BETA
        beta = uniform(gen, lo, 1.0) if uniform(gen, 0.0, 1.0) < 0.5 else uniform(gen, 1.0, hi)
    elif shape == "plateau":
        beta = uniform(gen, *PLATEAU_BETA)
    return blur_kernel(size, sigma_x, sigma_y, theta, shape, beta)


def blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise 2-D convolution of [1,C,H,W]; replicate padding works at any size."""
    c, pad = img.shape[1], kernel.shape[-1] // 2
    weight = kernel.to(img)[None, None].expand(c, 1, -1, -1)
    return F.conv2d(F.pad(img, (pad, pad, pad, pad), mode="replicate"), weight, groups=c)


def resize(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize without antialiasing, as Real-ESRGAN does, so aliasing is part of the degradation."""
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img, size=size, mode=mode, **kwargs).clamp(0.0, 1.0)


def gaussian_noise(img: Tensor, sigma: float, gen: torch.Generator, gray: bool = False) -> Tensor:
    """Add N(0, sigma^2) per pixel (sigma on the [0, 1] scale); grey: one draw for all channels."""
    shape = (1, 1 if gray else img.shape[1], *img.shape[-2:])
    noise = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)
    return (img + sigma * noise.to(img)).clamp(0.0, 1.0)


def poisson_noise(img: Tensor, scale: float, gen: torch.Generator, gray: bool = False) -> Tensor:
    """Shot noise: (Poisson(PHOTONS x) / PHOTONS - x) * scale added, so its variance is
    scale^2 x / PHOTONS, proportional to the intensity x (the luma's, for all channels, if grey)."""
    base = img
    if gray and img.shape[1] == 3:
        base = sum(w * img[:, i : i + 1] for i, w in enumerate(LUMA))
    rate = (base.float().cpu().clamp(0.0, 1.0) * PHOTONS).to(gen.device)
    counts = torch.poisson(rate, generator=gen)
    noise = (counts / PHOTONS - rate / PHOTONS).to(img) * scale
    return (img + noise).clamp(0.0, 1.0)


def jpeg(img: Tensor, quality: int, subsampling: Subsampling = "4:2:0") -> Tensor:
    """JPEG round trip through PIL at `quality`; [1,C,H,W] in [0,1] with C in {1, 3}. Colour is
    stored as phones and the web store it unless told otherwise: chroma at half resolution."""
    c = img.shape[1]
    if c not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {c}")
    arr = (img[0].detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    pil = Image.fromarray(arr.numpy()[..., 0] if c == 1 else arr.numpy(), "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    buf.seek(0)
    decoded = np.array(Image.open(buf).convert("L" if c == 1 else "RGB"), dtype=np.float32)
    out = torch.from_numpy(decoded.reshape(*decoded.shape[:2], c)).permute(2, 0, 1)[None]
    return (out / 255.0).to(img)


def unsharp_mask(img: Tensor, sigma: float, amount: float) -> Tensor:
    """Unsharp masking, x + amount (x - G_sigma x), clamped: what phone pipelines and web resizers
    apply; it overshoots on both sides of an edge (halos)."""
    size = 2 * math.ceil(3 * sigma) + 1
    return (img + amount * (img - blur(img, blur_kernel(size, sigma)))).clamp(0.0, 1.0)
