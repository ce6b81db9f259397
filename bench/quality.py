"""Quality against time: the samplers' convergence, and the reference algorithm's time to its
quality beside the service's default.

The reference algorithm is SR3's and ADM's published sampling: ancestral sampling over all
2000 (SR3) or 1000 (ADM) training steps, eager float32, NCHW, batch 1, with the reference code's
einsum attention (`bench.reference`). The project's default is what a request without options
gets: each stage's default sampler, steps and (upscales) fidelity, on the service's fast path.
Both run the same weights on the same held-out photos, side by side in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import Tensor

from bench.reference import reference_forward
from cascade.checkpoints import Model
from cascade.degradations import bicubic_degrade
from cascade.metrics import band_power, hf_ratio, luminance, psnr
from cascade.pipeline import Stage
from cascade.samplers import SAMPLERS
from cascade.stages import DEFAULT_RUNS, StageRun

log = logging.getLogger(__name__)

# The time-to-quality row of the default sampler and steps at fidelity 0 (the full sample).
FULL = "full_sample"


def sampler_quality(
    stage: Stage,
    images: Sequence[Tensor],
    steps: Sequence[int] = (5, 10, 20, 50, 100, 200),
    reference_steps: int = 1000,
    samplers: Sequence[str] = tuple(SAMPLERS),
    seed: int = 0,
) -> dict[str, object]:
    """Mean PSNR vs the ground truth of each sampler per step count, for the full generative
    sample as is (fidelity 0, low band "sample": where samplers differ most), beside
    `reference_steps`-step ancestral sampling. Two criteria per sampler: the fewest steps within
    0.1 dB of its own result at the most steps measured ("own limit"), and the fewest within
    0.1 dB of the ancestral reference (plus the gap to it at each step count)."""
    scale = stage.scale

    def mean_psnr(run: StageRun) -> float:
        values = []
        for index, hr in enumerate(images):
            low = bicubic_degrade(hr, scale)
            out = stage.run(seeds=[seed + index], low_res=low, run=run)
            values.append(psnr(out[0], hr[0]))
        return sum(values) / len(values)

    reference = mean_psnr(StageRun("ancestral", reference_steps, fidelity=0.0, low_band="sample"))
    table: dict[str, dict[str, object]] = {}
    limit = str(max(steps))
    for name in samplers:
        curve = {
            str(n): mean_psnr(StageRun(name, n, fidelity=0.0, low_band="sample"))  # type: ignore[arg-type]
            for n in steps
        }
        own = curve[limit]
        table[name] = {
            "psnr": curve,
            "steps_within_0.1db": _fewest(curve, lambda value: value >= reference - 0.1),
            "steps_within_0.1db_of_own_limit": _fewest(
                curve, lambda value, own=own: abs(value - own) <= 0.1
            ),
            "own_limit_steps": int(limit),
            "gap_to_reference_db": {n: value - reference for n, value in curve.items()},
        }
        log.info("sampler %s: %s", name, json.dumps(table[name]))
    return {
        "reference": {"sampler": "ancestral", "steps": reference_steps, "psnr": reference},
        "samplers": table,
    }


def _fewest(curve: dict[str, float], ok) -> int | None:  # type: ignore[no-untyped-def]
    """The fewest steps from which on every larger count meets `ok` (None: not even the last)."""
    fewest = None
    for n in sorted(curve, key=int, reverse=True):
        if not ok(curve[n]):
            break
        fewest = int(n)
    return fewest


def _reference_stage(model: Model, name: str, steps: int) -> Stage:
    """The reference algorithm on `model`: ancestral over `steps`, the full sample as is, no
    colour fix, NCHW (the stage is never `optimize`d); run it inside `reference_forward()`."""
    model.network.to(memory_format=torch.contiguous_format)
    run = StageRun("ancestral", steps, color_fix="none", fidelity=0.0, low_band="sample")
    return Stage(name, model, run)


# The one-call mode of a stage with a distilled student.
ONE_STEP = "one_step"


@contextlib.contextmanager
def counting_calls(*networks: torch.nn.Module) -> Iterator[list[int]]:
    """Counts the forward calls of `networks` (one per network evaluation at batch 1)."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    handles = [network.register_forward_pre_hook(count) for network in networks]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def upscale_time_to_quality(
    model: Model,
    images: Sequence[Tensor],
    reference_steps: int = 2000,
    seed: int = 0,
    student: Model | None = None,
) -> dict[str, object]:
    """Wall time, network calls, PSNR and hf_ratio of the reference algorithm and of the
    default upscale on the same held-out crops (LR by antialiased bicubic), batch 1 each; beside
    them the default sampler and steps at fidelity 0 with the sample as is (`full_sample`: the
    reference's full generative sample in the default's steps), the speedup at the reference's
    own trade-off, and with a distilled `student` its one-call mode (`one_step`)."""
    reference = _reference_stage(model, "sr256", reference_steps)
    ours = Stage("sr256", model, DEFAULT_RUNS["sr256"])
    full_sampler = "dpmpp_2m" if DEFAULT_RUNS["sr256"].sampler == "student" else None
    full_run = dataclasses.replace(
        DEFAULT_RUNS["sr256"],
        sampler=full_sampler or DEFAULT_RUNS["sr256"].sampler,
        steps=20 if full_sampler else DEFAULT_RUNS["sr256"].steps,
        fidelity=0.0,
        low_band="sample",
    )
    full = Stage("sr256", model, full_run)
    runs = [
        ("reference", reference, reference_forward),
        ("default", ours, partial(_optimized, ours)),
        (FULL, full, partial(_optimized, full)),
    ]
    if student is not None:
        ours.attach_student(student)
        one = Stage("sr256", model, StageRun("student", 1), student=student)
        runs.append((ONE_STEP, one, partial(_optimized, one)))
    networks = [model.network] + ([student.network] if student is not None else [])
    rows: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in runs}
    for label, stage, context in runs:
        with context():
            for index, hr in enumerate(images):
                low = bicubic_degrade(hr, stage.scale)
                with counting_calls(*networks) as calls:
                    start = time.perf_counter()
                    out = stage.run(seeds=[seed + index], low_res=low)
                    seconds = time.perf_counter() - start
                for key, value in (
                    ("seconds", seconds),
                    ("network_calls", float(calls[0])),
                    ("psnr", psnr(out[0], hr[0])),
                    ("hf_ratio", hf_ratio(out[0], hr[0])),
                ):
                    rows[label].setdefault(key, []).append(value)
                log.info("upscale %s image %d: %.1f s", label, index, seconds)
    result = _compare(rows)
    for label, stage, _ in runs[2:]:
        result[label].update(
            _gaps(result["reference"], result[label]), run=dataclasses.asdict(stage.effective())
        )
    result["default_run"] = dataclasses.asdict(ours.effective())
    result["reference_run"] = dataclasses.asdict(reference.defaults)
    return result


# The sr1024 upscale as it ran before its few-step default: 20 DPM-Solver++ steps from 0.95.
SR1024_TWENTY_STEPS = StageRun("dpmpp_2m", 20, fidelity=0.95)


def sr1024_upscale_seconds(model: Model, hr: Tensor, seed: int = 0) -> dict[str, object]:
    """One 4x sr1024 upscale of `hr`'s bicubic ÷4 (256 -> 1024 at the native size): wall time,
    network calls, PSNR and hf_ratio of the default run beside the 20-step run, in turn."""
    stage = Stage("sr1024", model, DEFAULT_RUNS["sr1024"]).optimize()
    low = bicubic_degrade(hr, stage.scale)
    rows: dict[str, dict[str, float]] = {}
    for label, run in (("default", None), ("twenty_steps", SR1024_TWENTY_STEPS)):
        with counting_calls(model.network) as calls:
            start = time.perf_counter()
            out = stage.run(seeds=[seed], low_res=low, run=run)
            seconds = time.perf_counter() - start
        rows[label] = {
            "seconds": seconds,
            "network_calls": float(calls[0]),
            "psnr": psnr(out[0], hr[0]),
            "hf_ratio": hf_ratio(out[0], hr[0]),
            "run": dataclasses.asdict(stage.effective(run)),  # type: ignore[dict-item]
        }
        log.info("sr1024 upscale %s: %.1f s", label, seconds)
    return {
        **rows,
        "size": int(hr.shape[-1]),
        "speedup": rows["twenty_steps"]["seconds"] / rows["default"]["seconds"],
    }


def generation_time_to_quality(
    base: Model,
    sr: Model,
    seeds: Sequence[int],
    class_id: int,
    reference_steps: int = 2000,
    student: Model | None = None,
) -> dict[str, object]:
    """A 256 px generation (base then sr256) by the reference algorithm and by the defaults.
    A generation has no ground truth: its figures are the wall time, the fine detail of the
    result (luminance power in the hf_ratio band, as a ratio to the reference's) and the
    image's spread (std; a flat image is a failure)."""
    base_steps = min(reference_steps, len(base.spec.schedule.build()))
    pairs = {
        "reference": (
            _reference_stage(base, "base64", base_steps),
            _reference_stage(sr, "sr256", reference_steps),
        ),
        "default": (
            Stage("base64", base, DEFAULT_RUNS["base64"]),
            Stage("sr256", sr, DEFAULT_RUNS["sr256"], student=student),
        ),
    }
    rows: dict[str, dict[str, list[float]]] = {"reference": {}, "default": {}}
    for label, (first, second) in pairs.items():
        with reference_forward() if label == "reference" else _optimized(first, second):
            for seed in seeds:
                start = time.perf_counter()
                low = first.run(seeds=[seed], class_ids=[class_id])
                out = second.run(seeds=[seed], low_res=low)
                seconds = time.perf_counter() - start
                rows[label].setdefault("seconds", []).append(seconds)
                rows[label].setdefault("band_power", []).append(band_power(luminance(out[0])))
                rows[label].setdefault("std", []).append(float(out[0].std()))
                log.info("generation %s seed %d: %.1f s", label, seed, seconds)
    result = _compare(rows)
    detail = statistics.mean(rows["default"]["band_power"]) / statistics.mean(
        rows["reference"]["band_power"]
    )
    result["detail_vs_reference"] = detail
    result["steps"] = {
        "reference": [base_steps, reference_steps],
        "default": [DEFAULT_RUNS["base64"].steps, DEFAULT_RUNS["sr256"].steps],
    }
    result["default_runs"] = [dataclasses.asdict(stage.effective()) for stage in pairs["default"]]
    return result


@contextlib.contextmanager
def _optimized(*stages: Stage) -> Iterator[None]:
    """Puts `stages` on the service's fast path (the reference's ran NCHW)."""
    for stage in stages:
        stage.optimize()
    yield


def _compare(rows: dict[str, dict[str, list[float]]]) -> dict[str, object]:
    """Means per side (every row), then the default's speedup and quality gaps."""
    means = {
        label: {key: statistics.mean(values) for key, values in row.items()}
        for label, row in rows.items()
    }
    return {**means, "per_item": rows, **_gaps(means["reference"], means["default"])}


def _gaps(reference: dict[str, float], ours: dict[str, float]) -> dict[str, float]:
    """The speedup (reference time / ours) and, with a ground truth, the quality gaps."""
    gaps = {"speedup": reference["seconds"] / ours["seconds"]}
    if "network_calls" in ours:
        gaps["call_ratio"] = reference["network_calls"] / ours["network_calls"]
    if "psnr" in ours:
        gaps["psnr_gap_db"] = ours["psnr"] - reference["psnr"]
        gaps["hf_ratio_gap"] = ours["hf_ratio"] - reference["hf_ratio"]
    return gaps
