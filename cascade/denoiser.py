"""The denoiser contract every network family is wrapped to, and the wrappers.

A denoiser is called as `model(x, t, schedule, cond) -> Prediction` with `t` the int64 index
of each item's step in `schedule` (respaced or not). Two layers of wrappers meet it:
- the family wrapper turns that index into what its network was trained on (SR3: the continuous
  noise level sqrt(alpha_bar); ADM: the original integer timestep) and returns the network's raw
  output;
- `Parameterization` turns the raw output (eps, v or x0 of the image or of the residual over the
  upsampled condition) into eps and a thresholded x0,
so samplers never know which family or parameterisation they drive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from cascade.degradations import upsample_condition
from cascade.schedule import Schedule

Cond = Mapping[str, Tensor]
"""Conditioning by name: `class_ids` (int64 [B]), `low_res` ([B,3,h,w] in [-1,1]),
`aug_level` (float [B], the CDM noise level already applied to `low_res`), and optionally
`upsampled` (the bicubic upsample of `low_res` at x's size, made by the caller: a tile's is cut
from the upsample of a wider crop, so it equals the whole image's there)."""


@dataclass
class Prediction:
    """What a denoiser predicts for x_t: the noise, a learned log-variance if it has one, and
    the clean estimate x0 already thresholded where the wrapper knows better than a [-1, 1] clip
    (None: samplers derive x0 from eps and clip it, as both references do)."""

    eps: Tensor
    log_variance: Tensor | None = None
    x0: Tensor | None = None


class Denoiser(Protocol):
    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction: ...


def learned_range(v: Tensor, min_log: Tensor, max_log: Tensor) -> Tensor:
    """Learned-range log-variance (Nichol & Dhariwal 2021): v in [-1, 1] interpolates between
    log beta-tilde (min) and log beta (max)."""
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


class _DeviceTables:
    """Per-schedule lookup tables moved to the device once, not at every step: a host-to-device
    copy inside the loop would make the host wait for the GPU at each step."""

    def __init__(self) -> None:
        # The schedule itself is kept (not its id): an id can be reused once it is collected.
        self._schedule: Schedule | None = None
        self._key: tuple[torch.device, torch.dtype] | None = None
        self._tables: dict[str, Tensor] = {}

    def get(self, schedule: Schedule, like: Tensor, build) -> dict[str, Tensor]:
        key = (like.device, like.dtype)
        if schedule is not self._schedule or key != self._key:
            self._tables = {k: v.to(like.device) for k, v in build(schedule, like).items()}
            self._schedule, self._key = schedule, key
        return self._tables


class UpsampledCondition:
    """The bicubic-upsampled condition, made once per input rather than at every step (the
    input itself is kept as the key: an id could be reused after it is collected)."""

    def __init__(self) -> None:
        self._cached: tuple[Tensor, Tensor] | None = None

    def __call__(self, low_res: Tensor, size: tuple[int, int], cond: Cond | None = None) -> Tensor:
        given = None if cond is None else cond.get("upsampled")
        if given is not None and tuple(given.shape[-2:]) == size:
            return given
        if low_res.shape[-2:] == size:
            return low_res
        cached = self._cached
        if cached is None or cached[0] is not low_res or cached[1].shape[-2:] != size:
            self._cached = cached = (low_res, upsample_condition(low_res, size))
        return cached[1]


class SR3Denoiser:
    """SR3 family: input cat([condition, y_t]) and the noise level sqrt(alpha_bar_t); returns
    the raw network output in `eps` (`Parameterization` converts it)."""

    def __init__(self, network: nn.Module):
        self.network = network
        self._tables = _DeviceTables()
        self._condition = UpsampledCondition()

    @staticmethod
    def _build(schedule: Schedule, like: Tensor) -> dict[str, Tensor]:
        return {"noise_level": schedule.sqrt_alphas_cumprod_prev[1:].to(torch.float32)}

    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction:
        condition = self._condition(cond["low_res"], tuple(x.shape[-2:]), cond)
        noise_level = self._tables.get(schedule, x, self._build)["noise_level"][t]
        aug_level = cond.get("aug_level")
        if not self.network.config.condition_augmentation:
            aug_level = None
        eps = self.network(
            torch.cat([condition.to(x.dtype), x], dim=1),
            noise_level.view(-1, 1),
            aug_level,
        )
        return Prediction(eps=eps)


class ADMDenoiser:
    """ADM family: the original integer timestep, class labels, learned-range variance; returns
    the raw network output in `eps` (`Parameterization` converts it)."""

    def __init__(self, network: nn.Module):
        self.network = network
        self._tables = _DeviceTables()

    @staticmethod
    def _build(schedule: Schedule, like: Tensor) -> dict[str, Tensor]:
        return {
            "timesteps": schedule.timesteps,
            # Learned range (Nichol & Dhariwal 2021) interpolates log beta-tilde and log beta
            # of the (respaced) schedule; cast from float64 like the reference.
            "min_log": schedule.posterior_log_variance_clipped.to(like.dtype),
            "max_log": torch.log(schedule.betas).to(like.dtype),
        }

    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction:
        config = self.network.config
        tables = self._tables.get(schedule, x, self._build)
        kwargs: dict[str, Tensor] = {}
        if config.num_classes is not None:
            kwargs["y"] = cond["class_ids"]
        if config.super_resolution:
            kwargs["low_res"] = cond["low_res"].to(x.dtype)
        timesteps = tables["timesteps"][t]
        out = self.network(x, timesteps, **kwargs)
        channels = x.shape[1]
        if out.shape[1] == channels:
            return Prediction(eps=out)
        eps, v = out[:, :channels], out[:, channels:]
        shape = (-1,) + (1,) * (x.ndim - 1)
        min_log, max_log = tables["min_log"][t].view(shape), tables["max_log"][t].view(shape)
        return Prediction(eps=eps, log_variance=learned_range(v, min_log, max_log))


class Parameterization:
    """Raw network output -> the contract (eps, thresholded x0), for every combination of what
    the network predicts (eps | v | x0) and what is diffused (the image | the residual
    r = k (y0 - up(x)) over the bicubic-upsampled condition). With v = sqrt(g) eps - sqrt(1-g) x0
    (Salimans & Ho 2022): x0 = sqrt(g) x_t - sqrt(1-g) v and eps = sqrt(g) v + sqrt(1-g) x_t.
    For a residual the x0 clip is applied in image space: up + r/k must lie in [-1, 1]."""

    def __init__(
        self,
        denoiser: Denoiser,
        prediction: Literal["eps", "v", "x0"],
        diffused: Literal["image", "residual"] = "image",
        residual_scale: float = 1.0,
    ):
        self.denoiser = denoiser
        self.prediction = prediction
        self.diffused = diffused
        self.residual_scale = residual_scale
        self._tables = _DeviceTables()
        self._upsampled = UpsampledCondition()

    @staticmethod
    def _build(schedule: Schedule, like: Tensor) -> dict[str, Tensor]:
        acp = schedule.alphas_cumprod
        return {
            "sqrt_acp": acp.sqrt().to(like.dtype),
            "sqrt_1m_acp": (1 - acp).sqrt().to(like.dtype),
        }

    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction:
        raw = self.denoiser(x, t, schedule, cond)
        if self.prediction == "eps" and self.diffused == "image":
            return raw  # the references' own form: samplers clip x0 themselves
        tables = self._tables.get(schedule, x, self._build)
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, s = tables["sqrt_acp"][t].view(shape), tables["sqrt_1m_acp"][t].view(shape)
        out = raw.eps
        if self.prediction == "v":
            x0, eps = a * x - s * out, a * out + s * x
        elif self.prediction == "x0":
            x0, eps = out, (x - a * out) / s
        else:
            x0, eps = (x - s * out) / a, out
        if self.diffused == "image":
            x0 = x0.clamp(-1, 1)
        else:
            up = self._upsampled(cond["low_res"], tuple(x.shape[-2:]), cond).to(x.dtype)
            k = self.residual_scale
            x0 = k * ((up + x0 / k).clamp(-1, 1) - up)
        return Prediction(eps=eps, log_variance=raw.log_variance, x0=x0)

    def to_image(self, x: Tensor, low_res: Tensor, upsampled: Tensor | None = None) -> Tensor:
        """A sample (or x0 estimate) of the diffused variable as an image in [-1, 1]
        (`upsampled`: the condition's bicubic upsample at x's size, when the caller has it)."""
        if self.diffused == "image":
            return x
        up = upsampled if upsampled is not None else upsample_condition(low_res, x.shape[-2:])
        up = up.to(x.dtype)
        return (up + x / self.residual_scale).clamp(-1, 1)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + w * (eps_c - eps_u), one batch.
    It wraps the raw output: eps, v and x0 are affine in each other at a fixed x_t, so guiding
    any of them is guiding eps."""

    def __init__(self, denoiser: Denoiser, scale: float, null_class: int):
        self.denoiser = denoiser
        self.scale = scale
        self.null_class = null_class

    def __call__(self, x: Tensor, t: Tensor, schedule: Schedule, cond: Cond) -> Prediction:
        if self.scale == 1.0:
            return self.denoiser(x, t, schedule, cond)
        class_ids = cond["class_ids"]
        doubled = {key: torch.cat([value, value]) for key, value in cond.items()}
        doubled["class_ids"] = torch.cat([class_ids, torch.full_like(class_ids, self.null_class)])
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), schedule, doubled)
        eps_c, eps_u = both.eps.chunk(2)
        log_variance = None if both.log_variance is None else both.log_variance.chunk(2)[0]
        return Prediction(eps=eps_u + self.scale * (eps_c - eps_u), log_variance=log_variance)
