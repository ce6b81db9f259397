"""Evaluation metrics: PSNR/SSIM (RGB and BT.601 Y) via scikit-image, SR3 consistency, the
high-frequency ratio (how much of the detail an input cannot carry an output restores) and flat
grain (how grainy an output is where the photo is flat), and the border gradient ratio (whether
tile borders show as seams)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from cascade.degradations import bicubic_degrade

# Wang et al. 2004 SSIM setting (11x11 Gaussian window, sigma 1.5, population covariance),
# the one SR3 evaluates with; skimage's defaults differ (7x7 uniform, sample covariance).
SSIM_KWARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _chw(x: Tensor) -> Tensor:
    """Single image as CHW; accepts CHW or a batch of one."""
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"expected one CHW image, got shape {tuple(x.shape)}")
    return x


def to_uint8(x: Tensor) -> np.ndarray:
    """SR3 `tensor2img` quantisation: clamp [-1,1], map to [0,255], round, HWC uint8."""
    img = _chw(x).detach().cpu().double().clamp(-1.0, 1.0)
    img = ((img + 1.0) / 2.0 * 255.0).round()
    return img.permute(1, 2, 0).numpy().astype(np.uint8)


def _y_channel(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in 16..235 (MATLAB rgb2ycbcr), float64, not re-quantised."""
    if img.shape[-1] != 3:
        raise ValueError(f"Y metrics need RGB, got {img.shape[-1]} channels")
    # skimage maps uint8 to [0,1] first, giving Y = 16 + 65.481 R + 128.553 G + 24.966 B.
    return rgb2ycbcr(img)[..., 0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """skimage PSNR with data_range 255; identical images give inf (skimage would warn on 0/0)."""
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def psnr(output: Tensor, target: Tensor) -> float:
    """PSNR in dB on uint8-quantised RGB (SR3 evaluation); inf for identical images."""
    return _psnr(to_uint8(target), to_uint8(output))


def ssim(output: Tensor, target: Tensor) -> float:
    """SSIM (Wang et al. 2004, Gaussian window) on uint8-quantised RGB, averaged over channels."""
    return float(
        structural_similarity(
            to_uint8(target), to_uint8(output), channel_axis=-1, data_range=255, **SSIM_KWARGS
        )
    )


def psnr_y(output: Tensor, target: Tensor) -> float:
    """PSNR in dB on the BT.601 Y channel of the uint8-quantised images."""
    return _psnr(_y_channel(to_uint8(target)), _y_channel(to_uint8(output)))


def ssim_y(output: Tensor, target: Tensor) -> float:
    """SSIM (Wang et al. 2004, Gaussian window) on the BT.601 Y channel."""
    y_t, y_o = _y_channel(to_uint8(target)), _y_channel(to_uint8(output))
    return float(structural_similarity(y_t, y_o, data_range=255, **SSIM_KWARGS))


def consistency(output: Tensor, low_res: Tensor) -> float:
    """SR3 consistency: MSE in [0,1] scale between bicubic-downsampled output and low-res input."""
    out, low = _chw(output).detach().float().cpu(), _chw(low_res).detach().float().cpu()
    (h, w), (lh, lw) = out.shape[-2:], low.shape[-2:]
    if h % lh or w % lw or h // lh != w // lw:
        raise ValueError(f"output {h}x{w} is not an integer upscale of {lh}x{lw}")
    # Float output (not quantised), so a bicubic-consistent output scores exactly ~0.
    down = bicubic_degrade(out.clamp(-1.0, 1.0)[None], h // lh)[0]
    diff = (down - low.clamp(-1.0, 1.0)) / 2.0  # difference in [0,1] units
    return float(diff.double().pow(2).mean())


# The band a 4x-reduced input cannot carry: radial frequency 0.3-0.9 of the output's Nyquist
# (its own Nyquist is 0.25 of it; antialiasing leaves little above ~0.2).
HF_BAND = (0.3, 0.9)


def band_power(image: np.ndarray, band: tuple[float, float] = HF_BAND) -> float:
    """Power of a 2-D signal in a radial frequency band (fractions of Nyquist): mean removed,
    Hann window (no edge leakage), then the squared magnitude of its FFT summed over the band."""
    height, width = image.shape
    signal = image - image.mean()
    signal = signal * np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.fft2(signal)) ** 2
    fy = np.fft.fftfreq(height)[:, None] / 0.5  # cycles per pixel / Nyquist
    fx = np.fft.fftfreq(width)[None, :] / 0.5
    radius = np.sqrt(fy**2 + fx**2)
    return float(power[(radius >= band[0]) & (radius <= band[1])].sum())


def luminance(x: Tensor) -> np.ndarray:
    """BT.601 luma of a CHW image in [-1, 1], float64, in [0, 1] (not quantised)."""
    rgb = (_chw(x).detach().cpu().double().clamp(-1.0, 1.0) + 1.0) / 2.0
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).numpy()


def hf_ratio(output: Tensor, target: Tensor) -> float:
    """Detail restored: the output's luminance power in `HF_BAND` over the ground truth's.
    Bicubic scores ~0.03 on photos; 1 is the truth's own amount (noise can exceed it, but then
    PSNR pays: the two are reported together)."""
    reference = band_power(luminance(target))
    return band_power(luminance(output)) / reference if reference > 0 else float("nan")


# Grain: the luma high-pass Y - Gaussian(Y, sigma 2) (Y on 0..255), where the ground truth is
# flattest: the 30 % of its pixels with the lowest 9x9 local RMS of that high-pass. Flat areas
# are where grain shows, and where a restorer either smears it away (plastic skies and skin) or
# invents too much; elsewhere the high-pass is the picture's own edges and texture.
GRAIN_SIGMA = 2.0
GRAIN_WINDOW = 9
FLAT_FRACTION = 0.3


def luma_high_pass(x: Tensor) -> np.ndarray:
    """Y - Gaussian(Y, GRAIN_SIGMA) of a CHW image, Y = BT.601 luma on 0..255 (reflected edges)."""
    y = 255.0 * luminance(x)
    return y - gaussian_filter(y, GRAIN_SIGMA, mode="reflect")


def flat_mask(target: Tensor) -> np.ndarray:
    """The ground truth's flattest `FLAT_FRACTION` of pixels: the lowest local RMS (over a
    `GRAIN_WINDOW` square) of its luma high-pass."""
    # Ranked by the local mean square, the same order as the RMS (and no square root of the
    # filter's tiny negative round-off).
    local = uniform_filter(luma_high_pass(target) ** 2, GRAIN_WINDOW, mode="reflect")
    return local <= np.quantile(local, FLAT_FRACTION)


def flat_grain(output: Tensor, target: Tensor) -> float:
    """The output's luma high-pass RMS inside the ground truth's flat mask over the ground
    truth's own there: 1 is as grainy as the real photo, 0 smooth, above 1 noisier."""
    mask = flat_mask(target)
    reference = float(np.sqrt(np.mean(luma_high_pass(target)[mask] ** 2)))
    grain = float(np.sqrt(np.mean(luma_high_pass(output)[mask] ** 2)))
    return grain / reference if reference > 0 else float("nan")


def border_gradient_ratio(
    x: Tensor, rows: Sequence[int], cols: Sequence[int], near: int | None = 8
) -> float:
    """Seams: the mean |gradient| across the given border lines (row r: between pixel rows r-1
    and r; column c likewise) over the mean |gradient| across the other lines within `near`
    pixels of a border (None: every other line), on one CHW image in float. 1: the borders
    are no different from their surroundings; a seam raises it. Comparing with nearby lines
    keeps a photo's own structure (an edge that happens to fall near a border line) from
    dominating when there are few borders."""
    image = _chw(x).detach().cpu().double().numpy()
    across_rows = np.abs(np.diff(image, axis=1))  # [C, H-1, W]: line i lies between rows i, i+1
    across_cols = np.abs(np.diff(image, axis=2))  # [C, H, W-1]
    border, rest = [], []
    for gradients, lines, axis in ((across_rows, rows, 1), (across_cols, cols, 2)):
        count = gradients.shape[axis]
        on = np.zeros(count, dtype=bool)
        on[[line - 1 for line in lines if 0 < line <= count]] = True
        around = np.ones(count, dtype=bool) if near is None else np.zeros(count, dtype=bool)
        if near is not None:
            for index in np.flatnonzero(on):
                around[max(0, index - near) : index + near + 1] = True
        border.append(np.take(gradients, np.flatnonzero(on), axis=axis).ravel())
        rest.append(np.take(gradients, np.flatnonzero(around & ~on), axis=axis).ravel())
    borders = np.concatenate(border)
    if borders.size == 0:
        raise ValueError("no border line lies inside the image")
    return float(borders.mean() / np.concatenate(rest).mean())


def image_metrics(output: Tensor, target: Tensor, low_res: Tensor) -> dict[str, float]:
    """All evaluation metrics for one CHW image: psnr, ssim, psnr_y, ssim_y, consistency,
    hf_ratio, flat_grain."""
    return {
        "hf_ratio": hf_ratio(output, target),
        "flat_grain": flat_grain(output, target),
        "psnr": psnr(output, target),
        "ssim": ssim(output, target),
        "psnr_y": psnr_y(output, target),
        "ssim_y": ssim_y(output, target),
        "consistency": consistency(output, low_res),
    }
