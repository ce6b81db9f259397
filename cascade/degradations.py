"""Low-res inputs: SR3's bicubic downsample, the Real-ESRGAN/SR3+ second-order chain, what a
photo from a phone or the web carries, the fine-tuning mixture of the three, the evaluation's
fixed cases (`DEGRADATIONS`), and CDM noise augmentation.

Every degradation maps HR images (NCHW in [-1, 1]) to low-res ones at an integer scale, drawing
every random choice from the generator it is given, so a seed reproduces it exactly. The image
operations they are built from (blur kernels, noise, JPEG, sharpening) are `cascade.corruptions`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.corruptions import (
    RESIZE_MODES,
    blur,
    choice,
    gaussian_noise,
    jpeg,
    poisson_noise,
    randint,
    random_kernel,
    resize,
    sinc_kernel,
    uniform,
    unsharp_mask,
)

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


def _per_image(hr: Tensor, step: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply `step` to each image of a batch on the [0, 1] scale; back to [-1, 1] and the dtype."""
    outs = [step(img) for img in hr.float().add(1.0).div(2.0).clamp(0.0, 1.0).split(1)]
    return (torch.cat(outs) * 2.0 - 1.0).clamp(-1.0, 1.0).to(hr.dtype)


def _quantize(img: Tensor) -> Tensor:
    """Round to 8-bit levels: a real low-res photo is an 8-bit file."""
    return (img * 255.0).round().div(255.0).clamp(0.0, 1.0)


# Parameter ranges of the Real-ESRGAN second-order model (Wang et al. 2021, "Real-ESRGAN:
# Training Real-World Blind Super-Resolution with Pure Synthetic Data", Sec. 3 and the training
# settings of Sec. 4.1), which SR3+ (Sahak et al. 2023, "Denoising Diffusion Probabilistic Models
# for Robust Image Super-Resolution in the Wild") adopts for training. Noise sigmas are on the
# 0..255 scale; the second stage's resize range is relative to the final low-res size.
# Left out: the USM-sharpened training target (the service's fidelity is to the photo itself).
@dataclass(frozen=True)
class ChainStage:
    """One blur -> resize -> noise -> JPEG pass of the second-order model, as ranges."""

    blur_prob: float
    blur_sigma: tuple[float, float]
    sinc_prob: float  # of the blur kernels, the share that is a 2-D sinc (ringing)
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_prob: float  # of the noise, the share that is Gaussian; the rest is Poisson
    noise_sigma: tuple[float, float]
    poisson_scale: tuple[float, float]
    gray_noise_prob: float
    jpeg_quality: tuple[int, int]


FIRST_STAGE = ChainStage(
    1.0, (0.2, 3.0), 0.1, (0.2, 0.7, 0.1), (0.15, 1.5), 0.5, (1.0, 30.0), (0.05, 3.0), 0.4, (30, 95)
)
SECOND_STAGE = ChainStage(
    0.8, (0.2, 1.5), 0.1, (0.3, 0.4, 0.3), (0.3, 1.2), 0.5, (1.0, 25.0), (0.05, 2.5), 0.4, (30, 95)
)
FINAL_SINC_PROB = 0.8  # the last resize's sinc filter (ringing and overshoot artifacts)


def _random_noise(
    img: Tensor,
    gen: torch.Generator,
    gaussian_prob: float,
    sigma: tuple[float, float],
    poisson_scale: tuple[float, float],
    gray_prob: float,
) -> Tensor:
    """Gaussian (sigma on 0..255) or Poisson noise, grey (shared by the channels) or colour."""
    gaussian = uniform(gen, 0.0, 1.0) < gaussian_prob
    gray = uniform(gen, 0.0, 1.0) < gray_prob
    if gaussian:
        return gaussian_noise(img, uniform(gen, *sigma) / 255.0, gen, gray=gray)
    return poisson_noise(img, uniform(gen, *poisson_scale), gen, gray=gray)


def _blur_resize_noise(
    img: Tensor, stage: ChainStage, base: tuple[int, int], gen: torch.Generator
) -> Tensor:
    """One pass's blur, resize (factor relative to `base`) and noise."""
    if uniform(gen, 0.0, 1.0) < stage.blur_prob:
        img = blur(img, random_kernel(gen, stage.blur_sigma, stage.sinc_prob))
    direction = choice(gen, stage.resize_probs)
    if direction == 0:
        factor = uniform(gen, 1.0, stage.resize_range[1])
    elif direction == 1:
        factor = uniform(gen, stage.resize_range[0], 1.0)
    else:
        factor = 1.0
    mode = RESIZE_MODES[randint(gen, 0, len(RESIZE_MODES) - 1)]
    # At least 2 px per side so the blur/JPEG steps never see an empty image.
    img = resize(img, (max(2, int(base[0] * factor)), max(2, int(base[1] * factor))), mode)
    return _random_noise(
        img,
        gen,
        stage.gaussian_prob,
        stage.noise_sigma,
        stage.poisson_scale,
        stage.gray_noise_prob,
    )


def _final_resize(img: Tensor, size: tuple[int, int], gen: torch.Generator) -> Tensor:
    """Resize to the low-res size, then (usually) a sinc filter, as Real-ESRGAN ends."""
    img = resize(img, size, RESIZE_MODES[randint(gen, 0, len(RESIZE_MODES) - 1)])
    if uniform(gen, 0.0, 1.0) < FINAL_SINC_PROB:
        # Real-ESRGAN's final cut-off lies in [pi/3, pi] whatever the kernel size.
        size_index = randint(gen, 0, 7)
        img = blur(img, sinc_kernel(7 + 2 * size_index, uniform(gen, torch.pi / 3, torch.pi)))
    return img.clamp(0.0, 1.0)


def realistic_degrade(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN / SR3+ second-order degradation per image: blur (Gaussian, generalised,
    plateau or sinc kernels), resize, Gaussian or Poisson noise, JPEG, twice; then the final
    resize with a sinc filter before or after the last JPEG (each with probability 1/2)."""
    low_size = _check_scale(hr, scale)

    def chain(img: Tensor) -> Tensor:
        # Stage one resizes relative to the current (HR) size, stage two to the low-res target.
        img = _blur_resize_noise(img, FIRST_STAGE, tuple(img.shape[-2:]), generator)
        img = jpeg(img, randint(generator, *FIRST_STAGE.jpeg_quality))
        img = _blur_resize_noise(img, SECOND_STAGE, low_size, generator)
        quality = randint(generator, *SECOND_STAGE.jpeg_quality)
        if uniform(generator, 0.0, 1.0) < 0.5:
            img = jpeg(_final_resize(img, low_size, generator), quality)
        else:
            img = _final_resize(jpeg(img, quality), low_size, generator)
        return _quantize(img)

    return _per_image(hr, chain)


# A photo from a phone or the web: a clean downsample (the camera's or the site's resize), then
# what the device adds, in its order: sensor noise, ISP sharpening (halos), JPEG at 4:2:0. Mild
# beside the second-order chain, and it is the commonest upload. Noise on 0..255 (Gaussian) and
# as Poisson scale (1 gives sigma ~11/255 at mid-grey); sharpening in low-res pixels.
WEB_NOISE_PROB = 0.4
WEB_NOISE_SIGMA = (1.0, 15.0)
WEB_POISSON_SCALE = (0.05, 1.0)
WEB_SHARPEN_PROB = 0.3
WEB_SHARPEN_SIGMA = (0.5, 1.5)
WEB_SHARPEN_AMOUNT = (0.3, 1.0)
WEB_JPEG_PROB = 0.8
WEB_JPEG_QUALITY = (30, 95)


def web_degrade(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """SR3's bicubic downsample, then per image: noise (p 0.4; Gaussian or Poisson), an unsharp
    mask (p 0.3), JPEG with 4:2:0 chroma (p 0.8, quality 30-95)."""
    low = bicubic_degrade(hr.float(), scale)

    def device(img: Tensor) -> Tensor:
        if uniform(generator, 0.0, 1.0) < WEB_NOISE_PROB:
            img = _random_noise(img, generator, 0.5, WEB_NOISE_SIGMA, WEB_POISSON_SCALE, 0.4)
        if uniform(generator, 0.0, 1.0) < WEB_SHARPEN_PROB:
            sigma = uniform(generator, *WEB_SHARPEN_SIGMA)
            img = unsharp_mask(img, sigma, uniform(generator, *WEB_SHARPEN_AMOUNT))
        if uniform(generator, 0.0, 1.0) < WEB_JPEG_PROB:
            img = jpeg(img, randint(generator, *WEB_JPEG_QUALITY))
        return _quantize(img)

    return _per_image(low, device)


# The fine-tuning mixture (per image). Web/phone inputs are the commonest uploads and where the
# bicubic-only model loses most (a JPEG q50 input turns fidelity 1's lead over bicubic to
# nothing), so they are the largest share. The second-order chain adds heavy blur, aliasing and
# double JPEG (robustness, as SR3+), but it costs clean inputs most: fine-tuning the demo sr256
# on 0.25 / 0.45 / 0.30 (bicubic / web / realistic) for 2,200 steps took fidelity 1 on clean
# held-out photos from +0.83 to -0.88 dB against bicubic, 0.4 / 0.5 / 0.1 for 1,100 steps to
# 0.00 dB (weights/demo/sr256.md), so the chain keeps a tenth and clean bicubic 40 %.
MIXTURE: dict[str, float] = {"bicubic": 0.4, "web": 0.5, "realistic": 0.1}


def mixed_degrade(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """Per image, one of `MIXTURE`'s degradations drawn with its probability."""
    _check_scale(hr, scale)
    names, weights = tuple(MIXTURE), tuple(MIXTURE.values())
    outs = [
        DEGRADATIONS[names[choice(generator, weights)]](img, scale, generator)
        for img in hr.split(1)
    ]
    return torch.cat(outs)


def jpeg_degrade(hr: Tensor, scale: int, generator: torch.Generator, *, quality: int) -> Tensor:
    """SR3's bicubic downsample saved as JPEG at `quality` (4:2:0 chroma); deterministic."""
    return _per_image(bicubic_degrade(hr.float(), scale), lambda img: jpeg(img, quality))


def noise_degrade(hr: Tensor, scale: int, generator: torch.Generator, *, sigma: float) -> Tensor:
    """SR3's bicubic downsample plus Gaussian colour noise of `sigma` on the 0..255 scale."""
    low = bicubic_degrade(hr.float(), scale)
    return _per_image(low, lambda img: gaussian_noise(img, sigma / 255.0, generator))


def _bicubic_entry(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    """`bicubic_degrade` under the common degradation signature; the recipe is deterministic."""
    return bicubic_degrade(hr, scale)


# Every named degradation: `cascade train --degradation` and `cascade eval --degradation` choose
# from these keys. The fixed cases (jpeg75, jpeg50, noise5) are the evaluation's JPEG and noise
# inputs; realistic, web and mixed are random, reproducible from the generator.
DEGRADATIONS: dict[str, Degradation] = {
    "bicubic": _bicubic_entry,
    "jpeg75": functools.partial(jpeg_degrade, quality=75),
    "jpeg50": functools.partial(jpeg_degrade, quality=50),
    "noise5": functools.partial(noise_degrade, sigma=5.0),
    "realistic": realistic_degrade,
    "web": web_degrade,
    "mixed": mixed_degrade,
}


def file_jpeg_quality(degradation: str) -> int | None:
    """The JPEG quality of the file a degradation ends in, as the service would read it from an
    upload's tables: jpeg75 -> 75, jpeg50 -> 50; None for the others (bicubic and noise inputs
    are not JPEGs, and the random recipes resize after their last JPEG or may)."""
    entry = DEGRADATIONS.get(degradation)
    if isinstance(entry, functools.partial) and entry.func is jpeg_degrade:
        return int(entry.keywords["quality"])
    return None


def noise_augment(
    condition: Tensor,
    level: Tensor,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    """CDM conditioning augmentation (Ho et al. 2021): sqrt(1-a) * cond + sqrt(a) * eps per item
    (`eps` drawn from `generator` unless given)."""
    if level.dim() != 1 or level.shape[0] != condition.shape[0]:
        raise ValueError(f"level must be [B]={condition.shape[0]}, got {tuple(level.shape)}")
    if bool((level < 0).any()) or bool((level > 1).any()):
        raise ValueError("noise levels must lie in [0, 1]")
    if eps is None:
        device = generator.device if generator is not None else condition.device
        eps = torch.randn(
            condition.shape, generator=generator, device=device, dtype=condition.dtype
        )
    a = level.to(condition).view(-1, *([1] * (condition.dim() - 1)))
    # Variance preserving, so a level-0 item is returned bit-for-bit (1 * x + 0 * eps).
    return (1.0 - a).sqrt() * condition + a.sqrt() * eps.to(condition.device)
