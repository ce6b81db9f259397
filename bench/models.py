"""Benchmarks of the core: network forward latency, sampler quality vs steps, tiled memory.

Every comparison is measured side by side in one run (the machine may be shared and noisy);
the service-level figures (HTTP + Redis overhead, throughput) live in `bench.main`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from cascade.checkpoints import Model, load
from cascade.degradations import bicubic_degrade
from cascade.metrics import psnr
from cascade.pipeline import Stage
from cascade.samplers import SAMPLERS
from cascade.stages import StageRun

log = logging.getLogger(__name__)

# Peak dense bf16 tensor throughput (FLOP/s) for MFU, from NVIDIA's data sheets.
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(model: Model, size: int, batch: int, device: torch.device) -> tuple:
    spec = model.spec
    if spec.family == "sr3":
        x = torch.randn(batch, spec.network.in_channels, size, size, device=device)
        return (x, torch.rand(batch, 1, device=device), None)
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    kwargs_y = torch.randint(0, 1000, (batch,), device=device)
    if spec.network.super_resolution:
        low = torch.randn(batch, 3, size // spec.scale, size // spec.scale, device=device)
        return (x, t, kwargs_y, low)
    return (x, t, kwargs_y)


def forward_flops(model: Model, size: int) -> float:
    """FLOPs of one batch-1 forward (torch's FlopCounterMode, meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        network = model.spec.build()
        args = _inputs(model, size, 1, torch.device("meta"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(*args)
    return float(counter.get_total_flops())


def _forward_case(
    preset: str, size: int, device: torch.device, repeats: int, batch: int, precision: str
) -> dict:
    """One preset at one size: plain eager float32, then the fast path, same weights."""
    model = load(f"preset:{preset}", device)
    args = _inputs(model, size, batch, device)
    network = model.network

    def eager() -> Tensor:
        with torch.no_grad():
            return network(*args)

    # Plain float32 means no TF32 either (cuDNN enables it for convolutions by default).
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        eager_s = _time(eager, device, repeats)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    stage = Stage(preset, model, precision=precision).optimize()
    fast_args = tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, Tensor) and a.ndim == 4 and stage._reduced_precision()
        else a
        for a in args
    )
    if stage._reduced_precision():
        network.to(memory_format=torch.channels_last)

    def fast() -> Tensor:
        with torch.inference_mode(), stage._autocast():
            return network(*fast_args)

    fast_s = _time(fast, device, repeats)
    flops = forward_flops(model, size) * batch
    entry = {
        "size": size,
        "batch": batch,
        "eager_ms": eager_s * 1e3,
        "fast_ms": fast_s * 1e3,
        "speedup": eager_s / fast_s,
        "gflops": flops / 1e9,
        "fast_tflops_per_s": flops / fast_s / 1e12,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            entry["mfu"] = flops / fast_s / peak
    return entry


def forward_latency(
    cases: Sequence[tuple[str, int]],
    device: str = "cpu",
    repeats: int = 5,
    batch: int = 1,
    precision: str = "float32",
) -> dict[str, dict[str, float]]:
    """Per preset and size: plain eager float32 (no_grad, TF32 off) vs the fast path
    (inference_mode, TF32; bf16 autocast and NHWC when `precision` asks), one run."""
    results: dict[str, dict[str, float]] = {}
    for preset, size in cases:
        results[preset] = _forward_case(
            preset, size, torch.device(device), repeats, batch, precision
        )
        log.info("forward %s @%d: %s", preset, size, json.dumps(results[preset]))
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def sampler_quality(
    stage: Stage,
    images: Sequence[Tensor],
    steps: Sequence[int] = (5, 10, 20, 50, 100, 250),
    reference_steps: int = 1000,
    samplers: Sequence[str] = tuple(SAMPLERS),
    seed: int = 0,
) -> dict[str, object]:
    """Mean PSNR vs ground truth of each sampler per step count, beside `reference_steps`-step
    ancestral sampling (the reference code's way, respaced from its 2000 training steps)."""
    scale = stage.scale

    def mean_psnr(settings: StageRun) -> float:
        values = []
        for index, hr in enumerate(images):
            low = bicubic_degrade(hr, scale)
            out = stage.run(seeds=[seed + index], low_res=low, run=settings)
            values.append(psnr(out[0], hr[0]))
        return sum(values) / len(values)

    reference = mean_psnr(StageRun("ancestral", reference_steps))
    table: dict[str, dict[str, object]] = {}
    for name in samplers:
        curve = {str(n): mean_psnr(StageRun(name, n)) for n in steps}
        within = [n for n in steps if curve[str(n)] >= reference - 0.1]
        table[name] = {"psnr": curve, "steps_within_0.1db": min(within) if within else None}
        log.info("sampler %s: %s", name, json.dumps(table[name]))
    return {
        "reference": {"sampler": "ancestral", "steps": reference_steps, "psnr": reference},
        "samplers": table,
    }


def _tiled_upscale_child(size: int, steps: int, device: str) -> None:
    """Run one tiled upscale to `size` and print peak memory (run in a fresh process)."""
    stage = Stage("sr256", load("preset:sr256-tiny", device), StageRun("ddim", steps))
    low = torch.rand(1, 3, size // 4, size // 4, device=device) * 2 - 1
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stage.run(seeds=[0], low_res=low)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"size": size, "peak_mb": peak_mb}))


def tiled_upscale_memory(
    sizes: Sequence[int] = (1024, 2048, 4096), steps: int = 2, device: str = "cpu"
) -> dict[str, float]:
    """Peak memory (RSS on CPU, allocated on CUDA) of a tiled upscale per output size."""
    peaks = {}
    for size in sizes:
        code = (
            "from bench.models import _tiled_upscale_child;"
            f"_tiled_upscale_child({size}, {steps}, {device!r})"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        peaks[str(size)] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        log.info("tiled upscale to %d: peak %.0f MB", size, peaks[str(size)])
    return peaks


def held_out_images(folder: str | Path, size: int, limit: int) -> list[Tensor]:
    """Center crops of the held-out photos at the stage's output size."""
    from cascade.images import load_image

    crops = []
    for path in sorted(Path(folder).iterdir())[:limit]:
        with contextlib.suppress(OSError):
            image = load_image(path)
            h, w = image.shape[-2:]
            if min(h, w) >= size:
                top, left = (h - size) // 2, (w - size) // 2
                crops.append(image[..., top : top + size, left : left + size])
    return crops
