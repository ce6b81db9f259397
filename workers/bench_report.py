"""`cascade bench`'s reports: a run as markdown tables and as one PNG plot, and BENCHMARKS.md
(the latest run, then runs merged from other machines)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SECTIONS = ("forward", "samplers", "service", "throughput", "tiling")


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def section(results: dict, plot: str | None = None) -> str:
    """One run as markdown: where and how it ran, then a table per measured figure."""
    info, setup_ = results["machine"], results.get("setup", {})
    title = info["device_name"] if info["device"] == "cuda" else f"CPU: {info['cpu']}"
    out = [f"## {title}", ""]
    if not results.get("comparable"):
        out += [
            f"> **{results['mode']} run**: fewer, smaller measurements that are **not "
            "comparable** with full runs; run `cascade bench` without `--quick` for those.",
            "",
        ]
    out += [
        _table(
            ["command", "date", "CPU", "cores", "device", "torch", "Python"],
            [
                [
                    f"`{results['command']}`",
                    results["date"],
                    info["cpu"],
                    info["cores"],
                    info["device_name"],
                    info["torch"],
                    info["python"],
                ]
            ],
        ),
        "",
    ]
    if plot:
        out += [f"![benchmark plot]({plot})", ""]
    if forward := results.get("forward"):
        out += ["### Network forward, batch 1: eager float32 vs the service's fast path", ""]
        rows = [
            [
                preset,
                entry["size"],
                entry["eager_ms"],
                entry["fast_ms"],
                entry["speedup"],
                entry["gflops"],
                entry["fast_tflops_per_s"],
                entry.get("mfu"),
            ]
            for preset, entry in forward.items()
        ]
        header = ["preset", "size", "eager ms", "fast ms", "speedup", "GFLOP", "TFLOP/s", "MFU"]
        out += [_table(header, rows), ""]
    if samplers := results.get("samplers"):
        given = setup_.get("samplers", {})
        steps = [str(n) for n in given.get("steps", next(iter(samplers.values()))["psnr"])]
        reference = next(iter(samplers.values()))["reference_psnr"]
        out += [
            "### Samplers: PSNR (dB) of the sr256 stage against the ground truth, by steps",
            "",
            f"Reference: ancestral sampling with {given.get('reference', {}).get('steps')} steps, "
            f"{reference:.2f} dB; {given.get('images')} held-out photo(s), {given.get('crop')} px "
            f"centre crops; weights `{given.get('weights')}`. The last column is the fewest steps "
            "within 0.1 dB of the reference (or above it).",
            "",
        ]
        rows = [
            [name, *(entry["psnr"][n] for n in steps), entry["steps_within_0.1db"]]
            for name, entry in samplers.items()
        ]
        out += [_table(["sampler", *steps, "steps within 0.1 dB"], rows), ""]
    if service_ := results.get("service"):
        given = setup_.get("service", {})
        out += [
            "### Service overhead: one job through HTTP, Redis and a worker vs a direct call",
            "",
            f"{given.get('request', '')}; median of {given.get('repeats')} alternating runs. "
            "Overhead fraction = (end to end − direct) / end to end.",
            "",
        ]
        header = ["direct s", "end to end s", "overhead s", "overhead fraction", "ratio", "same"]
        row = [
            service_["direct_s"],
            service_["e2e_s"],
            service_["overhead_s"],
            service_["overhead_fraction"],
            service_["overhead_ratio"],
            "yes" if service_.get("same_image") else "no",
        ]
        out += [_table(header, [row]), ""]
    if throughput := results.get("throughput"):
        given = setup_.get("throughput", {})
        out += [
            f"### Throughput: {given.get('jobs')} jobs submitted at once "
            f"({given.get('request', '')})",
            "",
        ]
        rows = [[name, rate] for name, rate in throughput["jobs_per_s"].items()]
        rows += [
            [
                f"batching speedup (max batch {given.get('max_batch')})",
                throughput["batching_speedup"],
            ],
            ["two workers' speedup", throughput.get("workers_speedup")],
        ]
        out += [_table(["configuration", "jobs/s"], rows), ""]
    if tiling := results.get("tiling"):
        given = setup_.get("tiling", {})
        out += [
            f"### Tiled upscale memory ({given.get('preset')}, {given.get('steps')} step(s), "
            f"{given.get('measure')})",
            "",
        ]
        rows = [[f"{size} px", mb] for size, mb in tiling["peak_rss_mb"].items()]
        out += [_table(["output", "peak MB"], rows), ""]
    return "\n".join(out)


def document(runs: list[dict], plot: str | None = None) -> str:
    """BENCHMARKS.md: the latest run, then any runs merged from other machines."""
    head = [
        "# Benchmarks",
        "",
        "Written by `cascade bench` (`workers/bench.py`); the JSON it writes keeps the same names "
        "from run to run. Regenerate with `make bench`; add a run from another machine (e.g. a "
        "GPU) with `cascade bench --report-only --json bench.json --merge gpu.json`.",
        "",
    ]
    parts = [section(runs[0], plot)] + [section(other) for other in runs[1:]]
    return "\n".join(head) + "\n" + "\n\n".join(parts)


def draw(results: dict, path: Path) -> None:
    """The run's figures as one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in SECTIONS if results.get(name)]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, name in zip(axes[0], panels, strict=True):
        data = results[name]
        if name == "forward":
            presets = list(data)
            x = np.arange(len(presets))
            axis.bar(x - 0.2, [data[p]["eager_ms"] for p in presets], 0.4, label="eager fp32")
            axis.bar(x + 0.2, [data[p]["fast_ms"] for p in presets], 0.4, label="fast path")
            axis.set_xticks(x, presets, rotation=20, fontsize=7)
            axis.set_yscale("log")
            axis.set_ylabel("ms per forward")
            axis.legend(fontsize=7)
        elif name == "samplers":
            for sampler, entry in data.items():
                steps = [int(n) for n in entry["psnr"]]
                axis.plot(steps, list(entry["psnr"].values()), marker="o", label=sampler)
            axis.axhline(next(iter(data.values()))["reference_psnr"], color="grey", ls="--")
            axis.set_xscale("log")
            axis.set_xlabel("steps")
            axis.set_ylabel("PSNR (dB)")
            axis.legend(fontsize=7)
        elif name == "service":
            axis.bar(["direct", "end to end"], [data["direct_s"], data["e2e_s"]])
            axis.set_ylabel("seconds per 256 px job")
            axis.set_title(f"overhead {data['overhead_fraction']:.1%}", fontsize=9)
        elif name == "throughput":
            rates = data["jobs_per_s"]
            axis.bar(list(rates), list(rates.values()))
            axis.tick_params(axis="x", labelsize=7, rotation=15)
            axis.set_ylabel("jobs / s")
        elif name == "tiling":
            sizes = list(data["peak_rss_mb"])
            axis.plot([int(s) for s in sizes], list(data["peak_rss_mb"].values()), marker="o")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("output side (px)")
            axis.set_ylabel("peak MB")
        axis.set_title(name if name != "service" else axis.get_title() or name, loc="left")
    label = "" if results.get("comparable") else f" — {results['mode']} run, not comparable"
    figure.suptitle(f"cascade bench: {results['machine']['device_name']}{label}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_reports(results: dict, merged: list[dict], plot: Path, report: Path) -> None:
    """The plot, the run's own markdown beside it, and the whole report."""
    draw(results, plot)
    plot.with_suffix(".md").write_text(section(results, plot.name) + "\n")
    try:
        link = str(plot.resolve().relative_to(report.resolve().parent))
    except ValueError:  # the plot lives outside the report's folder: no link
        link = None
    report.write_text(document([results, *merged], link) + "\n")
    log.info("wrote %s, %s and %s", plot, plot.with_suffix(".md"), report)
