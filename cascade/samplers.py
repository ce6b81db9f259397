"""Samplers: pure functions `(model, x, schedule, *, cond, generator, callback) -> x`.

Each runs every step of `schedule` (respace the schedule for fewer steps). `generator` is a
`torch.Generator`, one generator per batch item (so an item's result does not depend on the
batch it ran in), or any callable `noise(like) -> Tensor`. `callback(step, total, x0)` runs
after every step with the current prediction of x_0; it stops sampling by raising (the
service raises `SamplingCanceled`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cascade.bands import keep_low_band
from cascade.denoiser import Cond, Denoiser, Prediction
from cascade.schedule import Schedule
from cascade.stages import SAMPLER_NAMES, StageRun

NoiseSource = torch.Generator | Sequence[torch.Generator] | Callable[[Tensor], Tensor]
Callback = Callable[[int, int, Tensor], None]


class SamplingCanceled(Exception):
    """Raised by a callback to stop a sampler between two steps."""


def randn_like(x: Tensor, generator: NoiseSource) -> Tensor:
    """Standard normal noise shaped like x, drawn per item when given one generator per item."""
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if isinstance(generator, Sequence):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack(
            [
                torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                for g in generator
            ]
        )
    return generator(x)


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per batch item from explicit seeds."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


class _Tables:
    """Schedule coefficients in float64, cast once to the sample dtype on the sample's device."""

    def __init__(self, schedule: Schedule, like: Tensor):
        acp = schedule.alphas_cumprod
        acp_prev = schedule.alphas_cumprod_prev
        values = {
            "acp": acp,
            "acp_prev": acp_prev,
            "sqrt_recip_acp": torch.sqrt(1.0 / acp),
            "sqrt_recipm1_acp": torch.sqrt(1.0 / acp - 1),
            "coef1": schedule.posterior_mean_coef1,
            "coef2": schedule.posterior_mean_coef2,
            "posterior_log_variance": schedule.posterior_log_variance_clipped,
            "betas": schedule.betas,
            "sqrt_alphas": torch.sqrt(schedule.alphas),
            "sqrt_one_minus_acp": torch.sqrt(1.0 - acp),
            "sqrt_acp": torch.sqrt(acp),
            "sqrt_acp_prev": torch.sqrt(acp_prev),
        }
        shape = (-1,) + (1,) * (like.ndim - 1)
        self._values = {k: v.to(like.dtype).to(like.device) for k, v in values.items()}
        self._shape = shape

    def __getattr__(self, name: str) -> Callable[[Tensor], Tensor]:
        values = self._values[name]
        return lambda t: values[t].view(self._shape)


def predict_x0(pred: Prediction, x: Tensor, t: Tensor, tables: _Tables, clip: bool) -> Tensor:
    """x_0 from the predicted noise; clipped to [-1, 1] when asked (both references do). A
    denoiser that thresholds its own x_0 (a residual model clips in image space) gives it."""
    if pred.x0 is not None:
        return pred.x0
    x0 = tables.sqrt_recip_acp(t) * x - tables.sqrt_recipm1_acp(t) * pred.eps
    return x0.clamp(-1, 1) if clip else x0


def ancestral_step(
    pred: Prediction, x: Tensor, t: Tensor, tables: _Tables, noise: Tensor | None, clip: bool = True
) -> tuple[Tensor, Tensor]:
    """One ancestral step: posterior mean of x_0 and the learned or posterior variance."""
    x0 = predict_x0(pred, x, t, tables, clip)
    mean = tables.coef1(t) * x0 + tables.coef2(t) * x
    log_variance = pred.log_variance
    if log_variance is None:
        log_variance = tables.posterior_log_variance(t)
    if noise is None:
        return mean, x0
    nonzero = (t != 0).to(x.dtype).view(tables._shape)
    return mean + nonzero * torch.exp(0.5 * log_variance) * noise, x0


def ddim_step(
    pred: Prediction,
    x: Tensor,
    t: Tensor,
    tables: _Tables,
    noise: Tensor | None,
    eta: float,
    clip: bool = True,
) -> tuple[Tensor, Tensor]:
    """One DDIM step (Song et al. 2021) with eps rebuilt from the clipped x_0 (as ADM)."""
    x0 = predict_x0(pred, x, t, tables, clip)
    eps = (tables.sqrt_recip_acp(t) * x - x0) / tables.sqrt_recipm1_acp(t)
    acp, acp_prev = tables.acp(t), tables.acp_prev(t)
    sigma = eta * torch.sqrt((1 - acp_prev) / (1 - acp)) * torch.sqrt(1 - acp / acp_prev)
    x_prev = x0 * tables.sqrt_acp_prev(t) + torch.sqrt(1 - acp_prev - sigma**2) * eps
    if noise is not None and eta > 0:
        nonzero = (t != 0).to(x.dtype).view(tables._shape)
        x_prev = x_prev + nonzero * sigma * noise
    return x_prev, x0


def _steps(x: Tensor, schedule: Schedule):
    """Yield (count done after this step, index tensor) from the noisiest step down to 0."""
    total = len(schedule)
    for i in reversed(range(total)):
        yield total - i, i, torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


@torch.inference_mode()
def sample_ancestral(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling, the reference loops of SR3 and ADM (Ho et al. 2020, Algorithm 2 with
    clipped x_0, posterior or learned variance)."""
    tables, total = _Tables(schedule, x), len(schedule)
    for done, i, t in _steps(x, schedule):
        pred = model(x, t, schedule, cond)
        noise = randn_like(x, generator) if i > 0 else None
        x, x0 = ancestral_step(pred, x, t, tables, noise)
        if callback is not None:
            callback(done, total, x0)
    return x


@torch.inference_mode()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
) -> Tensor:
    """SR3's Algorithm 2 as printed (Saharia et al. 2021): unclipped, variance 1 - alpha_t.

    Under respacing (alpha_t = alpha_bar_t / alpha_bar_prev) its mean is still exactly the
    posterior mean given the predicted eps; its variance 1 - alpha_t is the upper bound of Ho et
    al., not the posterior variance, so coarse respacings add more noise than `ancestral`."""
    tables, total = _Tables(schedule, x), len(schedule)
    for done, i, t in _steps(x, schedule):
        eps = model(x, t, schedule, cond).eps
        beta = tables.betas(t)
        x = (x - beta / tables.sqrt_one_minus_acp(t) * eps) / tables.sqrt_alphas(t)
        if i > 0:
            x = x + torch.sqrt(beta) * randn_like(x, generator)
        if callback is not None:
            callback(done, total, predict_x0(Prediction(eps), x, t, tables, clip=False))
    return x


@torch.inference_mode()
def sample_ddim(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM sampling (Song et al. 2021); eta = 0 is deterministic, eta = 1 is ancestral-like."""
    tables, total = _Tables(schedule, x), len(schedule)
    for done, i, t in _steps(x, schedule):
        pred = model(x, t, schedule, cond)
        noise = randn_like(x, generator) if (i > 0 and eta > 0) else None
        x, x0 = ddim_step(pred, x, t, tables, noise, eta)
        if callback is not None:
            callback(done, total, x0)
    return x


@torch.inference_mode()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the clipped data prediction, with a
    first-order last step into index 0 (the solver's own `lower_order_final`): on the SR3
    schedule that step is ~10x longer than the one before, and a second-order step would
    extrapolate the x0 difference ~5x."""
    tables, total = _Tables(schedule, x), len(schedule)
    acp = schedule.alphas_cumprod
    # log-SNR half: lambda = log(alpha / sigma); computed in float64 as Python floats so the
    # loop never reads back from the device.
    lambdas = [0.5 * (math.log(a) - math.log1p(-a)) for a in acp.tolist()]
    alphas = [math.sqrt(a) for a in acp.tolist()]
    sigmas = [math.sqrt(1 - a) for a in acp.tolist()]
    previous_x0: Tensor | None = None
    previous_h = 0.0
    for done, i, t in _steps(x, schedule):
        x0 = predict_x0(model(x, t, schedule, cond), x, t, tables, clip=True)
        if i == 0:
            # The step to alpha_bar = 1 has infinite log-SNR: first order lands exactly on x_0.
            x = x0
        else:
            h = lambdas[i - 1] - lambdas[i]
            if previous_x0 is None or i == 1:
                d = x0
            else:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = (sigmas[i - 1] / sigmas[i]) * x - alphas[i - 1] * math.expm1(-h) * d
            previous_x0, previous_h = x0, h
        if callback is not None:
            callback(done, total, x0)
    return x


@torch.inference_mode()
def denoise_once(model: Denoiser, x: Tensor, schedule: Schedule, *, cond: Cond) -> Tensor:
    """The denoiser's clean estimate at the schedule's noisiest step. There x_T carries almost
    no signal, so an L2-trained model returns E[x_0 | condition]: the MMSE (most faithful,
    least detailed) output."""
    top = len(schedule) - 1
    t = torch.full((x.shape[0],), top, device=x.device, dtype=torch.long)
    return predict_x0(model(x, t, schedule, cond), x, t, _Tables(schedule, x), clip=True)


def dihedral(x: Tensor, turns: int, flip: bool) -> Tensor:
    x = torch.rot90(x, turns, (-2, -1))
    return x.flip(-1) if flip else x


def undo_dihedral(x: Tensor, turns: int, flip: bool) -> Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -turns, (-2, -1))


# The square's eight symmetries: four quarter turns, each with and without a mirror.
DIHEDRAL = tuple((turns, flip) for turns in range(4) for flip in (False, True))


@torch.inference_mode()
def ensemble_estimate(
    model: Denoiser, noises: Sequence[Tensor], schedule: Schedule, *, cond: Cond
) -> Tensor:
    """`denoise_once` averaged over the eight flips and rotations of its input (the geometric
    self-ensemble of Timofte et al. 2016, "Seven ways to improve example-based single image
    super resolution", and EDSR+, Lim et al. 2017), view k from its own x_T, `noises[k]`: each
    view turns its x_T and every image in the condition, and its estimate is turned back. The
    estimate's errors differ between views and between x_T draws (at the top step x_T still
    carries a little signal the network reads), so their mean is nearer E[x_0 | condition].
    Eight network calls for one; with one x_T for every view the result is exactly
    equivariant to the eight symmetries."""
    if len(noises) != len(DIHEDRAL):
        raise ValueError(f"{len(DIHEDRAL)} views need {len(DIHEDRAL)} x_T, got {len(noises)}")
    total = torch.zeros_like(noises[0])
    for (turns, flip), noise in zip(DIHEDRAL, noises, strict=True):
        turned = {
            key: dihedral(value, turns, flip) if value.dim() == 4 else value
            for key, value in cond.items()
        }
        estimate = denoise_once(model, dihedral(noise, turns, flip), schedule, cond=turned)
        total += undo_dihedral(estimate, turns, flip)
    return total / len(DIHEDRAL)


# The last index a student evaluates: below it a residual upscaler's output barely changes.
STUDENT_LOWEST_STEP = 60


def student_timesteps(schedule: Schedule, steps: int, restart: int) -> tuple[int, ...]:
    """The indices a `steps`-call student evaluates, from the top: the top, then the teacher's
    restart index down to `STUDENT_LOWEST_STEP`, equally spaced in log-SNR."""
    top = len(schedule) - 1
    if steps == 1:
        return (top,)
    acp = schedule.alphas_cumprod.double()
    lam = 0.5 * (torch.log(acp) - torch.log1p(-acp))
    high, low = float(lam[restart]), float(lam[min(STUDENT_LOWEST_STEP, restart)])
    gaps = max(1, steps - 2)
    wanted = [high + (low - high) * k / gaps for k in range(steps - 1)]
    kept = [int(torch.argmin((lam - value).abs())) for value in wanted]
    indices = sorted({top, *kept}, reverse=True)
    if len(indices) != steps:
        raise ValueError(f"cannot place {steps} distinct student steps below {restart}")
    return tuple(indices)


def student_trajectory(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    kept: Sequence[int],
    cond: Cond,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DDIM (eta 0) from the noise `x` over the schedule indices `kept` (from the
    top down), ending on the clean estimate at the last: a distilled student's sampler.
    Differentiable (the distillation trains through it)."""
    indices = sorted(kept)
    spaced = Schedule(schedule.alphas_cumprod[indices], schedule.timesteps[indices])
    tables, total = _Tables(spaced, x), len(spaced)
    for done, _, t in _steps(x, spaced):
        x, x0 = ddim_step(model(x, t, spaced, cond), x, t, tables, None, 0.0)
        if callback is not None:
            callback(done, total, x0)
    return x


@torch.inference_mode()
def sample_student(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    kept: Sequence[int],
    *,
    cond: Cond,
    callback: Callback | None = None,
) -> Tensor:
    """`student_trajectory` for sampling."""
    return student_trajectory(model, x, schedule, kept, cond, callback)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": sample_ancestral,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}
# "student" is not among them: it runs a distilled student's own network (Stage.sample_window).
assert (*SAMPLERS, "student") == SAMPLER_NAMES, "cascade.stages.SamplerName lists the samplers"


def sample(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    run: StageRun,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
) -> Tensor:
    """Run `run.sampler` over `schedule` respaced to `run.steps`."""
    if run.steps > len(schedule):
        raise ValueError(
            f"steps must be <= {len(schedule)} (the trained schedule), got {run.steps}"
        )
    spaced = schedule if run.steps == len(schedule) else schedule.respace(run.steps)
    extra = {"eta": run.eta} if run.sampler == "ddim" else {}
    return SAMPLERS[run.sampler](
        model, x, spaced, cond=cond, generator=generator, callback=callback, **extra
    )


def sample_with_fidelity(
    model: Denoiser,
    x: Tensor,
    schedule: Schedule,
    run: StageRun,
    fidelity: float,
    *,
    cond: Cond,
    generator: NoiseSource,
    callback: Callback | None = None,
    band_scale: int | None = None,
    fixed_noise: NoiseSource | None = None,
) -> Tensor:
    """Fidelity-realism control for upscales (after StableSR's fidelity weight), SDEdit-style.

    fidelity 1: the model's clean estimate at the noisiest step from a fixed x_T, so the same
    output for every seed (for an L2-trained model, the MMSE estimate: the highest PSNR),
    averaged over the input's eight flips and rotations, each from its own fixed x_T
    (`ensemble_estimate`: eight calls).
    fidelity 0: the full generative sample from pure noise. In between: that estimate is noised
    to the trained step (1 - fidelity)(T - 1) with the item's own noise and sampled from there
    with `run` (steps capped at the truncated length). Lower fidelity restarts from more
    noise, so more of the output is generated: detail rises and PSNR falls, monotonically.

    `band_scale` (an upscale's factor s): the sample keeps only its frequencies above the
    input's Nyquist (1/s of its own); below, the output is the clean estimate's (one call)
    (`cascade.bands.keep_low_band`, linear, so the same in the diffused residual as in the
    image). None: the sample as is.

    `fixed_noise`: where the fixed x_T comes from (default: seed 0 for every item; a tile of a
    larger image passes position-keyed noise of seed 0, so its tiles agree).
    """
    if not 0.0 <= fidelity <= 1.0:
        raise ValueError(f"fidelity must lie in [0, 1], got {fidelity}")
    if fidelity == 0.0 and band_scale is None:
        return sample(model, x, schedule, run, cond=cond, generator=generator, callback=callback)
    # The same fixed x_T for every item (and every seed), so the result is batch-independent.
    if fixed_noise is None:
        fixed_noise = generators([0] * x.shape[0], x.device)
    x_top = randn_like(x, fixed_noise)
    start = round((1.0 - fidelity) * (len(schedule) - 1))
    if start == 0:  # the most faithful output: the estimate, self-ensembled
        # Each further view draws its own x_T from the same fixed source (keyed to position
        # for a tile, so overlapping tiles still agree).
        x_tops = [x_top] + [randn_like(x, fixed_noise) for _ in DIHEDRAL[1:]]
        mean = ensemble_estimate(model, x_tops, schedule, cond=cond)
        if callback is not None:
            callback(1, 1, mean)
        return mean
    mean = denoise_once(model, x_top, schedule, cond=cond)
    if fidelity > 0.0:
        schedule = Schedule(schedule.alphas_cumprod[: start + 1], schedule.timesteps[: start + 1])
        acp = float(schedule.alphas_cumprod[-1])
        x = acp**0.5 * mean + (1 - acp) ** 0.5 * randn_like(x, generator)
        steps = min(run.steps, len(schedule))
        if steps == 1:  # one step from the restart itself: a respacing to one keeps step 0 only
            schedule = Schedule(schedule.alphas_cumprod[-1:], schedule.timesteps[-1:])
        run = dataclasses.replace(run, steps=steps)
    out = sample(model, x, schedule, run, cond=cond, generator=generator, callback=callback)
    return out if band_scale is None else keep_low_band(mean, out, band_scale)
