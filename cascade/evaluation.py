"""Upscaler evaluation (SR3 protocol, and the inputs real photos are): degrade ground truth,
upscale, compare.

Each ground-truth image is center-cropped to the stage's output size, reduced by a named
degradation (SR3's antialiased bicubic downsample by default; JPEG, noise or the second-order
chain of it otherwise, each seeded by the image's index), then upscaled by plain bicubic, by
Lanczos, by the model at its fidelity and at fidelity 1. Every output is scored against the
*clean* ground truth (PSNR/SSIM in RGB and Y, hf_ratio, flat_grain) and with SR3's consistency
against the input it was given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cascade.checkpoints import load
from cascade.color import apply_color_fix
from cascade.datasets import center_crop, find_images, read_image, to_float
from cascade.degradations import DEGRADATIONS, file_jpeg_quality, upsample_condition
from cascade.images import save_png
from cascade.metrics import image_metrics
from cascade.pipeline import Stage, attach_beside, default_weights
from cascade.samplers import DIHEDRAL
from cascade.stages import (
    COLOR_FIXES,
    DEFAULT_RUNS,
    LOW_BANDS,
    SAMPLER_NAMES,
    STAGE_INPUT,
    STAGE_OUTPUT,
    ColorFix,
    StageRun,
    run_sampler,
)

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "consistency", "hf_ratio", "flat_grain")
GRID_ROWS = 8  # at most this many images in grid.png (1024-pixel rows grow large)
# The methods scored: plain bicubic and Lanczos (the classical baselines), the model at the
# chosen fidelity, and at fidelity 1.
METHODS = ("bicubic", "lanczos", "model", "fidelity1")


class Upscaler(Protocol):
    """What evaluation needs of a stage (a `Stage`, or a stand-in in tests)."""

    @property
    def scale(self) -> int: ...

    def run(
        self,
        *,
        seeds: Sequence[int],
        low_res: Tensor,
        run: StageRun | None = None,
    ) -> Tensor: ...

    def prepare_input(self, low_res: Tensor, jpeg_quality: int | None) -> Tensor: ...


@dataclass
class ImageResult:
    """One evaluated image: the tensors (CHW, [-1, 1]) and each method's metrics."""

    name: str
    low_res: Tensor
    target: Tensor
    outputs: dict[str, Tensor]  # method -> output, METHODS order
    metrics: dict[str, dict[str, float]]  # method -> metrics
    degradation_seed: int = 0  # the generator seed its low-res input was made with

    @property
    def bicubic(self) -> Tensor:
        return self.outputs["bicubic"]

    @property
    def output(self) -> Tensor:
        return self.outputs["model"]


def lanczos_upsample(low_res: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's Lanczos (a = 3) resize of [1, C, h, w] in [-1, 1] to `size`, per channel in float
    (no 8-bit rounding, like the bicubic baseline), clamped."""
    planes = [
        np.asarray(Image.fromarray(plane.numpy()).resize(size[::-1], Image.Resampling.LANCZOS))
        for plane in low_res[0].detach().float().cpu()
    ]
    return torch.from_numpy(np.stack(planes))[None].clamp(-1.0, 1.0)


def degrade(target: Tensor, scale: int, degradation: str, degradation_seed: int) -> Tensor:
    """The low-res input made from a [1, C, H, W] ground truth by the named degradation."""
    if degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}; choose one of {list(DEGRADATIONS)}")
    generator = torch.Generator().manual_seed(degradation_seed)
    return DEGRADATIONS[degradation](target, scale, generator)


def evaluate_image(
    stage: Upscaler,
    target: Tensor,
    name: str,
    seed: int,
    run: StageRun,
    color_fix: ColorFix = "none",
    degradation: str = "bicubic",
    degradation_seed: int = 0,
) -> ImageResult:
    """Score bicubic, Lanczos, the model as `run` says (fidelity None: the stage's default) and
    the model at fidelity 1 (colour-corrected against the input when asked) on one ground-truth
    image, from the input `degradation` makes of it."""
    target = (target[None] if target.dim() == 3 else target).float().cpu()
    low_res = degrade(target, stage.scale, degradation, degradation_seed)
    size = tuple(target.shape[-2:])
    outputs = {
        "bicubic": upsample_condition(low_res, size),
        "lanczos": lanczos_upsample(low_res, size),
    }
    # Fidelity 1 is the model's own estimate (a student's sampler has no fidelity to set).
    sampler = "dpmpp_2m" if run.sampler == "student" else run.sampler
    faithful = dataclasses.replace(run, sampler=sampler, fidelity=1.0)
    # The model sees what the service would make of the file: a JPEG cleaned first.
    model_input = stage.prepare_input(low_res, file_jpeg_quality(degradation))
    for method, method_run in (("model", run), ("fidelity1", faithful)):
        output = stage.run(seeds=[seed], low_res=model_input, run=method_run)
        output = apply_color_fix(output.float().cpu(), low_res, color_fix).clamp(-1, 1)
        if output.shape != target.shape:
            raise ValueError(
                f"{name}: model output {tuple(output.shape)}, target {tuple(target.shape)}"
            )
        outputs[method] = output
    return ImageResult(
        name,
        low_res[0],
        target[0],
        {method: output[0] for method, output in outputs.items()},
        {method: image_metrics(output, target, low_res) for method, output in outputs.items()},
        degradation_seed,
    )


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-metric arithmetic mean over images (PSNR averaged in dB, as SR3 reports it)."""
    return {key: sum(row[key] for row in rows) / len(rows) for key in METRICS} if rows else {}


def summarize(results: Sequence[ImageResult]) -> dict[str, object]:
    """Per-image and mean metrics for every method."""
    return {
        "images": [
            {"name": r.name, "degradation_seed": r.degradation_seed, **r.metrics} for r in results
        ],
        "mean": {method: mean_metrics([r.metrics[method] for r in results]) for method in METHODS},
    }


def evaluate(
    stage: Upscaler,
    images: Sequence[Tensor],
    names: Sequence[str],
    seed: int,
    run: StageRun,
    degradation: str = "bicubic",
) -> dict[str, object]:
    """Metrics of every method over ground-truth images; image i is degraded with seed i (the
    same inputs whatever the sampler's seed) and sampled with seed + i."""
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images for {len(names)} names")
    results = [
        evaluate_image(stage, image, name, seed + index, run, "none", degradation, index)
        for index, (image, name) in enumerate(zip(images, names, strict=True))
    ]
    return summarize(results)


def load_targets(paths: Sequence[Path], size: int) -> tuple[list[Tensor], list[str]]:
    """Center crops of `size` from each readable image at least that large (others warned)."""
    images, names = [], []
    for path in paths:
        image = read_image(path)
        if image is None:
            continue
        if min(image.shape[-2:]) < size:
            height, width = image.shape[-2:]
            log.warning("skipping %s: %dx%d is smaller than %d", path, width, height, size)
            continue
        images.append(to_float(center_crop(image, size)))
        names.append(str(path))
    return images, names


def grid(results: Sequence[ImageResult]) -> Tensor:
    """Rows of input (nearest-upsampled) | bicubic | Lanczos | model | model at fidelity 1 |
    ground truth, one per image."""
    rows = []
    for r in results:
        nearest = F.interpolate(r.low_res[None], size=r.target.shape[-2:], mode="nearest")[0]
        rows.append(torch.cat([nearest, *r.outputs.values(), r.target], dim=-1))
    return torch.cat(rows, dim=-2)


def format_table(summary: dict[str, object]) -> str:
    """A plain-text table: one line per image and method, then the means."""
    lines = [f"{'image':32s} {'method':9s} " + " ".join(f"{m:>11s}" for m in METRICS)]

    def line(name: str, method: str, values: dict[str, float]) -> str:
        cells = " ".join(
            f"{values[m]:11.4f}" if m != "consistency" else f"{values[m]:11.2e}" for m in METRICS
        )
        return f"{name[-32:]:32s} {method:9s} {cells}"

    for item in summary["images"]:  # type: ignore[union-attr]
        for method in METHODS:
            lines.append(line(Path(item["name"]).name, method, item[method]))
    for method in METHODS:
        lines.append(line("MEAN", method, summary["mean"][method]))  # type: ignore[index]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`cascade eval`'s arguments."""
    parser.add_argument("--stage", required=True, choices=list(STAGE_INPUT))
    parser.add_argument("--data", required=True, help="folder of ground-truth images")
    parser.add_argument("--checkpoint", help="model to evaluate (default: the stage's default)")
    parser.add_argument(
        "--degradation",
        default="bicubic",
        choices=list(DEGRADATIONS),
        help="how the low-res inputs are made from the ground truth (scored against the clean "
        "ground truth): bicubic (SR3), jpeg75 / jpeg50 (it saved as JPEG), noise5 (Gaussian "
        "sigma 5/255 added), realistic (the second-order chain), ...; random ones are seeded "
        "by the image's index",
    )
    parser.add_argument(
        "--color-fix",
        default="none",
        choices=COLOR_FIXES,
        help="colour-correct the model's output against its input before scoring",
    )
    parser.add_argument("--steps", type=int, help="default: the stage's default run's")
    parser.add_argument(
        "--sampler", choices=SAMPLER_NAMES, help="default: the stage's default run's"
    )
    parser.add_argument(
        "--fidelity",
        type=float,
        help="0 (full sample) .. 1 (most faithful); default: the stage's default. Fidelity 1 "
        "is always scored too",
    )
    parser.add_argument(
        "--low-band",
        choices=LOW_BANDS,
        help="where the frequencies the input carries come from: estimate (fidelity 1's "
        "output) or sample (default: the stage's default)",
    )
    parser.add_argument(
        "--student",
        help="a distilled student of the checkpoint (`cascade distill`), run by --sampler "
        "student (default: NAME.student.safetensors beside the checkpoint, if there is one)",
    )
    parser.add_argument(
        "--preclean",
        help="the JPEG pre-clean (`cascade train-deblock`) the model's JPEG inputs pass "
        "through, or 'none' (default: deblock.safetensors beside the checkpoint, if there is one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="evaluate at most N images")
    parser.add_argument("--out", default="runs/eval")
    parser.add_argument(
        "--crop", type=int, help="evaluate center crops of this size (default: stage output size)"
    )
    parser.add_argument(
        "--hold-out",
        type=int,
        default=0,
        help="evaluate only the last N images (sorted by path), those "
        "`cascade train --hold-out N` left out",
    )
    parser.add_argument("--device", default="cpu")


def main(args: argparse.Namespace) -> None:
    """`cascade eval`: an upscaler against bicubic on a folder of ground-truth images."""
    from tqdm import tqdm

    source = args.checkpoint or default_weights()[args.stage]
    model = load(source, args.device)
    if model.spec.task != "upscale":
        raise ValueError(f"{source} is not an upscaler ({model.spec.task})")
    if model.random_weights:
        print(f"note: {model.id} has random weights: the numbers say nothing about a trained model")
    size = getattr(args, "crop", None) or STAGE_OUTPUT[args.stage]
    if size % model.spec.scale:
        raise ValueError(f"size {size} is not a multiple of the scale {model.spec.scale}")
    paths = find_images(args.data)
    hold_out = getattr(args, "hold_out", 0)
    if hold_out:  # the images `cascade train --hold-out N` left out: the last N by path
        paths = paths[-hold_out:]
    images, names = load_targets(paths, size)
    if args.limit is not None:
        images, names = images[: args.limit], names[: args.limit]
    if not images:
        raise ValueError(
            f"no usable ground-truth images in {args.data} ({len(paths)} image files, "
            f"need readable images of at least {size}x{size})"
        )
    stage = Stage(args.stage, model)
    # The student and pre-clean named, else those shipped beside the weights (as the service
    # loads them).
    attach_beside(
        stage,
        source,
        args.device,
        getattr(args, "student", None),
        getattr(args, "preclean", None),
    )
    default = DEFAULT_RUNS[args.stage]
    steps = args.steps or default.steps
    run = stage.effective(
        StageRun(
            run_sampler(args.sampler, default.sampler, steps),  # as a request's are resolved
            steps,
            fidelity=getattr(args, "fidelity", None),
            low_band=getattr(args, "low_band", None),
        )
    )
    color_fix = getattr(args, "color_fix", "none")
    degradation = getattr(args, "degradation", "bicubic")
    results = []
    for index, (image, name) in enumerate(
        tqdm(list(zip(images, names, strict=True)), desc="eval", unit="image")
    ):
        results.append(
            evaluate_image(
                stage, image, name, args.seed + index, run, color_fix, degradation, index
            )
        )
    report = {
        "stage": args.stage,
        "checkpoint": model.id,
        "sampler": run.sampler,
        "steps": run.steps,
        "fidelity": run.fidelity,
        "low_band": run.low_band,
        "color_fix": color_fix,
        "degradation": degradation,
        # The model's JPEG inputs pass through this pre-clean first (None: inputs as given).
        "preclean": stage.deblocker_weights if file_jpeg_quality(degradation) else None,
        "fidelity1_views": len(DIHEDRAL),  # fidelity 1 self-ensembles its input's views
        "seed": args.seed,
        "size": size,
        **summarize(results),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Identical images have infinite PSNR: written as JSON's non-standard `Infinity`.
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    save_png(grid(results[:GRID_ROWS]), out / "grid.png")
    print(format_table(report))
    mean = report["mean"]
    for method in ("lanczos", "model", "fidelity1"):
        gain = mean[method]["psnr"] - mean["bicubic"]["psnr"]  # type: ignore[index]
        if math.isfinite(gain):
            print(f"{method} - bicubic PSNR: {gain:+.2f} dB")
    print(f"wrote {out / 'eval.json'}, {out / 'grid.png'}")
