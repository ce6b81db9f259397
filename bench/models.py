"""Benchmarks of the core: network forward latency (against the reference code's way),
batch scaling, tiled memory; quality against steps and time is `bench.quality`.

Every comparison is measured side by side in one run (the machine may be shared and noisy);
the service-level figures (HTTP + Redis overhead, throughput) live in `bench.main`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from cascade.checkpoints import Model, load
from cascade.pipeline import Stage

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


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s (MFU's denominator), where the data sheet is known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def nhwc_inputs(args: tuple) -> tuple:
    """The 4-D tensors among a forward's arguments in channels-last memory, the rest as given."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, Tensor) and a.ndim == 4
        else a
        for a in args
    )


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


def _interleaved(
    cases: dict[str, tuple[Callable[[], None], Callable[[], object]]],
    device: torch.device,
    repeats: int,
) -> dict[str, float]:
    """Median seconds per call of each case, timed in alternation (a drifting load shifts
    them all alike); each case's setup (its layout, say) runs before each of its calls."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for setup, fn in cases.values():  # warm-up
        setup()
        fn()
    for _ in range(repeats):
        for name, (setup, fn) in cases.items():
            setup()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _forward_case(
    preset: str,
    size: int,
    device: torch.device,
    repeats: int,
    batch: int,
    precision: str,
    compile_variant: bool = False,
) -> dict:
    """One preset at one size, same weights and inputs: the reference code's way (eager
    float32, NCHW, its einsum attention), ours in plain eager, and the service's fast path;
    on the CPU also each fast-path option alone (channels-last; torch.compile when asked)."""
    from bench.reference import reference_forward

    model = load(f"preset:{preset}", device)
    args = _inputs(model, size, batch, device)
    network = model.network
    stage = Stage(preset, model, precision=precision)

    def nchw() -> None:
        network.to(memory_format=torch.contiguous_format)

    def nhwc() -> None:
        network.to(memory_format=torch.channels_last)

    def eager() -> Tensor:
        with torch.no_grad():
            return network(*args)

    def reference() -> Tensor:
        with torch.no_grad(), reference_forward():
            return network(*args)

    def channels_last() -> Tensor:
        with torch.inference_mode():
            return network(*args)

    fast_args = args
    if stage._reduced_precision():  # bf16/fp16 kernels want NHWC inputs too
        fast_args = nhwc_inputs(args)

    def fast() -> Tensor:
        with torch.inference_mode(), stage._autocast():
            return network(*fast_args)

    # Plain float32 means no TF32 either (cuDNN enables it for convolutions by default).
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    def plain(layout: Callable[[], None]) -> Callable[[], None]:
        def setup() -> None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            layout()

        return setup

    def fast_path() -> None:  # the service's fast path, as the workers run it
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        nchw()
        stage.optimize()
        if stage._reduced_precision():
            network.to(memory_format=torch.channels_last)

    cases = {"reference": (plain(nchw), reference), "eager": (plain(nchw), eager)}
    if device.type == "cpu":
        cases["channels_last"] = (plain(nhwc), channels_last)
    cases["fast"] = (fast_path, fast)
    try:
        times = _interleaved(cases, device, repeats)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    fast_s = times["fast"]
    variants = {name: times[name] * 1e3 for name in ("channels_last",) if name in times}
    if compile_variant:
        variants.update(_compiled_ms(network, args, device, repeats))
    flops = forward_flops(model, size) * batch
    entry = {
        "size": size,
        "batch": batch,
        "reference_ms": times["reference"] * 1e3,
        "eager_ms": times["eager"] * 1e3,
        "fast_ms": fast_s * 1e3,
        "speedup": times["eager"] / fast_s,
        "vs_reference": times["reference"] / fast_s,
        "variants_ms": variants,
        "gflops": flops / 1e9,
        "fast_tflops_per_s": flops / fast_s / 1e12,
    }
    if peak := peak_flops(device):
        entry["mfu"] = flops / fast_s / peak
    return entry


def _compiled_ms(
    network: torch.nn.Module, args: tuple, device: torch.device, repeats: int
) -> dict[str, float]:
    """torch.compile (inductor) of the NCHW network: its first call's seconds and then ms."""
    network.to(memory_format=torch.contiguous_format)
    torch._dynamo.reset()
    compiled = torch.compile(network, dynamic=False)

    def call() -> Tensor:
        with torch.inference_mode():
            return compiled(*args)

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    return {"compile": _time(call, device, repeats) * 1e3, "compile_first_call_s": first}


def forward_latency(
    cases: Sequence[tuple[str, int]],
    device: str = "cpu",
    repeats: int = 5,
    batch: int = 1,
    precision: str = "float32",
    compile_variant: bool = False,
) -> dict[str, dict[str, float]]:
    """Per preset and size, one run: the reference-equivalent eager forward, our plain eager
    (no_grad, TF32 off), and the fast path (inference_mode, channels-last on the CPU, TF32 on
    CUDA; bf16 autocast and NHWC when `precision` asks), plus the options measured alone."""
    results: dict[str, dict[str, float]] = {}
    for preset, size in cases:
        results[preset] = _forward_case(
            preset, size, torch.device(device), repeats, batch, precision, compile_variant
        )
        log.info("forward %s @%d: %s", preset, size, json.dumps(results[preset]))
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def batch_scaling(
    source: str, batches: Sequence[int] = (1, 8), threads: Sequence[int] = (1, 2), repeats: int = 7
) -> dict[str, dict[str, float]]:
    """Milliseconds per item of one denoiser forward of `source` (the base) at each batch size
    and thread count, on the CPU, the batch sizes timed in alternation: what cross-request
    batching can gain at best (the service's other work only adds to the per-job time)."""
    model = load(source, "cpu")
    stage = Stage("base64", model).optimize()
    size = model.spec.image_size
    saved = torch.get_num_threads()
    table: dict[str, dict[str, float]] = {}

    def forward(args: tuple) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode():
                return model.network(*args)

        return call

    try:
        for count in threads:
            torch.set_num_threads(count)
            cases = {
                str(batch): (lambda: None, forward(_inputs(model, size, batch, stage.device)))
                for batch in batches
            }
            times = _interleaved(cases, stage.device, repeats)
            row = {str(batch): times[str(batch)] * 1e3 / batch for batch in batches}
            row["gain"] = row[str(batches[0])] / row[str(batches[-1])]
            table[f"threads_{count}"] = row
            log.info("batch scaling, %d thread(s): %s", count, json.dumps(row))
    finally:
        torch.set_num_threads(saved)
    return table


def held_out_images(folder: str | Path, size: int, limit: int) -> list[Tensor]:
    """Center crops of the held-out photos at the stage's output size: the first `limit` image
    files under `folder`, subfolders included (the demo's Debian photos sit in one per package),
    by path, those at least `size` on each side."""
    from cascade.datasets import find_images
    from cascade.images import load_image

    crops = []
    for path in find_images(folder)[:limit]:
        with contextlib.suppress(OSError):
            image = load_image(path)
            h, w = image.shape[-2:]
            if min(h, w) >= size:
                top, left = (h - size) // 2, (w - size) // 2
                crops.append(image[..., top : top + size, left : left + size])
    return crops
