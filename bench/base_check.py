"""Does the base ever give a flat image, and does it draw the class asked for? N seeds per known
class, through each sampler and step count, counting images whose per-image std (in [-1, 1]
units) is at most a threshold; with `--data`, each sample's nearest training crop
(`cascade.recognition`) and the share of samples whose nearest crop is of the asked class.

    python -m bench.base_check weights/demo/base64.safetensors --seeds 64 --json out.json
    python -m bench.base_check weights/demo/base64.safetensors --seeds 16 --runs default \
        --data DEMO/base --grid samples.png
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from cascade.checkpoints import load
from cascade.datasets import load_class_folder
from cascade.images import save_png
from cascade.pipeline import Stage
from cascade.recognition import CropBank, class_recall
from cascade.stages import DEFAULT_RUNS, StageRun

log = logging.getLogger(__name__)
FLAT_STD = 0.05


def samples(
    stage: Stage, classes: list[int], seeds: int, run: StageRun | None, batch: int = 64
) -> tuple[list[int], torch.Tensor, float]:
    """`seeds` samples of each class (class-major), the asked class of each, and the seconds."""
    items = [(class_id, seed) for class_id in classes for seed in range(seeds)]
    started = time.perf_counter()
    images = [
        stage.run(seeds=[s for _, s in chunk], class_ids=[c for c, _ in chunk], run=run)
        for chunk in (items[start : start + batch] for start in range(0, len(items), batch))
    ]
    return [c for c, _ in items], torch.cat(images), time.perf_counter() - started


def check_run(
    stage: Stage,
    classes: list[int],
    seeds: int,
    run: StageRun | None,
    crops: CropBank | None = None,
    grid: Path | None = None,
) -> dict[str, object]:
    """Per-image std of `seeds` samples of each class; how many fall at or below FLAT_STD;
    with `crops`, the class recall of the samples; with `grid`, the samples as a PNG (a row
    per class)."""
    asked, images, seconds = samples(stage, classes, seeds, run)
    stds = images.flatten(1).std(dim=1).tolist()
    run = run or stage.defaults
    result: dict[str, object] = {
        "sampler": run.sampler,
        "steps": run.steps,
        "images": len(stds),
        "flat": sum(std <= FLAT_STD for std in stds),
        "min_std": min(stds),
        "median_std": sorted(stds)[len(stds) // 2],
        "seconds": seconds,
    }
    if crops is not None:
        result["class_recall"] = class_recall(asked, images, crops)
    if grid is not None:  # a row of `seeds` samples per class
        rows = [torch.cat(list(row), dim=-1) for row in images.split(seeds)]
        save_png(torch.cat(rows, dim=-2), grid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, default=64, help="seeds per class")
    parser.add_argument(
        "--runs",
        default="ddim:20,dpmpp_2m:20,ddim:50,dpmpp_2m:50",
        help="SAMPLER:STEPS,... ('default': the service's default run for base64)",
    )
    parser.add_argument("--data", help="the training folder (one folder per class): class recall")
    parser.add_argument("--grid", help="write the last run's samples here (PNG, a row per class)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)
    model = load(args.checkpoint)
    classes = list(model.spec.classes) or list(range(1000))
    stage = Stage("base64", model, DEFAULT_RUNS["base64"])
    crops = None
    if args.data:
        crops = CropBank.from_bank(
            load_class_folder(args.data, model.spec.image_size), model.spec.image_size
        )
    results = []
    items = args.runs.split(",")
    for number, item in enumerate(items):
        run = None
        if item != "default":
            sampler, steps = item.split(":")
            run = StageRun(sampler, int(steps))  # type: ignore[arg-type]
        grid = Path(args.grid) if args.grid and number == len(items) - 1 else None
        result = check_run(stage, classes, args.seeds, run, crops, grid)
        log.info("%s", json.dumps(result))
        results.append(result)
    report = {"checkpoint": args.checkpoint, "classes": classes, "seeds_per_class": args.seeds}
    report["runs"] = results
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
