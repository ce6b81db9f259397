"""A stage of the cascade (a 64x64 class-conditional base, then 64->256 and 256->1024
upscalers): one model and how it runs by default.

Stages hand float tensors in [-1, 1] to each other, never 8-bit images. `Stage.run` is the one
place the per-stage rules live (stage seeds, class ids only for class-conditional models,
guidance only when generating, colour fix and fidelity only when upscaling; outputs larger than
the network tiled by `cascade.tiled_upscale`). `cascade.chain.Cascade` is a plain loop over
stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from cascade import deblock
from cascade.checkpoints import CheckpointError, Model, load
from cascade.denoiser import Denoiser, Parameterization
from cascade.samplers import (
    Callback,
    NoiseSource,
    generators,
    randn_like,
    sample_student,
    sample_with_fidelity,
)
from cascade.stages import (
    DEFAULT_LOW_BAND,
    STAGES,
    LowBand,
    Precision,
    StageRun,
    default_fidelity,
    stage_seed,
    without_student,
)
from cascade.tiled_upscale import tiled_upscale

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS: dict[str, str] = {name: f"preset:{name}-tiny" for name in STAGES}
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "demo"


def default_weights(directory: Path = DEMO_WEIGHTS) -> dict[str, str]:
    """The demo weights where they exist (weights/demo/STAGE.safetensors), else tiny presets."""
    return {
        name: str(path) if (path := directory / f"{name}.safetensors").is_file() else fallback
        for name, fallback in DEFAULT_WEIGHTS.items()
    }


def student_source(source: str) -> str | None:
    """The distilled student shipped next to a checkpoint (`NAME.student.safetensors` beside
    `NAME.safetensors`, written by `cascade distill`), if there is one."""
    path = Path(source)
    if path.suffix != ".safetensors":
        return None
    student = path.with_name(f"{path.stem}.student.safetensors")
    return str(student) if student.is_file() else None


DEBLOCK_FILE = "deblock.safetensors"


def deblock_source(source: str) -> str | None:
    """The JPEG pre-clean network shipped in an upscaler's folder (`deblock.safetensors` beside
    `NAME.safetensors`, written by `cascade train-deblock`), if there is one."""
    path = Path(source)
    if path.suffix != ".safetensors":
        return None
    network = path.with_name(DEBLOCK_FILE)
    return str(network) if network.is_file() else None


def load_stage(
    name: str, source: str, device: torch.device | str, defaults: StageRun, compile: bool = False
) -> Stage:
    """A stage from its weights, with what ships beside them (`attach_beside`), on the fast
    path for `device`."""
    stage = Stage(name, load(source, device, stage=name), defaults)
    attach_beside(stage, source, device)
    return stage.optimize(compile)


def attach_beside(
    stage: Stage,
    source: str,
    device: torch.device | str,
    student: str | None = None,
    preclean: str | None = None,
) -> Stage:
    """Attach to an upscaler what ships beside its weights `source`, as the service runs it:
    its distilled student (`student` when given) and the JPEG pre-clean of its folder
    (`preclean` when given; "none" for none). A broken pre-clean is a CheckpointError."""
    student = student or student_source(source)
    if student is not None:
        stage.attach_student(load(student, device, stage=stage.name))
    if stage.model.spec.task != "upscale" or preclean == "none":
        return stage
    cleaner = preclean or deblock_source(source)
    if cleaner is not None:
        try:
            stage.deblocker = deblock.load(cleaner, device)
        except (ValueError, OSError, SafetensorError) as error:  # broken: the stage stays out
            raise CheckpointError(f"JPEG pre-clean {cleaner}: {error}") from None
        stage.deblocker_weights = Path(cleaner).name
    return stage


class StageError(ValueError):
    """A request a stage cannot serve (bad size, guidance without a null class, ...)."""


@dataclass
class Stage:
    """One step of the cascade: a model, how it runs by default, its augmentation level."""

    name: str
    model: Model
    defaults: StageRun = field(default_factory=StageRun)
    aug_level: float = 0.0  # CDM level given to SR models trained with augmentation
    precision: Precision = "float32"  # autocast dtype on CUDA; CPU always runs float32
    # Upscales: 1 the most faithful output, 0 the full sample. None: the stage's DEFAULT_FIDELITY
    # for a residual model; 0 for eps-on-image weights (released ones), whose one-step x0 at the top
    # noise level is ill-conditioned, so they sample exactly as their reference code does.
    fidelity: float | None = None
    # A distilled student of this stage's model (`cascade.distill`), run by the sampler "student"
    # in the step counts its spec's `few_step` lists; the model itself serves every other run.
    student: Model | None = None
    # The JPEG pre-clean (`cascade.deblock`) an upscale's JPEG input passes through first, told
    # the file's quality (`prepare_input`); None: inputs run as given.
    deblocker: deblock.Deblocker | None = None
    deblocker_weights: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.network.parameters()).device

    @property
    def output_size(self) -> int:
        return self.model.spec.image_size

    @property
    def scale(self) -> int:
        return self.model.spec.scale

    @property
    def default_fidelity(self) -> float:
        if self.fidelity is not None:
            return self.fidelity
        return default_fidelity(self.name) if self.model.spec.diffused == "residual" else 0.0

    @property
    def default_low_band(self) -> LowBand:
        """The project's residual upscalers keep their estimate's low band; eps-on-image weights
        (released ones) sample as their reference code does."""
        return DEFAULT_LOW_BAND if self.model.spec.diffused == "residual" else "sample"

    def effective(self, run: StageRun | None = None) -> StageRun:
        """What of `run` applies to this stage's model: guidance only when generating, colour
        fix, fidelity and low band only when upscaling (resolved to the stage's defaults).
        Equal results sample identically, which is what cross-request batching compares."""
        run = run or self.defaults
        if self.model.spec.task == "generate":
            run = dataclasses.replace(run, color_fix="none", fidelity=None, low_band=None)
        else:
            run = dataclasses.replace(
                run,
                guidance=1.0,
                fidelity=self.default_fidelity if run.fidelity is None else run.fidelity,
                low_band=run.low_band or self.default_low_band,
            )
        if run.sampler == "student":
            # Weights without a student, and runs at a fidelity the student was not distilled
            # for, sample as the others do (the record then names what ran).
            if self.student is None or not self.student_serves(run.fidelity):
                run = without_student(run)
            else:
                self.student_steps(run.steps)
        return run

    def attach_student(self, student: Model) -> None:
        """Serve the sampler "student" with `student`, a distillation of this stage's model."""
        spec, own = student.spec, self.model.spec
        if not spec.few_step or spec.network != own.network or spec.schedule != own.schedule:
            raise StageError(
                f"{student.id} is not a few-step student of {self.model.id} (it needs the same "
                "network and schedule and a few_step list: cascade distill writes one)"
            )
        self.student = student

    @property
    def student_restart(self) -> int | None:
        """The schedule index the student's teacher restarted from (its multi-call modes start
        there after the top step), None for a one-call-only student or none."""
        if self.student is None:
            return None
        longest = max(self.student.spec.few_step, key=len)
        return longest[1] if len(longest) > 1 else None

    def student_serves(self, fidelity: float | None) -> bool:
        """Whether the student reproduces a run at `fidelity`: the one its teacher's default
        ran at (the same restart index), which is all it was distilled for."""
        restart = self.student_restart
        if restart is None or fidelity is None:
            return True
        top = len(self.model.spec.schedule.build()) - 1
        return round((1.0 - fidelity) * top) == restart

    def student_steps(self, steps: int) -> tuple[int, ...]:
        """The schedule indices the student evaluates in `steps` calls (StageError if it has
        no student, or one not trained for that count)."""
        if self.student is None:
            raise StageError(
                f"sampler student needs a distilled student of {self.model.id}; stage "
                f"{self.name} has none (use dpmpp_2m, ddim, ddpm or ancestral)"
            )
        counts = {len(kept): kept for kept in self.student.spec.few_step}
        if steps not in counts:
            raise StageError(
                f"the student of stage {self.name} runs in {sorted(counts)} steps, not {steps}"
            )
        return counts[steps]

    def describe(self) -> dict[str, object]:
        """What a job record says about the model behind this stage."""
        spec = self.model.spec
        description: dict[str, object] = {
            "stage": self.name,
            "model": self.model.id,
            "random_weights": self.model.random_weights,
            "family": spec.family,
            "prediction": spec.prediction,
            "diffused": spec.diffused,
            "size": self.output_size,
            "scale": self.scale,
            "sampler": self.defaults.sampler,
            "steps": self.defaults.steps,
        }
        if spec.task == "upscale":
            description["fidelity"] = self.default_fidelity
            description["low_band"] = self.default_low_band
            if self.student is not None:
                description["student"] = {
                    "model": self.student.id,
                    "steps": sorted(len(kept) for kept in self.student.spec.few_step),
                    "weights": self.student.weights,
                }
            if self.deblocker is not None:
                description["jpeg_preclean"] = {
                    "weights": self.deblocker_weights,
                    "qualities": list(deblock.QUALITY_RANGE),
                }
        if spec.class_conditional:
            description["classes"] = list(spec.classes)  # empty: every ImageNet class
        return description

    def optimize(self, compile: bool = False, channels_last: bool | None = None) -> Stage:
        """The fast path. CUDA: TF32 tensor cores. CPU: channels-last (NHWC) weights, where
        oneDNN's convolutions run faster in that layout and the 1x1 convolutions become matrix
        products (`cascade.pointwise`). `cascade bench --only forward`, idle 2-core AVX2 CPU,
        torch's 2 threads, batch 1, against the reference code's forward, three runs:
        base64-small 1.33-1.37x, sr256-small 1.26-1.40x, sr1024-small 1.67-1.86x (one thread:
        1.20x, 1.17x, 1.59x). `compile` (CASCADE_COMPILE) adds torch.compile of the forward on
        the NCHW network. It stays opt-in: it beat this path for base64-small in two of the
        runs, for sr256-small in one and for sr1024-small in none, and each new input shape
        costs one compile (about a minute cold on 2 cores, seconds from inductor's disk cache).
        Sampling already runs under inference_mode with scaled_dot_product_attention.

        float32 stays the default on CUDA: on an H100, bf16 autocast with channels_last ran
        0.69-0.87x the speed of float32/TF32 for these UNets at batch 8 (BENCHMARKS.md), the
        GroupNorms and layout conversions costing more than the faster convolutions gain.
        `precision="bfloat16"` remains available."""
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # convolutions use TF32 by default
        if channels_last is None:
            channels_last = self.device.type == "cpu" and not compile
        networks = [self.model.network]
        if self.student is not None:
            networks.append(self.student.network)
        if channels_last:  # the convolutions' outputs follow their weights' layout
            for network in networks:
                network.to(memory_format=torch.channels_last)
        if compile:
            # Compiling the bound forward keeps the module (and its config) in place.
            for network in networks:
                network.forward = torch.compile(network.forward, dynamic=False)
        return self

    def _reduced_precision(self) -> bool:
        return self.device.type == "cuda" and self.precision != "float32"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self._reduced_precision():
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.precision))

    def _raw_denoiser(self, guidance: float) -> Denoiser:
        if guidance != 1.0 and self.model.spec.null_class is None:
            raise StageError(
                f"guidance {guidance} needs a model trained with a null class; "
                f"{self.model.id} has none (ADM's released base: use guidance 1)"
            )
        return self.model.raw_denoiser(guidance)

    def run(
        self,
        *,
        seeds: Sequence[int],
        class_ids: Sequence[int] | None = None,
        low_res: Tensor | None = None,
        run: StageRun | None = None,
        aug_level: float | None = None,
        callback: Callback | None = None,
    ) -> Tensor:
        """Sample this stage for a batch of requests. Item i draws from its own generator,
        seeded from `seeds[i]` and the stage's name (so stages differ and an item's image does
        not depend on its batch); `run` (default: the stage's) applies as `effective` says.
        An upscale runs in windows of the network's native size (`cascade.tiled_upscale`), one
        when it fits, its noise keyed to absolute position: an image upscaled in smaller tiles
        (`tile=`) is the same sample up to the seams."""
        spec, device = self.model.spec, self.device
        batch = len(seeds)
        if spec.task == "upscale":
            self.check_input(low_res, batch)
            assert low_res is not None
            image = tiled_upscale(
                self, low_res, seeds, run=run, aug_level=aug_level, callback=callback
            )
            assert isinstance(image, Tensor)
            return image.to(device)
        cond: dict[str, Tensor] = {}
        if spec.class_conditional:
            if class_ids is None:
                raise StageError(f"{self.model.id} is class-conditional: give class ids")
            cond["class_ids"] = self._class_tensor(class_ids, batch)
        run = self.effective(run)
        gens = generators([stage_seed(seed, self.name) for seed in seeds], device)
        height = width = spec.image_size
        denoiser = self.model.parameterize(self._raw_denoiser(run.guidance))
        x = randn_like(torch.empty(batch, 3, height, width, device=device), gens)
        x = self.sample_window(denoiser, x, cond, run, gens, None, callback)
        return x.float().clamp(-1, 1)

    def prepare_input(self, low_res: Tensor, jpeg_quality: int | None) -> Tensor:
        """An upscale's input as the upload gave it, made ready for the model: a JPEG (its
        `jpeg_quality` from the file's tables, `cascade.formats.jpeg_quality`) cleaned by the
        stage's pre-clean network, in the input's dtype; anything else as it is. Only the first
        stage of an upscale sees a file: later stages take the previous stage's output."""
        if self.deblocker is None or not deblock.applies(jpeg_quality):
            return low_res
        return deblock.clean(self.deblocker, low_res.to(self.device), jpeg_quality)

    def check_input(self, low_res: Tensor | None, batch: int) -> None:
        """An upscale's input is given, one image per seed."""
        if low_res is None:
            raise StageError(f"stage {self.name} upscales: give a low-resolution image")
        if low_res.shape[0] != batch:
            raise StageError(f"{low_res.shape[0]} images for {batch} seeds")

    def aug_levels(self, aug_level: float | None, batch: int) -> Tensor:
        """The CDM level per item: `aug_level`, else the stage's; 0 for models without it."""
        level = self.aug_level if aug_level is None else aug_level
        if not self.model.spec.condition_augmentation:
            level = 0.0  # weights trained without augmentation run clean (ADM, SR3)
        return torch.full((batch,), float(level), device=self.device)

    def sample_window(
        self,
        denoiser: Parameterization,
        x: Tensor,
        cond: dict[str, Tensor],
        run: StageRun,
        noise: NoiseSource,
        fixed_noise: NoiseSource | None,
        callback: Callback | None,
    ) -> Tensor:
        """The sampler over one window; an upscale's result as an image in [-1, 1]."""
        spec = self.model.spec
        if self._reduced_precision():  # tensor-core kernels for bf16/fp16 want NHWC
            self.model.network.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        report = callback
        if callback is not None and spec.diffused == "residual":

            def report(step: int, total: int, x0: Tensor) -> None:
                callback(step, total, denoiser.to_image(x0, cond["low_res"], cond.get("upsampled")))

        if run.sampler == "student":
            assert self.student is not None
            student = self.student.parameterize(self.student.raw_denoiser())
            with self._autocast():
                x = sample_student(
                    student,
                    x,
                    self.student.spec.schedule.build(),
                    self.student_steps(run.steps),
                    cond=cond,
                    callback=report,
                )
            image = student.to_image(x.float(), cond["low_res"].float(), cond.get("upsampled"))
            return image.clamp(-1, 1)
        with self._autocast():
            x = sample_with_fidelity(
                denoiser,
                x,
                spec.schedule.build(),
                run,
                run.fidelity or 0.0,
                cond=cond,
                generator=noise,
                callback=report,
                band_scale=spec.scale if run.low_band == "estimate" else None,
                fixed_noise=fixed_noise,
            )
        if spec.task == "generate":
            return x
        image = denoiser.to_image(x.float(), cond["low_res"].float(), cond.get("upsampled"))
        return image.clamp(-1, 1)

    def upscale_denoiser(self) -> Parameterization:
        """The denoiser an upscale samples (no guidance), in the contract's parameterisation."""
        return self.model.parameterize(self._raw_denoiser(1.0))

    def tiled(self, height: int, width: int) -> bool:
        """Whether an upscale to `height` x `width` runs in tiles (larger than the network's)."""
        return self.model.spec.task == "upscale" and max(height, width) > self.output_size

    def _class_tensor(self, class_ids: Sequence[int], batch: int) -> Tensor:
        if len(class_ids) != batch:
            raise StageError(f"{len(class_ids)} class ids for {batch} seeds")
        limit = self.model.network.config.num_classes - (self.model.spec.null_class is not None)
        for class_id in class_ids:
            if not 0 <= int(class_id) < limit:
                raise StageError(f"class id {class_id} out of range 0..{limit - 1}")
        return torch.tensor([int(c) for c in class_ids], dtype=torch.long, device=self.device)

    def pad_input(self, low_res: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Reflect-pad the input so the output fits the network's size multiple (cropped after);
        by indexing, so a uint8 input stays uint8."""
        multiple = self.model.network.config.size_multiple
        step = max(1, math.ceil(multiple / self.scale))
        height, width = low_res.shape[-2:]
        pad_h, pad_w = (-height) % step, (-width) % step
        if pad_h or pad_w:
            reflect = pad_h < height and pad_w < width
            rows = _padded_index(height, pad_h, reflect, low_res.device)
            cols = _padded_index(width, pad_w, reflect, low_res.device)
            low_res = low_res[..., rows, :][..., cols]
        return low_res, (height, width)


def _padded_index(n: int, pad: int, reflect: bool, device: torch.device) -> Tensor:
    """Indices of an axis of `n` extended by `pad` at its end: mirrored without repeating the
    border (F.pad's "reflect"), else the border repeated ("replicate")."""
    extra = torch.arange(n, n + pad, device=device)
    extra = 2 * (n - 1) - extra if reflect else torch.full_like(extra, n - 1)
    return torch.cat([torch.arange(n, device=device), extra])
