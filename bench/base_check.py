"""Does the base ever give a flat image? N seeds per known class, through each sampler and step
count, counting images whose per-image std (in [-1, 1] units) is at most a threshold.

    python -m bench.base_check weights/demo/base64.safetensors --seeds 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from cascade.checkpoints import load
from cascade.pipeline import Stage
from cascade.stages import StageRun

log = logging.getLogger(__name__)
FLAT_STD = 0.05


def flat_images(
    stage: Stage, classes: list[int], seeds: int, run: StageRun, batch: int = 64
) -> dict[str, object]:
    """Per-image std of `seeds` samples of each class; how many fall at or below FLAT_STD."""
    stds: list[float] = []
    items = [(class_id, seed) for class_id in classes for seed in range(seeds)]
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = stage.run(
            seeds=[seed for _, seed in chunk], class_ids=[c for c, _ in chunk], run=run
        )
        stds += images.flatten(1).std(dim=1).tolist()
    flat = sum(std <= FLAT_STD for std in stds)
    return {
        "sampler": run.sampler,
        "steps": run.steps,
        "images": len(stds),
        "flat": flat,
        "min_std": min(stds),
        "median_std": sorted(stds)[len(stds) // 2],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, default=64, help="seeds per class")
    parser.add_argument("--runs", default="ddim:20,dpmpp_2m:20,ddim:50,dpmpp_2m:50")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)
    model = load(args.checkpoint)
    classes = list(model.spec.classes) or list(range(1000))
    stage = Stage("base64", model)
    results = []
    for item in args.runs.split(","):
        sampler, steps = item.split(":")
        result = flat_images(stage, classes, args.seeds, StageRun(sampler, int(steps)))  # type: ignore[arg-type]
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
