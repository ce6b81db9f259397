"""The model card's grid: per held-out photo and input kind (clean, JPEG, ...), a row of input
(nearest-upsampled), bicubic, the default, fidelity 1 and ground truth, and under it the same
columns' 3x zoom of the photo's most detailed window (the ground truth's highest fine-band
energy), so a face's or a texture's detail can be judged beside bicubic's blur.

    python -m bench.card_grid weights/demo/sr256.safetensors --data DEMO/sr/holdout \
        --degradations bicubic jpeg75 --out docs/upscale-holdout-sr256.png
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from cascade.checkpoints import load
from cascade.datasets import find_images
from cascade.degradations import DEGRADATIONS
from cascade.evaluation import ImageResult, evaluate_image, load_targets
from cascade.images import tensor_to_image
from cascade.pipeline import Stage, attach_beside
from cascade.stages import DEFAULT_RUNS, STAGE_OUTPUT, run_sampler

log = logging.getLogger(__name__)

ZOOM = 3
COLUMNS = ("input", "bicubic", "default", "fidelity 1", "ground truth")
LABEL_HEIGHT = 14
GAP = 4  # white pixels between rows of different photos or inputs
INPUTS = {"bicubic": "clean", "jpeg75": "JPEG q75", "jpeg50": "JPEG q50", "noise5": "noisy"}


def detail_window(target: Tensor, side: int) -> tuple[int, int]:
    """Top-left (y, x) of the `side`-pixel window with the most fine-band energy in a CHW image
    in [-1, 1]: the luma minus its 5x5 box blur, squared, summed over the window."""
    luma = (target * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)[None, None]
    fine = luma - F.avg_pool2d(F.pad(luma, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    stride = max(1, side // 4)
    energy = F.avg_pool2d(fine.square(), side, stride=stride)
    row, column = divmod(int(energy.flatten().argmax()), energy.shape[-1])
    return row * stride, column * stride


def zoom(image: Tensor, top: int, left: int, side: int, size: int) -> Tensor:
    """The window, enlarged ZOOM times by nearest neighbour, padded white to `size`."""
    window = image[:, top : top + side, left : left + side]
    big = window.repeat_interleave(ZOOM, -1).repeat_interleave(ZOOM, -2)
    pad = size - big.shape[-1]
    return F.pad(big, (0, pad, 0, pad), value=1.0)


def result_rows(result: ImageResult) -> Tensor:
    """The full row and the zoom row of one evaluated photo (CHW, [-1, 1])."""
    size = result.target.shape[-1]
    nearest = F.interpolate(result.low_res[None], size=result.target.shape[-2:], mode="nearest")
    panels = [
        nearest[0],
        result.outputs["bicubic"],
        result.outputs["model"],
        result.outputs["fidelity1"],
        result.target,
    ]
    side = size // ZOOM
    top, left = detail_window(result.target, side)
    zoomed = [zoom(panel, top, left, side, size) for panel in panels]
    return torch.cat([torch.cat(panels, -1), torch.cat(zoomed, -1)], -2)


def labelled(rows: Tensor, label: str) -> np.ndarray:
    """HWC uint8 of the rows under a one-line label."""
    image = tensor_to_image(rows)
    canvas = Image.new("RGB", (image.width, image.height + LABEL_HEIGHT), "white")
    canvas.paste(image, (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
    return np.asarray(canvas)


def card_grid(results: Sequence[tuple[str, ImageResult]]) -> Image.Image:
    """(input kind, result) pairs stacked, each labelled with its photo, its input and the
    columns."""
    blocks = []
    for kind, result in results:
        label = f"{Path(result.name).name}, {INPUTS.get(kind, kind)} input: " + ", ".join(COLUMNS)
        blocks.append(labelled(result_rows(result), label))
        blocks.append(np.full((GAP, blocks[-1].shape[1], 3), 255, np.uint8))
    return Image.fromarray(np.concatenate(blocks[:-1]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="folder of held-out ground-truth photos")
    parser.add_argument("--stage", choices=list(STAGE_OUTPUT), help="default: the checkpoint's")
    parser.add_argument(
        "--degradations", nargs="+", default=["bicubic", "jpeg75"], choices=list(DEGRADATIONS)
    )
    parser.add_argument("--crop", type=int, help="center crop size (default: the stage's output)")
    parser.add_argument("--limit", type=int, help="at most N photos")
    parser.add_argument("--steps", type=int, help="default: the stage's default run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = load(args.checkpoint)
    by_size = {size: name for name, size in STAGE_OUTPUT.items() if name != "base64"}
    stage_name = args.stage or by_size.get(model.spec.image_size)
    if stage_name is None:
        upscalers = "/".join(by_size.values())
        parser.error(f"{args.checkpoint} is not an {upscalers} upscaler: give --stage")
    stage = attach_beside(Stage(stage_name, model), args.checkpoint, "cpu")  # as the service has it
    default = DEFAULT_RUNS[stage_name]
    steps = args.steps or default.steps
    sampler = run_sampler(None, default.sampler, steps)
    run = stage.effective(dataclasses.replace(default, sampler=sampler, steps=steps))
    images, names = load_targets(find_images(args.data), args.crop or STAGE_OUTPUT[stage_name])
    images, names = images[: args.limit], names[: args.limit]
    if not images:
        parser.error(f"no photos of at least the crop size in {args.data}")
    results = []
    # The same seeds as `cascade eval`: photo i is degraded with seed i and sampled with seed+i.
    for index, (image, name) in enumerate(zip(images, names, strict=True)):
        for kind in args.degradations:
            result = evaluate_image(stage, image, name, args.seed + index, run, "none", kind, index)
            results.append((kind, result))
            log.info(
                "%s %s: default %.2f dB, bicubic %.2f dB",
                Path(name).name,
                kind,
                result.metrics["model"]["psnr"],
                result.metrics["bicubic"]["psnr"],
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    card_grid(results).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
