"""Training losses: SR3's continuous-noise-level L1/L2 and ADM's DDPM MSE, for every
parameterisation a model spec names (eps, v or x0 of the image or of the residual)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade.schedule import Schedule

LossName = Literal["l1", "l2"]
Target = Literal["eps", "v", "x0"]


def target(prediction: Target, x0: Tensor, noise: Tensor, sqrt_gamma: Tensor) -> Tensor:
    """What the network learns to output: eps, x0, or v = sqrt(g) eps - sqrt(1-g) x0."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a = sqrt_gamma.view(-1, 1, 1, 1).to(x0.dtype)
    return a * noise - (1 - a**2).sqrt() * x0


def sr3_loss(
    network: nn.Module,
    hr: Tensor,
    condition: Tensor,
    sqrt_gamma: Tensor,
    noise: Tensor,
    reduction: Literal["mean", "sum"] = "mean",
    loss: LossName = "l1",
    aug_level: Tensor | None = None,
    prediction: Target = "eps",
    residual_scale: float | None = None,
) -> Tensor:
    """SR3 `p_losses`: |target - UNet(cat([cond, y]), sqrt(g))|_p, y = sqrt(g) x0 + sqrt(1-g) eps,
    x0 the image, or the residual k (hr - cond) over the upsampled condition when
    `residual_scale` k is given."""
    level = sqrt_gamma.reshape(-1, 1)
    x0 = hr if residual_scale is None else residual_scale * (hr - condition)
    x_noisy = level.view(-1, 1, 1, 1) * x0 + (1 - level**2).sqrt().view(-1, 1, 1, 1) * noise
    extra = {}
    if network.config.condition_augmentation:
        extra["aug_level"] = aug_level
    elif aug_level is not None and bool((aug_level != 0).any()):
        raise ValueError("aug_level given for a network trained without conditioning augmentation")
    out = network(torch.cat([condition, x_noisy], dim=1), level, **extra).float()
    goal = target(prediction, x0, noise, level)
    error = (out - goal).abs() if loss == "l1" else (out - goal).square()
    if reduction == "sum":
        return error.sum()
    if reduction == "mean":
        return error.mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def continuous_noise_level(schedule: Schedule, t: Tensor, generator: torch.Generator) -> Tensor:
    """WaveGrad/SR3 noise level: sqrt(gamma) ~ U(s[t-1], s[t]) per item, s the SR3 table."""
    levels = schedule.sqrt_alphas_cumprod_prev.to(t.device)  # float64 [T+1], s[0] = 1
    if bool((t < 1).any()) or bool((t >= len(levels)).any()):
        raise ValueError(f"t must lie in 1..{len(levels) - 1}")
    # SR3 draws one t per batch; one per item covers more levels per step at the same cost.
    u = torch.rand(t.shape, generator=generator, device=t.device, dtype=torch.float64)
    high, low = levels[t - 1], levels[t]
    return (high + (low - high) * u).to(torch.float32).view(-1, 1)


def adm_loss(
    network: nn.Module,
    x0: Tensor,
    class_ids: Tensor | None,
    t: Tensor,
    noise: Tensor,
    schedule: Schedule,
    prediction: Target = "eps",
) -> Tensor:
    """DDPM simple loss (Ho et al. 2020): MSE between the target (eps, v or x0) and the
    network's prediction from x_t at t."""
    alpha_bar = schedule.alphas_cumprod.to(x0.device)[t]
    sqrt_alpha_bar = alpha_bar.sqrt().float()
    x_t = (
        sqrt_alpha_bar.view(-1, 1, 1, 1) * x0
        + (1 - alpha_bar).sqrt().float().view(-1, 1, 1, 1) * noise
    )
    out = network(x_t, t, y=class_ids)
    # A learned-range model's variance channels get no gradient here (no hybrid VLB term).
    return F.mse_loss(out[:, : x0.shape[1]].float(), target(prediction, x0, noise, sqrt_alpha_bar))
