"""`cascade bench`: the whole benchmark suite, one JSON file, its report and plot.

The core figures come from `bench.models` (network forward latency, sampler quality against
step count, tiled-upscale memory), the service's from `bench.service` (overhead of HTTP,
Redis and a worker on one job; throughput with one or two workers and with batching), and what
live previews add to a stage's time from `bench.previews`. The JSON keeps the same names from
run to run so runs compare over time; `bench.report` writes its markdown, its plot and
BENCHMARKS.md. Comparisons are measured side by side in one run, since the machine may be
shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.models import batch_scaling, forward_latency, held_out_images
from bench.previews import PREVIEWS, preview_cost
from bench.quality import (
    generation_time_to_quality,
    sampler_quality,
    sr1024_upscale_seconds,
    upscale_time_to_quality,
)
from bench.report import SECTIONS, write_reports
from bench.service import SAMPLER, overhead, service, throughput
from bench.tiling import seams, upscale_memory
from cascade.checkpoints import load
from cascade.pipeline import DEFAULT_WEIGHTS, DEMO_WEIGHTS, Stage, default_weights, student_source

log = logging.getLogger(__name__)

Results = dict[str, Any]  # the JSON: machine, command, setup, then one entry per section


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures; `full(device)` and `QUICK` are the command line's two sizes."""

    mode: str  # "full" numbers are the ones to compare; anything else is labelled as not
    forward_cases: tuple[tuple[str, int], ...]
    forward_repeats: int
    sampler_steps: tuple[int, ...]
    reference_steps: int  # ancestral steps of the reference PSNR
    sampler_images: int  # held-out photos (the scikit-image ones unless --data says)
    sampler_crop: int  # side of the centre crop each is scored on (upscaled from a quarter)
    service_steps: tuple[int, int]  # base64, sr256 steps of the timed 256 px generation
    service_repeats: int
    throughput_jobs: int
    throughput_steps: int
    max_batch: int  # the batched throughput configuration's CASCADE_MAX_BATCH
    tiling_sizes: tuple[int, ...]  # output sides of the 4x upscales whose memory is measured
    tiling_steps: int | None  # None: the stage's default steps (the upscale as shipped)
    ttq_images: int = 2  # held-out photos the upscale's time-to-quality runs on
    ttq_crop: int = 128
    ttq_reference_steps: int = 2000  # the reference algorithm's ancestral steps
    ttq_seeds: tuple[int, ...] = (0,)  # 256 px generations timed each way
    ttq_sr1024_size: int = 1024  # the sr1024 upscale timed (output side; 256 -> 1024 native)
    compile_variant: bool = False  # also time torch.compile in the forward table (slow start)
    scaling_batches: tuple[int, ...] = (1, 8)
    scaling_threads: tuple[int, ...] = (1, 2)
    tiny: bool = False  # tiny random presets everywhere instead of the demo weights (tests)
    tiling_tiny: bool = False  # tiny presets for the tiling part only
    preview_repeats: int = 3  # generations timed each way (previews on, off): a median of 3


def full(device: str) -> BenchConfig:
    """The comparable run: about 23 minutes on an idle 2-core CPU (most of it the samplers'
    2 x 2,740 network calls), a few on a GPU. `--only`/`--skip` run parts of it separately."""
    cuda = device == "cuda"
    small = (("base64-small", 64), ("sr256-small", 256), ("sr1024-small", 1024))
    native = (("base64", 64), ("sr256", 256), ("sr1024", 1024))
    return BenchConfig(
        mode="full",
        forward_cases=small + native if cuda else small,
        forward_repeats=20 if cuda else 5,
        sampler_steps=(5, 10, 20, 50, 100, 200),
        reference_steps=1000,
        sampler_images=2,  # both held-out demo photos
        sampler_crop=256 if cuda else 128,
        service_steps=(50, 20),  # the service's default steps per stage
        service_repeats=5,  # alternated runs each way: medians of 5
        throughput_jobs=32 if cuda else 16,
        throughput_steps=20 if cuda else 10,
        max_batch=8,
        tiling_sizes=(1024, 2048, 4096, 8192),
        # Peak memory is reached within a tile's first step (each tile runs the same sampler on
        # the same size); a GPU runs the default steps, a CPU one step (121 tiles at 8192 px).
        tiling_steps=None if cuda else 1,
        ttq_images=2,
        ttq_crop=256 if cuda else 128,
        ttq_seeds=(0, 1) if cuda else (0,),
        compile_variant=True,
        preview_repeats=5,  # a few per cent, measured on a machine that may be shared
    )


# A few minutes on a 2-core CPU, to see that everything runs: tiny networks for the forward
# figures, fewer steps and jobs elsewhere. Its report says it is not comparable with full runs.
QUICK = BenchConfig(
    mode="quick",
    forward_cases=(("base64-tiny", 64), ("sr256-tiny", 256), ("sr1024-tiny", 1024)),
    forward_repeats=3,
    sampler_steps=(5, 10, 20),
    reference_steps=100,
    sampler_images=1,
    sampler_crop=64,
    service_steps=(4, 2),
    service_repeats=2,
    throughput_jobs=8,
    throughput_steps=4,
    max_batch=8,
    tiling_sizes=(1024,),
    tiling_steps=1,
    ttq_images=1,
    ttq_crop=64,
    ttq_reference_steps=100,
    ttq_sr1024_size=256,
    scaling_batches=(1, 4),
)


def machine(device: str) -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") if Path("/proc/cpuinfo").is_file() else io.StringIO() as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu,
    }


def weights(config: BenchConfig) -> dict[str, str]:
    """The demo weights where present (else tiny random presets), or tiny presets throughout."""
    return dict(DEFAULT_WEIGHTS) if config.tiny else default_weights()


def bench_forward(config: BenchConfig, device: str) -> dict[str, object]:
    return forward_latency(
        config.forward_cases,
        device,
        config.forward_repeats,
        compile_variant=config.compile_variant and device == "cpu",
    )


def bench_time_to_quality(config: BenchConfig, device: str, data: str | None) -> dict[str, object]:
    """The reference algorithm vs the defaults: an sr256 upscale of held-out photos (with the
    student's one-call mode when the weights have one), a 256 px generation (base + sr256), and
    one sr1024 upscale at its native size, the default beside the 20-step run."""
    source = weights(config)
    with tempfile.TemporaryDirectory() as scratch:
        folder = data or _demo_holdout(Path(scratch))
        images = held_out_images(folder, config.ttq_crop, config.ttq_images)
        big = held_out_images(folder, config.ttq_sr1024_size, 10)[:1]
    if not images:
        raise ValueError(f"no image of at least {config.ttq_crop} px in {folder}")
    sr = load(source["sr256"], device)
    student_file = student_source(source["sr256"])
    student = load(student_file, device) if student_file else None
    upscale = upscale_time_to_quality(
        sr, [image.to(device) for image in images], config.ttq_reference_steps, student=student
    )
    base = load(source["base64"], device)
    generation = generation_time_to_quality(
        base,
        sr,
        config.ttq_seeds,
        class_id=0,
        reference_steps=config.ttq_reference_steps,
        student=student,
    )
    result = {"upscale": upscale, "generate256": generation}
    if big:
        result["upscale1024"] = sr1024_upscale_seconds(
            load(source["sr1024"], device), big[0].to(device)
        )
    return result


def bench_samplers(config: BenchConfig, device: str, data: str | None) -> dict[str, object]:
    """PSNR per sampler and step count of the sr256 stage on held-out photos."""
    source = weights(config)["sr256"]
    stage = Stage("sr256", load(source, device)).optimize()
    with tempfile.TemporaryDirectory() as scratch:
        folder = data or _demo_holdout(Path(scratch))
        images = held_out_images(folder, config.sampler_crop, config.sampler_images)
    if not images:
        raise ValueError(f"no image of at least {config.sampler_crop} px in {folder}")
    images = [image.to(device) for image in images]
    result = sampler_quality(stage, images, config.sampler_steps, config.reference_steps)
    reference = result["reference"]["psnr"]  # type: ignore[index]
    table = result["samplers"]
    return {name: {**entry, "reference_psnr": reference} for name, entry in table.items()}  # type: ignore[union-attr]


def _demo_holdout(scratch: Path) -> str:
    from cascade.demo import export_demo_data

    return str(export_demo_data(scratch)["sr_holdout"])


def bench_tiling(config: BenchConfig, device: str) -> dict[str, object]:
    tiny = config.tiny or config.tiling_tiny
    return {
        "memory": upscale_memory(config.tiling_sizes, config.tiling_steps, device, tiny),
        "seams": seams(device, tiny, None),  # the default steps: the image as shipped
    }


def shown(source: str) -> str:
    """A weights source as the report shows it: files of this repository by their path in it."""
    repository = DEMO_WEIGHTS.parents[1]
    path = Path(source)
    return str(path.relative_to(repository)) if path.is_relative_to(repository) else source


def setup(config: BenchConfig, device: str) -> dict[str, dict[str, object]]:
    """What each section measured, as its figures' context in the JSON."""
    source = {name: shown(value) for name, value in weights(config).items()}
    return {
        "forward": {"cases": [list(case) for case in config.forward_cases]},
        "samplers": {
            "stage": "sr256",
            "weights": source["sr256"],
            "steps": list(config.sampler_steps),
            "reference": {"sampler": "ancestral", "steps": config.reference_steps},
            "fidelity": 0.0,
            "low_band": "sample",
            "images": config.sampler_images,
            "crop": config.sampler_crop,
        },
        "time_to_quality": {
            "weights": {name: source[name] for name in ("base64", "sr256")},
            "reference": f"ancestral, {config.ttq_reference_steps} steps (base: at most its "
            "training steps), eager float32 NCHW, the reference's einsum attention, batch 1",
            "default": "each stage's default sampler, steps, fidelity and low band on the fast "
            "path",
            "images": config.ttq_images,
            "crop": config.ttq_crop,
            "seeds": list(config.ttq_seeds),
        },
        "service": {
            "request": f"256 px generation, {SAMPLER}, steps base64={config.service_steps[0]} "
            f"sr256={config.service_steps[1]}, wavelet colour fix",
            "weights": {name: source[name] for name in ("base64", "sr256")},
            "repeats": config.service_repeats,
        },
        "throughput": {
            "request": f"64 px generation, {config.throughput_steps} steps",
            "weights": source["base64"],
            "jobs": config.throughput_jobs,
            "max_batch": config.max_batch,
            "scaling": {
                "batches": list(config.scaling_batches),
                "threads": list(config.scaling_threads),
            },
        },
        "previews": {
            "request": f"256 px generation, {SAMPLER}, steps base64={config.service_steps[0]} "
            f"sr256={config.service_steps[1]}, each stage job run in this process",
            "weights": {name: source[name] for name in ("base64", "sr256")},
            "previews_per_stage": PREVIEWS,
            "repeats": config.preview_repeats,
        },
        "tiling": {
            "request": "cascade sample --upscale PHOTO (4x), a fresh process per size",
            "weights": "tiny presets" if config.tiny or config.tiling_tiny else "demo weights",
            "steps": config.tiling_steps or "the stage's default",
            "sizes": list(config.tiling_sizes),
            "measure": "peak process RSS"
            + (" and peak CUDA memory allocated" if device == "cuda" else ""),
        },
    }


def run(
    config: BenchConfig,
    device: str,
    sections: tuple[str, ...] = SECTIONS,
    data: str | None = None,
    command: str = "",
) -> Results:
    """Measure `sections` and return the results (the JSON's structure)."""
    date = datetime.now(UTC).isoformat(timespec="seconds")
    threads = torch.get_num_threads()  # kept per section: a later run may differ
    results: Results = {
        "command": command,
        "date": date,
        "mode": config.mode,
        "comparable": config.mode == "full",
        "machine": machine(device),
        "setup": {
            name: {**value, "date": date, "command": command, "torch_threads": threads}
            for name, value in setup(config, device).items()
            if name in sections
        },
    }
    if "forward" in sections:
        results["forward"] = bench_forward(config, device)
    if "samplers" in sections:
        results["samplers"] = bench_samplers(config, device, data)
    if "time_to_quality" in sections:
        results["time_to_quality"] = bench_time_to_quality(config, device, data)
    if "service" in sections or "throughput" in sections:
        with service(weights(config), device, config.service_steps) as running:
            if "service" in sections:
                results["service"] = overhead(
                    running, weights(config), device, config.service_steps, config.service_repeats
                )
            if "throughput" in sections:
                results["throughput"] = throughput(
                    running,
                    config.throughput_jobs,
                    config.throughput_steps,
                    config.max_batch,
                    weights(config)["base64"],
                )
    if "throughput" in sections and device == "cpu":
        results["throughput"]["per_item_forward_ms"] = batch_scaling(
            weights(config)["base64"], config.scaling_batches, config.scaling_threads
        )
    if "previews" in sections:
        results["previews"] = preview_cost(
            weights(config), device, config.service_steps, config.preview_repeats
        )
    if "tiling" in sections:
        results["tiling"] = bench_tiling(config, device)
    return results


def chosen(only: str | None, skip: str | None) -> tuple[str, ...]:
    """The sections `--only` and `--skip` (comma-separated names) leave to run."""
    picked = set(SECTIONS)
    for option, text, keep in (("--only", only, True), ("--skip", skip, False)):
        if text is None:
            continue
        names = {name.strip() for name in text.split(",") if name.strip()}
        if unknown := names - set(SECTIONS):
            raise ValueError(f"{option} takes names from {list(SECTIONS)}, got {sorted(unknown)}")
        picked = picked & names if keep else picked - names
    return tuple(name for name in SECTIONS if name in picked)


def keep_earlier(results: Results, path: Path) -> Results:
    """Carry over the sections this run skipped from an earlier run in `path` made on the same
    machine in the same mode, so parts can be measured separately into one file."""
    if not path.is_file():
        return results
    earlier = json.loads(path.read_text())
    same = all(
        earlier.get("machine", {}).get(key) == results["machine"][key]
        for key in ("cpu", "device_name")
    )
    if not same or earlier.get("mode") != results["mode"]:
        return results
    for name in SECTIONS:
        if name not in results and name in earlier:
            results[name] = earlier[name]
            results["setup"][name] = earlier.get("setup", {}).get(name, {})
            date = results["setup"][name].get("date")
            log.info("kept section %s from the earlier run in %s (%s)", name, path, date)
    return results


PLACEHOLDERS = {"--data": "PHOTOS", "--json": "JSON", "--merge": "JSON"}  # this machine's files


def shown_command(argv: list[str]) -> str:
    """The command line as reports record it, with placeholders for `PLACEHOLDERS`' values and
    for absolute paths, so that it names no path of this machine."""
    shown: list[str] = []
    for word in argv:
        option, equals, value = word.partition("=")
        if shown and shown[-1] in PLACEHOLDERS:
            word = PLACEHOLDERS[shown[-1]]
        elif equals and option in PLACEHOLDERS:
            word = f"{option}={PLACEHOLDERS[option]}"
        elif equals and option.startswith("--") and value.startswith("/"):
            word = f"{option}=PATH"
        elif word.startswith("/"):
            word = "PATH"
        shown.append(word)
    return "cascade " + shlex.join(shown)


def main(args: argparse.Namespace) -> None:
    """`cascade bench`: measure, then write bench.json, its markdown and plot into `--out`;
    the repository's BENCHMARKS.md only when `--report` names it."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the rest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.json) if args.json else out / "bench.json"
    if args.report_only:
        results = json.loads(path.read_text())
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        config = QUICK if args.quick else full(args.device)
        config = tiling_options(config, args)
        command = shown_command(sys.argv[1:])
        results = run(config, args.device, chosen(args.only, args.skip), args.data, command)
        results = keep_earlier(results, path)
        path.write_text(json.dumps(results, indent=2) + "\n")
        log.info("wrote %s", path)
    merged = [json.loads(Path(other).read_text()) for other in args.merge]
    report = Path(args.report) if args.report else None
    write_reports(results, merged, out / "bench.png", report)


def tiling_options(config: BenchConfig, args: argparse.Namespace) -> BenchConfig:
    """The tiling part's command-line overrides of `config`."""
    changes: dict[str, Any] = {}
    if args.tiling_sizes:
        try:
            sizes = tuple(int(size) for size in args.tiling_sizes.split(","))
        except ValueError:
            raise ValueError(
                f"--tiling-sizes takes sides like 1024,2048, got {args.tiling_sizes!r}"
            ) from None
        if any(size < 64 or size % 64 for size in sizes):
            raise ValueError(f"--tiling-sizes must be multiples of 64, got {list(sizes)}")
        changes["tiling_sizes"] = sizes
    if args.tiling_steps is not None:
        changes["tiling_steps"] = args.tiling_steps or None
    if args.tiling_tiny:
        changes["tiling_tiny"] = True
    return dataclasses.replace(config, **changes)


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade bench` (a `cascade.commands` entry point of the bench package)."""
    bench = commands.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("--out", default="runs/bench", help="folder for bench.json, .md and .png")
    bench.add_argument(
        "--json",
        help="results file (default: OUT/bench.json; with --report-only, the run to report)",
    )
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    sections = ",".join(SECTIONS)
    bench.add_argument("--only", metavar="SECTIONS", help=f"run only these of {sections}")
    bench.add_argument("--skip", metavar="SECTIONS", help="run all but these")
    bench.add_argument("--data", help="held-out photos for the sampler figures")
    bench.add_argument(
        "--report", help="also rewrite this markdown report with the run (e.g. BENCHMARKS.md)"
    )
    bench.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="JSON",
        help="add a run from another machine (e.g. a GPU) to the report",
    )
    bench.add_argument(
        "--report-only", action="store_true", help="measure nothing: report --json as it is"
    )
    bench.add_argument(
        "--tiling-sizes", metavar="SIDES", help="tiling: output sides, e.g. 1024,2048,4096,8192"
    )
    bench.add_argument(
        "--tiling-steps",
        type=int,
        metavar="N",
        help="tiling: sampler steps of the memory runs (0: the stage's default)",
    )
    bench.add_argument(
        "--tiling-tiny",
        action="store_true",
        help="tiling: the tiny presets instead of the demo weights (quick, for CI)",
    )
    bench.set_defaults(run=main)
