"""Noise schedules: SR3 and ADM beta schedules, the discrete process they define, respacing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

SR3BetaName = Literal["linear", "quad", "warmup10", "warmup50", "const", "jsd", "cosine"]
ADMBetaName = Literal["linear", "cosine"]

# The 12 float32 buffers the SR3 reference registers (and stores in its checkpoints), in order.
SR3_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def sr3_betas(
    name: SR3BetaName,
    steps: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> Tensor:
    """SR3's `make_beta_schedule`, float64."""
    # numpy's linspace, as the reference: torch's rounds differently in the last bit, and
    # the float64 noise-level table must match exactly.
    if name == "linear":
        return torch.from_numpy(np.linspace(linear_start, linear_end, steps, dtype=np.float64))
    if name == "quad":
        return torch.from_numpy(
            np.linspace(linear_start**0.5, linear_end**0.5, steps, dtype=np.float64) ** 2
        )
    if name in ("warmup10", "warmup50"):
        betas = np.full(steps, linear_end, dtype=np.float64)
        warmup = int(steps * (0.1 if name == "warmup10" else 0.5))
        betas[:warmup] = np.linspace(linear_start, linear_end, warmup, dtype=np.float64)
        return torch.from_numpy(betas)
    if name == "const":
        return torch.full((steps,), linear_end, dtype=torch.float64)
    if name == "jsd":
        return torch.from_numpy(1.0 / np.linspace(steps, 1, steps, dtype=np.float64))
    if name == "cosine":
        f64 = torch.float64
        t = torch.arange(steps + 1, dtype=f64) / steps + cosine_s
        alphas = torch.cos(t / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return (1 - alphas[1:] / alphas[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown SR3 beta schedule {name!r}")


def adm_betas(name: ADMBetaName, steps: int) -> Tensor:
    """guided-diffusion's `get_named_beta_schedule`, float64."""
    if name == "linear":
        scale = 1000 / steps
        return torch.from_numpy(np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64))
    if name == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown ADM beta schedule {name!r}")


def space_timesteps(num_timesteps: int, spacing: str | int) -> list[int]:
    """Original steps kept by a respacing: "N" / "a,b,c" (equal sections) or "ddimN" (stride)."""
    spacing = str(spacing)
    if spacing.startswith("ddim"):
        wanted = int(spacing[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {wanted} evenly strided steps of {num_timesteps}")
    counts = [int(part) for part in spacing.split(",")]
    if any(count < 1 for count in counts):
        raise ValueError(f"step counts must be positive, got {spacing!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept.update(start + round(stride * k) for k in range(count))
        start += size
    return sorted(kept)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete diffusion process: alpha_bar per step and the original step each one maps to.

    Everything is float64 on the CPU; samplers cast each gathered coefficient to the sample
    dtype (as both references do), so schedules never hold the device or the sample precision.
    """

    alphas_cumprod: Tensor  # float64 [N], decreasing
    timesteps: Tensor  # int64 [N], index of each step in the trained process

    @classmethod
    def from_betas(cls, betas: Tensor) -> Schedule:
        betas = betas.to(torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls(alphas_cumprod, torch.arange(len(betas), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.timesteps[-1]) + 1

    def respace(self, spacing: str | int) -> Schedule:
        """Keep a subset of steps, rebuilding betas from the kept alpha_bar (improved-diffusion)."""
        kept = space_timesteps(len(self), spacing)
        return Schedule(self.alphas_cumprod[kept], self.timesteps[kept])

    # Derived quantities (float64), named as in the references.
    @property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def betas(self) -> Tensor:
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def posterior_variance(self) -> Tensor:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> Tensor:
        """log of the posterior variance, index 0 reusing index 1 (guided-diffusion)."""
        variance = self.posterior_variance
        if len(variance) > 1:
            variance = torch.cat([variance[1:2], variance[1:]])
        return torch.log(variance)

    @property
    def posterior_mean_coef1(self) -> Tensor:
        return self.betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> Tensor:
        return (
            (1.0 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )

    @property
    def sqrt_alphas_cumprod_prev(self) -> Tensor:
        """sqrt([1, alpha_bar_0, ..., alpha_bar_{N-1}]): SR3's noise-level table (length N+1)."""
        # numpy's sqrt is correctly rounded; torch's vectorised float64 sqrt can be off by an ulp.
        return torch.from_numpy(np.sqrt(np.append(1.0, self.alphas_cumprod.numpy())))

    def sr3_buffers(self) -> dict[str, Tensor]:
        """The 12 float32 buffers of SR3's `set_new_noise_schedule` (float64 math, then cast)."""
        acp = self.alphas_cumprod
        values = {
            "betas": self.betas,
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": self.alphas_cumprod_prev,
            "sqrt_alphas_cumprod": torch.sqrt(acp),
            "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - acp),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - acp),
            "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / acp),
            "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / acp - 1),
            "posterior_variance": self.posterior_variance,
            # SR3 clips at 1e-20 instead of reusing index 1.
            "posterior_log_variance_clipped": torch.log(self.posterior_variance.clamp(min=1e-20)),
            "posterior_mean_coef1": self.posterior_mean_coef1,
            "posterior_mean_coef2": self.posterior_mean_coef2,
        }
        return {name: values[name].to(torch.float32) for name in SR3_BUFFER_NAMES}


@dataclass(frozen=True)
class ScheduleConfig:
    """How a model's training schedule is built; stored with every checkpoint."""

    family: Literal["sr3", "adm"]
    beta_schedule: str
    num_timesteps: int
    linear_start: float = 1e-6  # SR3 only
    linear_end: float = 1e-2  # SR3 only

    def build(self) -> Schedule:
        if self.family == "sr3":
            betas = sr3_betas(
                self.beta_schedule,  # type: ignore[arg-type]
                self.num_timesteps,
                self.linear_start,
                self.linear_end,
            )
        else:
            betas = adm_betas(self.beta_schedule, self.num_timesteps)  # type: ignore[arg-type]
        return Schedule.from_betas(betas)
