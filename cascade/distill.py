"""Few-step students of a residual upscaler: `cascade distill`.

The teacher's default upscale (its stage's default sampler and steps, fidelity and low band) is a
deterministic function of the condition and of one noise draw: DPM-Solver++ solves an ODE, and the
only random input is the noise of the SDEdit restart. A student initialised from the teacher is
trained to give that output from the same noise, with deterministic DDIM over a few fixed
timesteps counted down from the top of the schedule, by L2 on the diffused variable: trajectory
distillation (Luhman & Luhman 2021, "Knowledge Distillation in Iterative Generative Models for
Improved Sampling Speed"; SinSR, Wang et al. 2024, distils ResShift's sampler into one step the
same way). Every step count in `STUDENT_STEPS` is trained at once, so one network serves the
four-call default and the one-call mode. The timesteps are written into the student's spec
(`ModelSpec.few_step`): sampling it needs nothing else (`cascade.samplers.sample_student`).

Teacher outputs are computed once into a pool of pairs (`pairs.pt`, grown in chunks, so an
interrupted run resumes where it stopped); training then draws batches from the pool.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade.checkpoints import Model, load_model, save_model
from cascade.datasets import load_image_folder
from cascade.degradations import DEGRADATIONS
from cascade.pipeline import Stage
from cascade.samplers import sample_with_fidelity, student_timesteps, student_trajectory
from cascade.stages import DEFAULT_RUNS, STUDENT_STEPS, without_student

log = logging.getLogger(__name__)

STATE_FORMAT = 1
GRAD_CLIP_NORM = 1.0


def teacher_outputs(teacher: Stage, low_res: Tensor, noise: Tensor) -> Tensor:
    """The teacher's default upscale of `low_res` in the diffused variable, its SDEdit restart
    drawing `noise` (what the student is given as x_T)."""
    run = DEFAULT_RUNS.get(teacher.name, teacher.defaults)
    if run.sampler == "student":  # a stage whose default is its student learns from the full run
        run = without_student(run)
    run = teacher.effective(run)
    spec = teacher.model.spec
    cond = {"low_res": low_res, "aug_level": torch.zeros(low_res.shape[0])}
    return sample_with_fidelity(
        teacher.upscale_denoiser(),
        torch.empty_like(noise),
        spec.schedule.build(),
        run,
        run.fidelity or 0.0,
        cond=cond,
        generator=lambda like: noise,
        band_scale=spec.scale if run.low_band == "estimate" else None,
    )


def grow_pairs(
    teacher: Stage,
    pairs: dict[str, Tensor],
    data_folder: str,
    target: int,
    crop: int,
    degradations: list[str],
    seed: int,
    chunk: int = 16,
    save_to: Path | None = None,
    deadline: float = math.inf,
) -> dict[str, Tensor]:
    """Add teacher pairs (input, noise, output) to the pool until it holds `target` or the
    deadline passes; chunk i is drawn from seed + i, so a resumed pool is the same pool."""
    bank = load_image_folder(data_folder, crop)
    scale = teacher.scale
    while len(pairs.get("noise", ())) < target and time.monotonic() < deadline:
        index = len(pairs.get("noise", ())) // chunk
        gen = torch.Generator().manual_seed(seed + index)
        hr, _ = bank.random_crops(chunk, crop, gen)
        name = degradations[index % len(degradations)]
        low_res = DEGRADATIONS[name](hr, scale, gen)
        noise = torch.randn(hr.shape, generator=gen)
        with torch.inference_mode():
            out = teacher_outputs(teacher, low_res, noise)
        new = {"low_res": low_res, "noise": noise, "target": out.float()}
        pairs = {k: torch.cat([pairs[k], v]) if k in pairs else v for k, v in new.items()}
        if save_to is not None:
            partial = save_to.with_suffix(".partial")
            torch.save(pairs, partial)
            os.replace(partial, save_to)
        log.info("pairs: %d of %d (%s)", len(pairs["noise"]), target, name)
    return pairs


def fine_band(x: Tensor, scale: int) -> Tensor:
    """What is above the input's Nyquist: `x` less its box average over `scale` pixels."""
    coarse = F.avg_pool2d(x, scale)
    return x - F.interpolate(coarse, scale_factor=scale, mode="nearest")


def fine_energy_error(output: Tensor, target: Tensor, scale: int, eps: float = 1e-6) -> Tensor:
    """Mean squared difference of the fine band's local RMS (per channel, over windows of
    2 * `scale` pixels) between `output` and `target`. Unlike L2 it does not reward a student for
    averaging away detail whose phase it cannot predict: a window as busy as the target's costs
    nothing here wherever its detail sits, a smooth one (or a grainier one) costs its missing
    (or extra) energy. A statistic matched per window, not a pixel target: the texture losses'
    idea (Gatys et al. 2015; Sajjadi et al. 2017, EnhanceNet) on the simplest statistic."""
    window = 2 * scale

    def local_rms(x: Tensor) -> Tensor:
        return torch.sqrt(F.avg_pool2d(fine_band(x, scale) ** 2, window) + eps)

    return torch.mean((local_rms(output) - local_rms(target)) ** 2)


class Distiller:
    """The student, its EMA, Adam, and the pool it learns from."""

    def __init__(
        self,
        teacher: Model,
        stage: str,
        lr: float,
        ema: float,
        seed: int,
        fine_weight: float = 0.0,
        energy_weight: float = 0.0,
    ):
        self.teacher = teacher
        self.stage = stage
        schedule = teacher.spec.schedule.build()
        fidelity = Stage(stage, teacher).default_fidelity
        restart = round((1.0 - fidelity) * (len(schedule) - 1))
        self.few_step = tuple(student_timesteps(schedule, n, restart) for n in STUDENT_STEPS)
        self.spec = dataclasses.replace(teacher.spec, few_step=self.few_step)
        self.network = copy.deepcopy(teacher.network).float().train()
        for param in self.network.parameters():
            param.requires_grad_(True)
        self.ema = copy.deepcopy(self.network).eval()
        for param in self.ema.parameters():
            param.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)
        self.lr, self.ema_decay = lr, ema
        self.fine_weight, self.scale = fine_weight, teacher.spec.scale
        self.energy_weight = energy_weight
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.wall_time, self.last_loss = 0, 0.0, math.nan
        self.schedule = schedule

    def student(self, network: nn.Module) -> Model:
        return Model(self.spec, network, f"student at step {self.step}")

    def train_step(self, pairs: dict[str, Tensor], batch: int) -> float:
        started = time.perf_counter()
        count = len(pairs["noise"])
        index = torch.randint(count, (batch,), generator=self.generator)
        low_res, noise, target = (pairs[k][index] for k in ("low_res", "noise", "target"))
        cond = {"low_res": low_res, "aug_level": torch.zeros(batch)}
        denoiser = self.student(self.network).denoiser
        self.optimizer.zero_grad(set_to_none=True)
        outputs = [
            student_trajectory(denoiser, noise, self.schedule, kept, cond) for kept in self.few_step
        ]
        losses = [self.loss(output, target) for output in outputs]
        loss = sum(losses) / len(losses)
        value = float(loss.item())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.step + 1}: lower --lr?")
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP_NORM)
        self.optimizer.step()
        with torch.no_grad():
            pairs_of = zip(self.ema.parameters(), self.network.parameters(), strict=True)
            for average, param in pairs_of:
                average.lerp_(param, 1 - self.ema_decay)
        self.step += 1
        self.last_loss = value
        self.wall_time += time.perf_counter() - started
        return value

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """L2 on the diffused variable, plus `fine_weight` times L2 on its fine band (above the
        input's Nyquist: what is left after a box average over `scale` pixels, brought back
        up), where the detail the student tends to smooth lives, plus `energy_weight` times the
        mismatch of the fine band's local RMS (`fine_energy_error`)."""
        error = output - target
        value = torch.mean(error**2)
        if self.fine_weight:
            value = value + self.fine_weight * torch.mean(fine_band(error, self.scale) ** 2)
        if self.energy_weight:
            value = value + self.energy_weight * fine_energy_error(output, target, self.scale)
        return value

    def start_from(self, student: Model) -> None:
        """Start the student (and its average) from an earlier student of the same teacher, with a
        fresh optimiser: how a run whose state file is gone goes on from its saved weights."""
        theirs = dataclasses.replace(student.spec, few_step=())
        ours = dataclasses.replace(self.spec, few_step=())
        if theirs != ours or student.spec.few_step != self.few_step:
            raise ValueError("the student to start from was not distilled from this teacher's spec")
        weights = {key: value.float() for key, value in student.network.state_dict().items()}
        self.network.load_state_dict(weights)
        self.ema.load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "wall_time": self.wall_time,
            "loss": self.last_loss,
            "network": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a distillation state (format {STATE_FORMAT})")
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step, self.wall_time, self.last_loss = state["step"], state["wall_time"], state["loss"]

    def save(self, out: Path, metadata: dict[str, str]) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        partial = out / "distill_state.pt.partial"
        torch.save(self.state_dict(), partial)
        os.replace(partial, out / "distill_state.pt")
        meta = {
            **metadata,
            "distill.step": str(self.step),
            "distill.wall_time_s": f"{self.wall_time:.1f}",
            "distill.loss": f"{self.last_loss:.6g}",
            "distill.few_step": str([list(k) for k in self.few_step]),
        }
        weights = {key: value.float() for key, value in self.ema.state_dict().items()}
        return save_model(out / "model.safetensors", self.spec, weights, metadata=meta)


def add_arguments(parser) -> None:
    """`cascade distill`'s arguments."""
    parser.add_argument("--stage", required=True, choices=["sr256", "sr1024"])
    parser.add_argument("--teacher", required=True, help="the residual upscaler to distil")
    parser.add_argument("--data", required=True, help="folder of training photos")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=1024, help="teacher outputs in the pool")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--degradations", default="bicubic,jpeg75,jpeg50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, help="stop (saved) after this long")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--fine-weight",
        type=float,
        default=0.0,
        help="add this times the L2 of the output's fine band (above the input's Nyquist)",
    )
    parser.add_argument(
        "--energy-weight",
        type=float,
        default=0.0,
        help="add this times the mismatch of the fine band's local RMS (8 px windows at 4x)",
    )
    parser.add_argument(
        "--init",
        help="start from these student weights (fresh optimiser) when there is no state to resume",
    )


def main(args) -> None:
    """`cascade distill`: pool the teacher's outputs, then train the student on them."""
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes else math.inf
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_model(args.teacher)
    if teacher.spec.task != "upscale" or teacher.spec.diffused != "residual":
        raise ValueError(f"{args.teacher} is not a residual upscaler")
    pool_file = out / "pairs.pt"
    pairs: dict[str, Tensor] = {}
    if args.resume and pool_file.is_file():
        pairs = torch.load(pool_file, weights_only=True)
    pairs = grow_pairs(
        Stage(args.stage, teacher),
        pairs,
        args.data,
        args.pairs,
        args.crop,
        args.degradations.split(","),
        args.seed,
        save_to=pool_file,
        deadline=deadline,
    )
    distiller = Distiller(
        teacher,
        args.stage,
        args.lr,
        args.ema,
        args.seed,
        fine_weight=args.fine_weight,
        energy_weight=args.energy_weight,
    )
    state_file = out / "distill_state.pt"
    if args.resume and state_file.is_file():
        distiller.load_state_dict(torch.load(state_file, weights_only=True))
    elif args.init:
        distiller.start_from(load_model(args.init))
    metadata = {
        "distill.teacher": Path(args.teacher).name,
        "distill.data": args.data,
        "distill.pairs": str(len(pairs.get("noise", ()))),
        "distill.degradations": args.degradations,
        **({"distill.init": Path(args.init).name} if args.init else {}),
        **({"distill.fine_weight": str(args.fine_weight)} if args.fine_weight else {}),
        **({"distill.energy_weight": str(args.energy_weight)} if args.energy_weight else {}),
    }
    pooled = len(pairs.get("noise", ()))
    if pooled < args.pairs:
        print(f"pool has {pooled} of {args.pairs} pairs: run again with --resume")
        return
    while distiller.step < args.steps and time.monotonic() < deadline:
        loss = distiller.train_step(pairs, args.batch_size)
        if distiller.step % 10 == 0:
            log.info("step %d loss %.5f", distiller.step, loss)
        if distiller.step % args.save_every == 0:
            distiller.save(out, metadata)
    path = distiller.save(out, metadata)
    print(f"step {distiller.step}, loss {distiller.last_loss:.5f}: wrote {path}")
