"""The forward variant matrix, for a device run: per stage preset and batch size, each precision,
layout and compile option's forward time, TFLOP/s and MFU, and a profile of one forward.

Variants (one axis each, so a cell says what one option does):
`fp32` (TF32 off), `tf32`, `bf16_autocast`, `bf16_weights` (weights but the norms', and inputs),
`channels_last` (fp32/TF32), `bf16_autocast_channels_last`, and `torch.compile` of the TF32
network as `compile`, `compile_reduce_overhead` (CUDA graphs) and `compile_max_autotune`
(opt-in: minutes per shape). Compiles run at the `--compile-batches` only (8 by default: the
target batch). `max_abs_error` is each variant's distance from `fp32` on the same inputs.

The profile (`--profile-batch`): one forward of each preset in `fp32` and `bf16_autocast`
(where it runs),
the operators with the most device (or, on the CPU, self CPU) time: where casts, GroupNorm and
launch overhead show. Results are written after every cell, so a run stopped by its time
budget (`--max-minutes`) keeps what it measured.

    python -m bench.gpu --out DIR --device cuda [--presets ...] [--batches 1,8,32]

writes DIR/gpu_matrix.json and DIR/gpu_matrix.md. On the CPU (the tests) it runs what applies
there: no TF32, no CUDA graphs, no bf16 autocast (the CPU's GroupNorm rejects its mixed dtypes,
and an AVX2 CPU has no bf16 arithmetic to gain from).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bench.models import _inputs, _sync, _time, forward_flops, nhwc_inputs, peak_flops
from cascade.checkpoints import load

log = logging.getLogger(__name__)

SMALL = (("base64-small", 64), ("sr256-small", 256), ("sr1024-small", 1024))
NATIVE = (("base64", 64), ("sr256", 256), ("sr1024", 1024))


@dataclass(frozen=True)
class Variant:
    """One way to run the forward."""

    name: str
    tf32: bool = False
    autocast: bool = False  # bf16 autocast
    bf16_weights: bool = False
    channels_last: bool = False
    compile_mode: str | None = None  # torch.compile mode ("default", "reduce-overhead", ...)
    cuda_only: bool = False


VARIANTS = (
    Variant("fp32"),
    Variant("tf32", tf32=True, cuda_only=True),
    Variant("bf16_autocast", tf32=True, autocast=True, cuda_only=True),
    Variant("bf16_weights", bf16_weights=True),
    Variant("channels_last", tf32=True, channels_last=True),
    Variant(
        "bf16_autocast_channels_last", tf32=True, autocast=True, channels_last=True, cuda_only=True
    ),
    Variant("compile", tf32=True, compile_mode="default"),
    Variant("compile_reduce_overhead", tf32=True, compile_mode="reduce-overhead", cuda_only=True),
    Variant("compile_max_autotune", tf32=True, compile_mode="max-autotune", cuda_only=True),
)
DEFAULT_VARIANTS = tuple(v.name for v in VARIANTS if v.name != "compile_max_autotune")


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _prepared(
    network: torch.nn.Module, args: tuple, variant: Variant, device: torch.device
) -> Callable[[], Tensor]:
    """A no-argument forward of a copy of `network`, set up as `variant` says."""
    net = copy.deepcopy(network)
    if variant.bf16_weights:
        # As guided-diffusion's convert_to_fp16: convolutions and linears in bf16, the norms'
        # parameters kept float32 (ADM's GroupNorm32 computes in float32).
        net = net.to(torch.bfloat16)
        for module in net.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.float()
        args = tuple(
            a.to(torch.bfloat16) if isinstance(a, Tensor) and a.is_floating_point() else a
            for a in args
        )
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
        args = nhwc_inputs(args)
    if variant.compile_mode is not None:
        torch._dynamo.reset()
        net = torch.compile(net, mode=variant.compile_mode, dynamic=False)

    def forward() -> Tensor:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if variant.autocast
            else contextlib.nullcontext()
        )
        with _tf32(variant.tf32), torch.inference_mode(), autocast:
            return net(*args)

    return forward


def measure_cell(
    preset: str,
    size: int,
    batch: int,
    variants: Sequence[Variant],
    device: torch.device,
    repeats: int,
) -> dict[str, dict[str, float | str]]:
    """Each variant's forward of `preset` at `batch`: ms, first call s, TFLOP/s, MFU (against
    the device's dense bf16 peak, whatever the variant's precision), error against fp32."""
    model = load(f"preset:{preset}", device)
    network = model.network.eval()
    args = _inputs(model, size, batch, device)
    flops = forward_flops(model, size) * batch
    peak = peak_flops(device)
    with _tf32(False), torch.inference_mode():
        exact = network(*args).float()
    cell: dict[str, dict[str, float | str]] = {}
    for variant in variants:
        try:
            forward = _prepared(network, args, variant, device)
            started = time.perf_counter()
            out = forward()
            _sync(device)
            first = time.perf_counter() - started
            seconds = _time(forward, device, repeats)
            entry: dict[str, float | str] = {
                "ms": seconds * 1e3,
                "first_call_s": first,
                "tflops_per_s": flops / seconds / 1e12,
                "max_abs_error": float((out.float() - exact).abs().max()),
            }
            if peak:
                entry["mfu"] = flops / seconds / peak
        except Exception as error:  # one variant failing (memory, a compiler) ends only its cell
            entry = {"error": f"{type(error).__name__}: {error}"[:300]}
        cell[variant.name] = entry
        log.info("%s batch %d %s: %s", preset, batch, variant.name, json.dumps(entry))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cell


def profile_forward(
    preset: str, size: int, batch: int, variant: Variant, device: torch.device, rows: int = 15
) -> list[dict[str, float | str | int]]:
    """The operators of one forward with the most device time (self CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    model = load(f"preset:{preset}", device)
    forward = _prepared(model.network.eval(), _inputs(model, size, batch, device), variant, device)
    forward()
    _sync(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        forward()
        _sync(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def cost(event: object) -> float:
        return float(
            getattr(event, "self_device_time_total", 0.0)
            if on_device
            else getattr(event, "self_cpu_time_total", 0.0)
        )

    top = sorted(events, key=cost, reverse=True)[:rows]
    total = sum(cost(event) for event in events) or 1.0
    return [
        {
            "op": event.key,
            "calls": event.count,
            "ms": cost(event) / 1e3,
            "share": cost(event) / total,
        }
        for event in top
    ]


def run(
    out: Path,
    device: str,
    cases: Sequence[tuple[str, int]],
    batches: Sequence[int],
    variant_names: Sequence[str],
    compile_batches: Sequence[int],
    repeats: int,
    profile_batch: int | None,
    max_minutes: float | None,
) -> dict:
    """Measure the matrix (and the profiles) into out/gpu_matrix.json, cell by cell."""
    dev = torch.device(device)
    chosen = [
        v for v in VARIANTS if v.name in variant_names and (dev.type == "cuda" or not v.cuda_only)
    ]
    results: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "repeats": repeats,
        "variants": [v.name for v in chosen],
        "matrix": {},
        "profiles": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_matrix.json"
    deadline = None if max_minutes is None else time.monotonic() + max_minutes * 60

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))
        (out / "gpu_matrix.md").write_text(report(results))

    for preset, size in cases:
        for batch in batches:
            if deadline and time.monotonic() > deadline:
                results["stopped"] = "time budget reached"
                save()
                return results
            variants = [v for v in chosen if v.compile_mode is None or batch in compile_batches]
            cell = measure_cell(preset, size, batch, variants, dev, repeats)
            results["matrix"].setdefault(preset, {})[str(batch)] = cell
            save()
        if profile_batch:
            for variant in (v for v in chosen if v.name in ("fp32", "bf16_autocast")):
                name = variant.name
                key = f"{preset}@{profile_batch}:{name}"
                results["profiles"][key] = profile_forward(
                    preset, size, profile_batch, variant, dev
                )
                save()
    return results


def report(results: dict) -> str:
    """Markdown: per preset, ms (and MFU) of each variant by batch; then the profiles."""
    lines = [f"# Forward variant matrix ({results['device']}, torch {results['torch']})", ""]
    for preset, by_batch in results["matrix"].items():
        lines += [
            f"## {preset}",
            "",
            "| variant | " + " | ".join(f"batch {b} ms (MFU)" for b in by_batch) + " |",
        ]
        lines.append("|---" * (len(by_batch) + 1) + "|")
        for name in results["variants"]:
            cells = []
            for cell in by_batch.values():
                entry = cell.get(name)
                if entry is None:
                    cells.append("–")
                elif "error" in entry:
                    cells.append("error")
                else:
                    mfu = f" ({entry['mfu']:.0%})" if "mfu" in entry else ""
                    cells.append(f"{entry['ms']:.3g}{mfu}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for key, rows in results["profiles"].items():
        lines += [f"## Profile {key}", "", "| op | calls | ms | share |", "|---|---|---|---|"]
        lines += [
            f"| `{r['op']}` | {r['calls']} | {r['ms']:.3g} | {r['share']:.1%} |" for r in rows
        ]
        lines.append("")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--presets", default=None, help="preset@size,... (default: the small and native presets)"
    )
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--compile-batches", default="8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile-batch", type=int, default=8, help="0: no profiles")
    parser.add_argument("--max-minutes", type=float, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cases = SMALL + NATIVE
    if args.presets:
        cases = tuple((p.split("@")[0], int(p.split("@")[1])) for p in args.presets.split(","))
    ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    run(
        Path(args.out),
        args.device,
        cases,
        ints(args.batches),
        args.variants.split(","),
        ints(args.compile_batches),
        args.repeats,
        args.profile_batch or None,
        args.max_minutes,
    )


if __name__ == "__main__":
    main()
