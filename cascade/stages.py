"""The cascade's stages, the rules for which a request runs, and every choice list the processes
share (samplers, colour fixes, precisions, per-stage defaults), each defined once here.

Torch-free, so the API, job control and the CLI import it without loading torch; the maths
imports it too, so the two sides cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

StageName = Literal["base64", "sr256", "sr1024"]
SamplerName = Literal["ancestral", "ddpm", "ddim", "dpmpp_2m", "student"]
ColorFix = Literal["none", "adain", "wavelet"]
Precision = Literal["float32", "bfloat16", "float16"]
# Where an upscale's frequencies below its input's Nyquist come from: the model's faithful
# estimate (fidelity 1's output; the sample adds only detail the input cannot carry) or the
# sample itself (plain SDEdit; at fidelity 0, exactly the reference's generative sample).
LowBand = Literal["estimate", "sample"]
# What a result is encoded as (`cascade.formats`); `quality` applies to the lossy two only.
OutputFormat = Literal["png", "webp", "jpeg"]

STAGES: tuple[str, ...] = get_args(StageName)
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
COLOR_FIXES: tuple[str, ...] = get_args(ColorFix)
PRECISIONS: tuple[str, ...] = get_args(Precision)
LOW_BANDS: tuple[str, ...] = get_args(LowBand)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
LOSSY_FORMATS: tuple[str, ...] = ("webp", "jpeg")
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
EXTENSIONS: dict[str, str] = {"png": "png", "webp": "webp", "jpeg": "jpg"}
DEFAULT_QUALITY = 90  # WebP and JPEG, 1..100: near-transparent at well under PNG's bytes

STAGE_OUTPUT: dict[str, int] = {"base64": 64, "sr256": 256, "sr1024": 1024}
STAGE_INPUT: dict[str, int] = {"sr256": 64, "sr1024": 256}
SIZES: tuple[int, ...] = tuple(STAGE_OUTPUT.values())
SCALES: tuple[int, ...] = (4, 16)
# Upscales' fidelity-realism default per stage (1: the most faithful output, 0: the full sample),
# chosen by measurement on held-out photos (the sweeps in weights/demo/sr256.md and sr1024.md).
DEFAULT_FIDELITY: dict[str, float] = {"sr256": 0.6, "sr1024": 0.945}


# Residual upscalers keep their faithful estimate's low band (weights/demo/sr256.md measures it:
# the same detail as the plain sample, higher PSNR).
DEFAULT_LOW_BAND: LowBand = "estimate"


def default_fidelity(stage: str) -> float:
    """The stage's default fidelity for a residual upscaler (a stage of another name: sr256's)."""
    return DEFAULT_FIDELITY.get(stage, DEFAULT_FIDELITY["sr256"])


@dataclass(frozen=True)
class StageRun:
    """How one stage runs a batch: the sampler over the respaced schedule (DDIM's eta), the
    guidance of a generation, and an upscale's colour fix, fidelity and low band (None: the
    stage's own). `Stage.run` decides which of these apply to its model."""

    sampler: SamplerName = "dpmpp_2m"
    steps: int = 20
    eta: float = 0.0
    guidance: float = 1.0
    color_fix: ColorFix = "none"
    fidelity: float | None = None
    low_band: LowBand | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLER_NAMES}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"unknown colour fix {self.color_fix!r}; choose one of {COLOR_FIXES}")
        if self.fidelity is not None and not 0.0 <= self.fidelity <= 1.0:
            raise ValueError(f"fidelity must lie in [0, 1], got {self.fidelity}")
        if self.low_band is not None and self.low_band not in LOW_BANDS:
            raise ValueError(f"unknown low band {self.low_band!r}; choose one of {LOW_BANDS}")


# Per-stage defaults when a request names no sampler or steps (the service's CASCADE_SAMPLER_* and
# CASCADE_STEPS_* settings start from these). sr256 runs its distilled student in four calls
# (`cascade.distill`: trajectory distillation of its 20-step DPM-Solver++ run), weights without
# one the 20 steps (`STUDENT_FALLBACK`); sr1024's short restart (fidelity 0.945) needs 3
# DPM-Solver++ steps, four network calls with its estimate, for the 20-step run's PSNR, detail
# and grain. The model cards measure both (weights/demo/sr256.md, sr1024.md).
DEFAULT_RUNS: dict[str, StageRun] = {
    "base64": StageRun("ddim", 50),
    "sr256": StageRun("student", 4),
    "sr1024": StageRun("dpmpp_2m", 3),
}


# The step counts the project's few-step students are distilled for (`cascade.distill`), and what
# a stage samples with when a run names the sampler "student" but the weights came without one.
STUDENT_STEPS = (1, 4)
STUDENT_FALLBACK = StageRun("dpmpp_2m", 20)


def without_student(run: StageRun) -> StageRun:
    """`run` as a stage without its student samples it: the fallback's sampler and steps,
    everything else kept; a one-call run keeps its one step (the fastest setting stays the
    fastest)."""
    steps = 1 if run.steps == 1 else STUDENT_FALLBACK.steps
    return replace(run, sampler=STUDENT_FALLBACK.sampler, steps=steps)


def run_sampler(requested: SamplerName | None, default: SamplerName, steps: int) -> SamplerName:
    """The sampler of a run of `steps` steps: the one asked for, else the stage's default. A
    default "student" runs only the step counts it was distilled for; other counts (a request's
    steps, a CASCADE_STEPS_* setting) sample with the fallback's sampler instead. Asking for the
    student by name with another count is an error (ValueError)."""
    if requested == "student" and steps not in STUDENT_STEPS:
        counts = " or ".join(str(count) for count in STUDENT_STEPS)
        raise ValueError(f"sampler student runs in {counts} steps, not {steps}")
    if requested is not None:
        return requested
    if default == "student" and steps not in STUDENT_STEPS:
        return STUDENT_FALLBACK.sampler
    return default


def stage_seed(seed: int, stage: str) -> int:
    """The seed a stage uses for an item: stable, distinct per stage, within int64."""
    return (int(seed) + 1_000_003 * STAGES.index(stage)) % (2**63)


def generation_stages(size: int) -> list[str]:
    """Stages a generation at `size` pixels runs through, in order."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size}")
    return [name for name in STAGES if STAGE_OUTPUT[name] <= size]


def upscale_stages(height: int, width: int, scale: int) -> list[str]:
    """Stages an upscale runs: 4x enters at the stage whose native input is nearest the input's
    longer side (64 -> sr256, 256 -> sr1024); 16x runs sr256 then sr1024."""
    if scale == 16:
        return ["sr256", "sr1024"]
    if scale != 4:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale}")
    side = max(height, width)
    return [min(STAGE_INPUT, key=lambda name: abs(math.log(side / STAGE_INPUT[name])))]
