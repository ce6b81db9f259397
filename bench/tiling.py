"""Tiled upscales: peak memory against output size, and whether tiles leave seams.

Memory: each size runs `cascade sample --upscale` itself, as shipped (the stage the input's
size picks, its default sampler, steps and fidelity unless `steps` says otherwise, the demo
weights unless `tiny`), in a fresh process whose own peak RSS (and CUDA peak allocation, on a
GPU) is the figure. The input is a photo resized to a quarter of the output side.

Seams: one photo upscaled as shipped, in the stage's tiles, against one window over the whole
image with the same position-keyed noise (what the tiles would be without tiling): PSNR of
both against the photo, PSNR between them, and the border gradient ratio at the tile edges of
both and of the photo itself (its own structure at those lines), and the tiled output's ratio
over the one window's (`border_excess`: 1, no seam the tiles add).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

log = logging.getLogger(__name__)

SEAM_SIZE = 512  # output side of the seam check: a 128 px input, the sr256 stage's 256 px tiles


def photo(side: int) -> Image.Image:
    """scikit-image's astronaut photo resized to `side` (a stand-in for any photo)."""
    return Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)


def _weights(stage: str, tiny: bool) -> list[str]:
    return ["--weights", f"{stage}=preset:{stage}-tiny"] if tiny else []


def _child(argv: list[str], device: str) -> None:
    """Run the command line in this (fresh) process, then print its peak memory as JSON."""
    from cascade.cli import main

    main(argv)
    peak: dict[str, float] = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    }
    if device == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


def upscale_memory(
    sizes: Sequence[int], steps: int | None, device: str, tiny: bool
) -> dict[str, dict[str, float]]:
    """Peak memory of a 4x command-line upscale per output side (fresh process each)."""
    from cascade.stages import upscale_stages

    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            source = Path(scratch) / f"input{size}.png"
            photo(size // 4).save(source)
            stage = upscale_stages(size // 4, size // 4, 4)[0]
            argv = ["sample", "--upscale", str(source), "--seed", "0", "--device", device]
            argv += ["--out", str(Path(scratch) / f"out{size}")] + _weights(stage, tiny)
            if steps:
                argv += ["--steps", str(steps)]
            code = f"from bench.tiling import _child; _child({argv!r}, {device!r})"
            done = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            )
            peak = json.loads(done.stdout.strip().splitlines()[-1])
            figures[str(size)] = {"stage": stage, **peak}  # type: ignore[dict-item]
            log.info("upscale to %d px (%s): %s", size, stage, json.dumps(peak))
    first = figures[str(sizes[0])]["peak_rss_mb"]
    for entry in figures.values():
        entry["rss_ratio"] = entry["peak_rss_mb"] / first
    return figures


def seams(device: str, tiny: bool, steps: int | None) -> dict[str, object]:
    """The seam check on one photo (module docstring), with the stage's default run."""
    import dataclasses

    from cascade.checkpoints import load
    from cascade.degradations import bicubic_degrade
    from cascade.images import image_to_tensor
    from cascade.metrics import border_gradient_ratio, psnr
    from cascade.pipeline import Stage, default_weights
    from cascade.stages import DEFAULT_RUNS, upscale_stages
    from cascade.tiled_upscale import tiled_upscale
    from cascade.tiling import axis_windows, tile_edges

    target = image_to_tensor(photo(SEAM_SIZE)).to(device)
    low = bicubic_degrade(target, 4)
    name = upscale_stages(*low.shape[-2:], 4)[0]
    source = f"preset:{name}-tiny" if tiny else default_weights()[name]
    stage = Stage(name, load(source, device), DEFAULT_RUNS[name]).optimize()
    run = dataclasses.replace(stage.defaults, steps=steps) if steps else None
    tiled = tiled_upscale(stage, low, [0], run=run)
    whole = tiled_upscale(stage, low, [0], run=run, tile=SEAM_SIZE)
    assert isinstance(tiled, torch.Tensor) and isinstance(whole, torch.Tensor)
    edges = tile_edges(axis_windows(SEAM_SIZE, stage.output_size, stage.scale))
    target = target.cpu()
    figures = {
        "stage": name,
        "weights": source,
        "size": SEAM_SIZE,
        "tile": stage.output_size,
        "edges": edges,
        "psnr_tiled": psnr(tiled, target),
        "psnr_untiled": psnr(whole, target),
        "psnr_between": psnr(tiled, whole),
        "border_ratio_tiled": border_gradient_ratio(tiled[0], edges, edges),
        "border_ratio_untiled": border_gradient_ratio(whole[0], edges, edges),
        # The photo's own structure at those lines: what a seamless output is expected to show.
        "border_ratio_photo": border_gradient_ratio(target[0], edges, edges),
    }
    figures["border_excess"] = figures["border_ratio_tiled"] / figures["border_ratio_untiled"]
    figures["psnr_gap"] = float(np.abs(figures["psnr_tiled"] - figures["psnr_untiled"]))
    log.info("tile seams: %s", json.dumps(figures))
    return figures
