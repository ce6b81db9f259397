"""Training: the SR3 recipe for the upscalers, DDPM MSE with label dropout for the base.

The `cascade train` command that drives a `Trainer` is `cascade.train_command`.

Upscalers (SR3, Saharia et al. 2021, section 2.2 of shared/parity/sr3/ANATOMY.md): the spec's
prediction (eps with L1 as SR3, or v with L2) of the image or of its residual, at a continuous
noise level sqrt(gamma) drawn between two consecutive schedule levels (WaveGrad), conditioned on
the bicubic-upsampled low-res image, with CDM conditioning augmentation. The base: the spec's
prediction with MSE at integer timesteps (Ho et al. 2020) with labels
dropped to the null class (classifier-free guidance, Ho & Salimans 2022). Both: Adam with linear
warm-up, gradient clipping, EMA weights, seeded, resumable to the exact same next step. A run
can start from an existing model's weights (`init`: fine-tuning, e.g. on another degradation).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cascade.checkpoints import Model, load_model, read_spec, save_model, spec_summary
from cascade.datasets import (
    ImageBank,
    check_same_images,
    drop_labels,
    load_class_folder,
    load_image_folder,
    sr_condition,
)
from cascade.degradations import DEGRADATIONS, MIXTURE, upsample_condition
from cascade.images import save_png
from cascade.losses import LossName, adm_loss, continuous_noise_level, sr3_loss
from cascade.pipeline import Stage
from cascade.presets import ModelSpec, get_preset
from cascade.stages import Precision, StageName, StageRun

log = logging.getLogger(__name__)

STATE_FORMAT = 1
GRAD_CLIP_NORM = 1.0
# Sample grids: ancestral, the sampler least hurt by an early model's poor x0 at high noise.
SAMPLE_RUN = StageRun("ancestral", 50)
GRID_IMAGES = 4  # SR grid rows
GRID_CLASSES = 8  # base grid columns


@dataclass
class SRBatch:
    """Everything random in one upscaler step, so a step is a pure function of its batch."""

    hr: Tensor
    condition: Tensor
    aug_level: Tensor
    sqrt_gamma: Tensor
    noise: Tensor


@dataclass
class BaseBatch:
    """Everything random in one base step."""

    x0: Tensor
    class_ids: Tensor | None
    t: Tensor
    noise: Tensor


@dataclass(frozen=True)
class TrainConfig:
    """What defines a run; saved in the training state so a resume continues it exactly."""

    stage: StageName
    preset: str
    data: str = ""
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 100  # steps of linear learning-rate warm-up from 0
    # Upscalers only (the base trains with MSE, as ADM). None: SR3's L1 for eps-prediction, L2
    # otherwise, so a v-model's top-noise x0 is the conditional mean (the fidelity-1 output).
    loss: LossName | None = None
    degradation: str = "bicubic"
    ema: float = 0.999
    label_dropout: float = 0.1
    max_aug_level: float = 0.2
    crop: int | None = None  # None: the preset's native size
    hold_out: int = 0
    precision: Precision = "float32"
    seed: int = 0
    device: str = "cpu"
    # A model checkpoint whose weights start the run (network and EMA; fresh optimizer and
    # warm-up); "" starts from the seeded random initialisation.
    init: str = ""

    def __post_init__(self) -> None:
        checks = {
            "batch size must be >= 1": self.batch_size >= 1,
            "lr must be > 0": self.lr > 0,
            "warmup must be >= 0": self.warmup >= 0,
            "ema decay must lie in [0, 1)": 0 <= self.ema < 1,
            "label dropout must lie in [0, 1]": 0 <= self.label_dropout <= 1,
            "max aug level must lie in [0, 1]": 0 <= self.max_aug_level <= 1,
            f"loss must be l1 or l2, got {self.loss!r}": self.loss in ("l1", "l2", None),
            f"unknown degradation {self.degradation!r}; choose one of {list(DEGRADATIONS)}": (
                self.degradation in DEGRADATIONS
            ),
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls(**json.loads(text))


def stage_spec(stage: str, preset: str) -> ModelSpec:
    """The preset's spec, checked to do the stage's job (generate, or upscale by 4)."""
    spec = get_preset(preset)
    task = "generate" if stage == "base64" else "upscale"
    if spec.task != task or (task == "upscale" and spec.scale != 4):
        raise ValueError(f"preset {preset!r} ({spec.task}, x{spec.scale}) cannot train {stage}")
    return spec


def check_crop(spec: ModelSpec, crop: int) -> None:
    """The crop must divide by the scale and by the network's downsampling factor."""
    config = spec.network
    multiple = config.size_multiple
    multiple = math.lcm(multiple, spec.scale)
    if crop < multiple or crop % multiple:
        raise ValueError(
            f"crop must be a positive multiple of {multiple} for this preset, got {crop}"
        )


def device_name(device: torch.device) -> str:
    """Hardware description for checkpoint metadata."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"


def init_weights(path: str | Path, spec: ModelSpec) -> dict[str, Tensor]:
    """The weights of the model at `path`, checked to be `spec`'s architecture and diffusion."""
    saved, _ = read_spec(path)
    # The classes a base saw are recorded in its spec; they do not change the network.
    if dataclasses.replace(saved, classes=()) != dataclasses.replace(spec, classes=()):
        raise ValueError(
            f"init checkpoint {path} is {spec_summary(saved)}, but the run's preset is "
            f"{spec_summary(spec)}: start from a model of the same preset"
        )
    return load_model(path).network.state_dict()


class Trainer:
    """One run: network, EMA copy, Adam, grad scaler, the RNG streams and in-memory data.

    `state` (a `state_dict`) resumes a run; otherwise a config with `init` starts from that
    model's weights."""

    def __init__(
        self, config: TrainConfig, data: ImageBank, state: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.spec = spec = stage_spec(config.stage, config.preset)
        self.crop = config.crop or spec.image_size
        check_crop(spec, self.crop)
        if spec.task == "generate" and data.labels is None:
            raise ValueError("base training needs class labels (one folder per class)")
        self.data = data
        self.device = torch.device(config.device)
        if self.device.type != "cuda" and config.precision != "float32":
            log.warning("%s autocast is CUDA-only here: training in float32", config.precision)
        # Weight init and dropout draw from the global generator: seed it for a repeatable run.
        torch.manual_seed(config.seed)
        self.network = spec.build()
        if config.init and state is None:
            self.network.load_state_dict(init_weights(config.init, spec))
        self.network.to(self.device).train()
        self.ema = copy.deepcopy(self.network).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr)
        fp16 = config.precision == "float16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)  # fp16 overflows
        # Data (crops, flips, degradations, aug levels, dropped labels) and diffusion noise
        # come from two streams, both saved, so a resumed run draws what the original would.
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.schedule = spec.schedule.build()
        self.step = 0
        self.wall_time = 0.0
        self.last_loss = math.nan
        if state is not None:
            self.load_state_dict(state)

    def draw_batch(self) -> SRBatch | BaseBatch:
        """The next random batch: crops from the data stream, t and noise from the noise one."""
        config, device, gen = self.config, self.device, self.noise_generator
        hr, labels = self.data.random_crops(config.batch_size, self.crop, self.data_generator)
        noise = torch.randn(hr.shape, generator=gen, device=device)
        steps = len(self.schedule)
        if self.spec.task == "upscale":
            if config.degradation == "bicubic":
                # Resampling on the accelerator: the host would otherwise bound the step rate.
                hr = hr.to(device, non_blocking=True)
            condition, level = sr_condition(
                hr, self.spec.scale, config.degradation, config.max_aug_level, self.data_generator
            )
            t = torch.randint(1, steps + 1, (hr.shape[0],), generator=gen, device=device)
            sqrt_gamma = continuous_noise_level(self.schedule, t, gen)
            return SRBatch(hr.to(device), condition.to(device), level.to(device), sqrt_gamma, noise)
        if self.spec.class_conditional and self.spec.null_class is not None:
            labels = drop_labels(
                labels, config.label_dropout, self.spec.null_class, self.data_generator
            )
        class_ids = labels.to(device) if self.spec.class_conditional else None
        t = torch.randint(0, steps, (hr.shape[0],), generator=gen, device=device)
        return BaseBatch(hr.to(device), class_ids, t, noise)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda" or self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.config.precision))

    def loss(self, batch: SRBatch | BaseBatch) -> Tensor:
        """The training loss of the current network on one batch (mean over elements)."""
        with self._autocast():
            if isinstance(batch, SRBatch):
                spec = self.spec
                return sr3_loss(
                    self.network,
                    batch.hr,
                    batch.condition,
                    batch.sqrt_gamma,
                    batch.noise,
                    loss=self.config.loss or ("l1" if spec.prediction == "eps" else "l2"),
                    aug_level=batch.aug_level,
                    prediction=spec.prediction,
                    residual_scale=spec.residual_scale if spec.diffused == "residual" else None,
                )
            return adm_loss(
                self.network,
                batch.x0,
                batch.class_ids,
                batch.t,
                batch.noise,
                self.schedule,
                self.spec.prediction,
            )

    def train_step(self, batch: SRBatch | BaseBatch) -> float:
        """One Adam step (warmed-up lr, clipped gradients) and an EMA update; returns the loss."""
        started = time.perf_counter()
        lr = self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        value = float(loss.item())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.step + 1}: lower --lr?")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
        self.step += 1
        self.last_loss = value
        self.wall_time += time.perf_counter() - started
        return value

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay (TF ExponentialMovingAverage's num_updates rule): early EMA
        # weights follow the model instead of averaging in the random initialisation. Weights
        # from `init` are a trained model worth averaging in: the full decay from the start.
        decay = self.config.ema
        if not self.config.init:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        for average, param in zip(self.ema.parameters(), self.network.parameters(), strict=True):
            average.lerp_(param, 1 - decay)
        for average, buffer in zip(self.ema.buffers(), self.network.buffers(), strict=True):
            average.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs to take the exact next step."""
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "noise": self.noise_generator.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_json(),
            "step": self.step,
            "wall_time": self.wall_time,
            "loss": self.last_loss,
            "network": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "images": self.data.names,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (weights, optimizer, scaler, counters, RNG streams)."""
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.wall_time, self.last_loss = state["step"], state["wall_time"], state["loss"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.data_generator.set_state(rng["data"])
        try:
            self.noise_generator.set_state(rng["noise"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        except RuntimeError:  # CPU and CUDA generator states are not interchangeable
            log.warning("resuming on another device type: noise stream reseeded, not continued")
            self.noise_generator.manual_seed(self.config.seed + 1 + self.step)
        check_same_images(state["images"], self.data)

    def metadata(self) -> dict[str, str]:
        """What the model checkpoint records about its training."""
        meta = {
            "training.stage": self.config.stage,
            "training.preset": self.config.preset,
            "training.step": str(self.step),
            "training.wall_time_s": f"{self.wall_time:.1f}",
            "training.data": self.config.data,
            "training.device": device_name(self.device),
            "training.loss": f"{self.last_loss:.6g}",
            "training.config": self.config.to_json(),
            "training.degradation": self.config.degradation,
        }
        if self.config.degradation == "mixed":
            meta["training.degradation_mixture"] = json.dumps(MIXTURE)
        if self.config.init:
            meta["training.init"] = self.config.init
        if self.data.classes:
            meta["cascade.classes"] = json.dumps(self.data.classes, sort_keys=True)
        return meta

    def save(self, out: str | Path) -> Path:
        """Write OUT/train_state.pt and OUT/model.safetensors (EMA weights, float32)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        partial = out / "train_state.pt.partial"
        torch.save(self.state_dict(), partial)
        os.replace(partial, out / "train_state.pt")  # an interrupted save never eats the last one
        ema = {key: value.float() for key, value in self.ema.state_dict().items()}
        spec = self.spec
        if spec.class_conditional and self.data.labels:
            # The classes the model has seen: the service refuses the others by name.
            spec = dataclasses.replace(spec, classes=tuple(sorted(set(self.data.labels))))
        return save_model(out / "model.safetensors", spec, ema, metadata=self.metadata())

    def sample_grid(self, path: str | Path) -> Path:
        """A PNG of EMA samples. SR rows: bicubic input | model | ground truth; base: classes."""
        model = Model(self.spec, self.ema, f"EMA weights at training step {self.step}")
        stage = Stage(self.config.stage, model, SAMPLE_RUN, precision=self.config.precision)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # sampling never shifts the training RNG
            if self.spec.task == "upscale":
                count = min(GRID_IMAGES, len(self.data))
                hr = torch.cat([self.data.center_crop(i, self.crop) for i in range(count)])
                fixed = torch.Generator().manual_seed(0)
                low_res = DEGRADATIONS[self.config.degradation](hr, self.spec.scale, fixed)
                output = stage.run(seeds=list(range(count)), low_res=low_res.to(self.device))
                bicubic = upsample_condition(low_res, (self.crop, self.crop))
                rows = torch.cat([bicubic, output.cpu(), hr], dim=-1)
            else:
                class_ids = sorted(set(self.data.labels or []))[:GRID_CLASSES]
                output = stage.run(seeds=list(range(len(class_ids))), class_ids=class_ids)
                rows = torch.cat(list(output.cpu()), dim=-1)[None]
        return save_png(torch.cat(list(rows), dim=-2), path)


def load_state(path: str | Path) -> dict[str, Any]:
    """A training state file, checked for its format."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no training state at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a cascade training state (format {STATE_FORMAT})")
    return state


def load_data(config: TrainConfig) -> ImageBank:
    """The run's images: class folders for the base, an image folder for the upscalers."""
    size = config.crop or stage_spec(config.stage, config.preset).image_size
    if config.stage == "base64":
        return load_class_folder(config.data, size, config.hold_out)
    return load_image_folder(config.data, size, config.hold_out)
