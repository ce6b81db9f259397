"""`cascade bench`'s reports: a run as markdown tables and as one PNG plot, and BENCHMARKS.md
(the latest run, then runs merged from other machines)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# In a report file, this line and everything after it survive `cascade bench --report`
# (hand-written sections: load runs, evaluations).
KEEP_MARKER = "<!-- cascade bench keeps this line and everything below it -->"
BATCHING_TARGET = 1.5  # the least speedup worth a batching target (per item, at the largest batch)
SECTIONS = (
    "forward",
    "samplers",
    "time_to_quality",
    "service",
    "throughput",
    "previews",
    "tiling",
)
PREVIEW_TARGET = 1.03  # previews on / off, of a stage's time at most


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
    info = results["machine"]
    title = info["device_name"] if info["device"] == "cuda" else f"CPU: {info['cpu']}"
    out = [f"## {title}", ""]
    if not results.get("comparable"):
        out += [
            f"> **{results['mode']} run**: fewer, smaller measurements that are **not "
            "comparable** with full runs; run `cascade bench` without `--quick` for those.",
            "",
        ]
    header = ["command", "date", "CPU", "cores", "torch threads", "device", "torch", "Python"]
    row = [f"`{results['command']}`", results["date"], info["cpu"], info["cores"]]
    row += [info.get("torch_threads", "–"), info["device_name"], info["torch"], info["python"]]
    out += [_table(header, [row]), ""]
    if plot:
        out += [f"![benchmark plot]({plot})", ""]
    for name, render in RENDERERS.items():
        if data := results.get(name):
            given = results.get("setup", {}).get(name, {})
            out += [render(data, given), ""]
            if given.get("date", results["date"]) != results["date"]:
                origin = f"`{given['command']}`, " if given.get("command") else ""
                threads = (
                    f", {given['torch_threads']} torch thread(s)"
                    if given.get("torch_threads")
                    else ""
                )
                out += [f"Kept from an earlier run ({origin}{given['date']}{threads}).", ""]
    return "\n".join(out)


def _forward(data: dict, given: dict) -> str:
    rows = [
        [preset, entry["size"], entry.get("reference_ms"), entry["eager_ms"], entry["fast_ms"]]
        + [entry.get("vs_reference"), entry["speedup"]]
        + [entry["gflops"], entry["fast_tflops_per_s"], entry.get("mfu")]
        for preset, entry in data.items()
    ]
    header = ["preset", "size", "reference ms", "eager ms", "fast ms", "vs reference"]
    header += ["vs eager", "GFLOP", "TFLOP/s", "MFU"]
    names = sorted({name for entry in data.values() for name in entry.get("variants_ms", {})})
    options = [name for name in names if not name.endswith("_s")]
    variant_rows = [
        [preset]
        + [
            entry["eager_ms"] / entry["variants_ms"][name]
            if name in entry.get("variants_ms", {})
            else None
            for name in options
        ]
        + [entry.get("variants_ms", {}).get("compile_first_call_s")]
        for preset, entry in data.items()
    ]
    out = [
        "### Network forward, batch 1: the reference code's way vs ours",
        "",
        "`reference`: eager float32, NCHW, `no_grad`, with the reference code's einsum "
        "attention (`bench/reference.py`); `eager`: the same with our attention; `fast`: the "
        "service's fast path (`Stage.optimize`). Timed in alternation, same weights and inputs.",
        "",
        _table(header, rows),
    ]
    if options:
        out += [
            "",
            "Each fast-path option alone, as a speedup over plain eager (`compile`: inductor on "
            "the NCHW network, its first call's seconds in the last column):",
            "",
            _table(["preset", *options, "compile first call s"], variant_rows),
        ]
    return "\n".join(out)


def _samplers(data: dict, given: dict) -> str:
    steps = [str(n) for n in given.get("steps", next(iter(data.values()))["psnr"])]
    reference = next(iter(data.values()))["reference_psnr"]
    rows = [
        [name, *(entry["psnr"][n] for n in steps), entry["steps_within_0.1db"]]
        + [entry.get("steps_within_0.1db_of_own_limit")]
        for name, entry in data.items()
    ]
    limit = steps[-1]
    return "\n".join(
        [
            "### Samplers: PSNR (dB) of the sr256 stage against the ground truth, by steps",
            "",
            ("Full generative sampling (fidelity 0). " if given.get("fidelity") == 0 else "")
            + "Reference: "
            f"ancestral sampling with {given.get('reference', {}).get('steps')} steps, "
            f"{reference:.2f} dB; {given.get('images')} held-out photo(s), {given.get('crop')} "
            f"px centre crops; weights `{given.get('weights')}`. The last two columns: the "
            "fewest steps from which on a sampler stays within 0.1 dB of the reference, and "
            f"within 0.1 dB of its own {limit}-step result.",
            "",
            _table(
                ["sampler", *steps, "steps within 0.1 dB of reference", f"of own {limit}"], rows
            ),
        ]
    )


def _time_to_quality(data: dict, given: dict) -> str:
    upscale, generation = data["upscale"], data["generate256"]
    labels = ["reference", "default"] + [
        label for label in ("full_sample", "one_step") if label in upscale
    ]
    rows = [
        [label, upscale[label]["seconds"], upscale[label].get("network_calls", "–")]
        + [upscale[label]["psnr"], upscale[label]["hf_ratio"]]
        + [upscale["speedup"] if label == "default" else upscale[label].get("speedup", "–")]
        + [
            upscale.get("call_ratio", "–")
            if label == "default"
            else upscale[label].get("call_ratio", "–")
        ]
        for label in labels
    ]
    one = upscale.get("one_step")
    one_line = (
        f" The one-call mode (`one_step`, the student at steps=1): {one['speedup']:.0f}x in "
        f"wall time, {one['call_ratio']:.0f}x in network calls, PSNR gap "
        f"{one['psnr_gap_db']:+.2f} dB, hf_ratio gap {one['hf_ratio_gap']:+.3f}."
        if one and "call_ratio" in one
        else ""
    )
    big = data.get("upscale1024")
    big_lines = (
        [
            "",
            f"sr1024 4x upscale at its native size ({big['size'] // 4} -> {big['size']} px), "
            "one held-out photo, the default beside the 20-step run it replaced; speedup "
            f"{big['speedup']:.1f}x.",
            "",
            _table(
                ["run", "s", "network calls", "PSNR dB", "hf_ratio"],
                [
                    [label, big[label]["seconds"], big[label]["network_calls"]]
                    + [big[label]["psnr"], big[label]["hf_ratio"]]
                    for label in ("default", "twenty_steps")
                ],
            ),
        ]
        if big
        else []
    )
    full = upscale.get("full_sample")
    full_line = (
        f" At fidelity 0 (`full_sample`: the default sampler and steps, the reference's full "
        f"generative sample) the speedup is {full['speedup']:.1f}x, PSNR gap "
        f"{full['psnr_gap_db']:+.2f} dB, hf_ratio gap {full['hf_ratio_gap']:+.3f}."
        if full
        else ""
    )
    gen_rows = [
        [label, generation[label]["seconds"], generation[label]["std"]]
        + [generation[label]["band_power"] / generation["reference"]["band_power"]]
        for label in ("reference", "default")
    ]
    return "\n".join(
        [
            "### Time to quality: the reference algorithm vs the defaults",
            "",
            f"Reference: {given.get('reference')}. Default: {given.get('default')}. Weights "
            f"{given.get('weights')}.",
            "",
            f"Upscale 4x (sr256) of {given.get('images')} held-out photo(s), "
            f"{given.get('crop')} px crops; speedup {upscale['speedup']:.1f}x, PSNR gap "
            f"{upscale['psnr_gap_db']:+.2f} dB, hf_ratio gap {upscale['hf_ratio_gap']:+.3f}."
            + full_line
            + one_line,
            "",
            _table(
                ["run", "s per image", "network calls", "PSNR dB", "hf_ratio", "speedup"]
                + ["call ratio"],
                rows,
            ),
            *big_lines,
            "",
            f"256 px generation (base64 + sr256), seeds {given.get('seeds')}; speedup "
            f"{generation['speedup']:.1f}x. No ground truth: the detail column is the result's "
            "luminance power in the hf_ratio band relative to the reference's.",
            "",
            _table(["run", "s per image", "std", "detail vs reference"], gen_rows),
        ]
    )


def _service(data: dict, given: dict) -> str:
    header = ["direct s", "end to end s", "overhead s", "overhead fraction", "ratio", "same"]
    row = [data["direct_s"], data["e2e_s"], data["overhead_s"], data["overhead_fraction"]]
    row += [data["overhead_ratio"], "yes" if data.get("same_image") else "no"]
    spread = ", ".join(
        f"{label} {min(data[key]):.3g}–{max(data[key]):.3g} s"
        for label, key in (("direct", "direct_runs_s"), ("end to end", "e2e_runs_s"))
    )
    lines = [
        "### Service overhead: one job through HTTP, Redis and a worker vs a direct call",
        "",
        f"{given.get('request', '')}; medians of {given.get('repeats')} alternating runs "
        f"({spread}). Overhead fraction = (end to end − direct) / end to end, target "
        "≤ 0.05; below zero, the overhead is within the run-to-run noise. `same`: the "
        "service's image equals the direct call's.",
        "",
        _table(header, [row]),
    ]
    if "service_fraction" in data:  # runs before the split have no stage times
        lines += [
            "",
            "The direct call and the worker are two processes, so the difference above also "
            "holds their compute's spread. Split by the job's own stage times (its record: "
            "input load, sampling, saving), what the service adds around the stages (HTTP, "
            "queueing, hand-over, webhook, download):",
            "",
            _table(
                ["end to end s", "stages s", "around the stages s", "service fraction"],
                [[data["e2e_s"], data["stage_s"], data["service_s"], data["service_fraction"]]],
            ),
        ]
    return "\n".join(lines)


def _previews(data: dict, given: dict) -> str:
    rows = [
        [name, entry["off_s"], entry["on_s"], entry["ratio"], entry.get("best_ratio")]
        + [max(entry["previews"], default=0), entry["preview_chars"], entry.get("log_chars")]
        + [entry.get("preview_ms"), entry.get("preview_share")]
        for name, entry in data["stages"].items()
    ]
    rows.append(["both", data["off_s"], data["on_s"], data["ratio"], data.get("best_ratio")])
    rows[-1] += [None] * 5
    header = ["stage", "off s", "on s", "on / off", "fastest on / off", "previews"]
    header += ["largest chars", "log chars", "preview ms", "share"]
    same = "yes" if data.get("same_image") else "no"
    return "\n".join(
        [
            f"### Live previews: a stage's time with {data['previews_per_stage']} previews a "
            "stage vs none",
            "",
            f"{given.get('request', '')}; medians of {given.get('repeats')} alternating runs "
            "each way, the same seeds. Each stage job as a worker runs it (input, sampling with "
            f"its progress events, outputs saved); on / off target ≤ {PREVIEW_TARGET}. "
            "`fastest`: the fastest run each way, the least disturbed by other work on the "
            "machine. `log chars`: the previews' data URLs in one job's event log. `preview "
            "ms`: one preview made alone (downscale and WebP encode of the stage's output); "
            "`share`: the stage's previews × that / off s, the added work without the "
            f"run-to-run spread. `same`: {same} (the images with previews equal those without).",
            "",
            _table(header, rows),
        ]
    )


def _throughput(data: dict, given: dict) -> str:
    rows = [[name, rate] for name, rate in data["jobs_per_s"].items()]
    rows += [
        [f"batching speedup (max batch {given.get('max_batch')})", data["batching_speedup"]],
        ["two workers' speedup", data.get("workers_speedup")],
    ]
    out = [
        f"### Throughput: {given.get('jobs')} jobs submitted at once ({given.get('request', '')})",
        "",
        _table(["configuration", "jobs/s"], rows),
    ]
    if scaling := data.get("per_item_forward_ms"):
        batches = [key for key in next(iter(scaling.values())) if key != "gain"]
        table = [
            [name.replace("_", " "), *(row[b] for b in batches), row["gain"]]
            for name, row in scaling.items()
        ]
        out += [
            "",
            "The most batching can give: one base forward's milliseconds per item, alone and in "
            "a batch, per torch thread count (gain = per item alone / per item batched):",
            "",
            _table(["torch threads", *(f"batch {b}" for b in batches), "gain"], table),
        ]
        best = max(row["gain"] for row in scaling.values())
        if best < BATCHING_TARGET:
            out += [
                "",
                f"Batching cannot reach a {BATCHING_TARGET}× speedup here: a batched forward "
                f"costs at most {best:.2f}× less per item, so the cores are already busy at "
                "batch 1. Cross-request batching is measured on such machines, not targeted; "
                "its target (≥ 3× at batch 8 over batch 1) is on a GPU, where one item leaves "
                "the chip mostly idle.",
            ]
    return "\n".join(out)


def _tiling(data: dict, given: dict) -> str:
    if "memory" not in data:  # an earlier run's shape: peak MB by size
        rows = [[f"{size} px", mb] for size, mb in data["peak_rss_mb"].items()]
        title = f"### Tiled upscale memory ({given.get('preset')}, {given.get('steps')} step(s))"
        return "\n".join([title, "", _table(["output", "peak MB"], rows)])
    memory = data["memory"]
    cuda = any("peak_cuda_mb" in entry for entry in memory.values())
    header = ["output", "stage", "peak RSS MB", "× first"] + (["peak CUDA MB"] if cuda else [])
    rows = [
        [f"{size} px", entry["stage"], entry["peak_rss_mb"], entry["rss_ratio"]]
        + ([entry.get("peak_cuda_mb")] if cuda else [])
        for size, entry in memory.items()
    ]
    parts = [
        f"### Tiled upscale memory ({given.get('weights')}, steps: {given.get('steps')}, "
        f"{given.get('measure')})",
        "",
        f"{given.get('request')}.",
        "",
        _table(header, rows),
    ]
    if seam := data.get("seams"):
        parts += [
            "",
            f"Seams: a {seam['size']} px upscale by {seam['stage']} ({seam['weights']}, default "
            f"run) in its {seam['tile']} px tiles against one window over the same photo and "
            f"noise; border lines {seam['edges']}.",
            "",
            _table(
                ["", "PSNR vs photo (dB)", "border gradient ratio"],
                [
                    ["tiled", seam["psnr_tiled"], seam["border_ratio_tiled"]],
                    ["one window", seam["psnr_untiled"], seam["border_ratio_untiled"]],
                    *(
                        [["the photo", "–", seam["border_ratio_photo"]]]
                        if "border_ratio_photo" in seam
                        else []
                    ),
                ],
            ),
            "",
            f"PSNR between them {seam['psnr_between']:.1f} dB; gap against the photo "
            f"{seam['psnr_gap']:.3f} dB."
            + (
                f" Tiled over one window at the border lines: {seam['border_excess']:.3f} "
                "(1: the tiles add no seam)."
                if "border_excess" in seam
                else ""
            ),
        ]
    return "\n".join(parts)


RENDERERS: dict[str, Callable[[dict, dict], str]] = {
    "forward": _forward,
    "samplers": _samplers,
    "time_to_quality": _time_to_quality,
    "service": _service,
    "throughput": _throughput,
    "previews": _previews,
    "tiling": _tiling,
}


def document(runs: list[dict], plot: str | None = None) -> str:
    """BENCHMARKS.md: the latest run, then any runs merged from other machines."""
    head = [
        "# Benchmarks",
        "",
        "Written by `cascade bench` (`bench/`); the JSON it writes keeps the same names "
        "from run to run. Regenerate with `cascade bench --out runs/bench --report BENCHMARKS.md` "
        "(`--only SECTIONS` measures some and keeps the rest of the run in `--out`); add a run "
        "from another machine (e.g. a GPU) with `--merge gpu.json`.",
        "",
    ]
    parts = [section(runs[0], plot)] + [section(other) for other in runs[1:]]
    return "\n".join(head) + "\n" + "\n\n".join(parts)


def draw(results: dict, path: Path) -> None:
    """The run's figures as one PNG (matplotlib, Agg), a panel per section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in SECTIONS if results.get(name)]
    if not panels:
        return
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_axis_off()
    for axis, name in zip(axes.flat, panels, strict=False):
        data = results[name]
        title = name
        if name == "forward":
            presets = list(data)
            x = np.arange(len(presets))
            axis.bar(x - 0.2, [data[p]["eager_ms"] for p in presets], 0.4, label="eager fp32")
            axis.bar(x + 0.2, [data[p]["fast_ms"] for p in presets], 0.4, label="fast path")
            axis.set_xticks(x, presets, rotation=20, fontsize=7)
            axis.set_yscale("log")
            axis.set_ylabel("ms per forward (batch 1)")
            axis.legend(fontsize=7)
        elif name == "samplers":
            for sampler, entry in data.items():
                steps = [int(n) for n in entry["psnr"]]
                axis.plot(steps, list(entry["psnr"].values()), marker="o", label=sampler)
            reference = next(iter(data.values()))["reference_psnr"]
            axis.axhline(reference, color="grey", ls="--", label="reference")
            axis.set_xscale("log")
            axis.set_xticks(steps, [str(n) for n in steps])
            axis.minorticks_off()
            axis.set_xlabel("steps")
            axis.set_ylabel("PSNR (dB), sr256")
            axis.legend(fontsize=7)
        elif name == "time_to_quality":
            labels = ["upscale", "generate256"]
            x = np.arange(2)
            for offset, side in ((-0.2, "reference"), (0.2, "default")):
                values = [data[label][side]["seconds"] for label in labels]
                axis.bar(x + offset, values, 0.4, label=side)
            axis.set_xticks(x, labels)
            axis.set_yscale("log")
            axis.set_ylabel("seconds per image")
            axis.legend(fontsize=7)
            title = f"time to quality: upscale x{data['upscale']['speedup']:.0f}"
        elif name == "service":
            axis.bar(["direct", "end to end"], [data["direct_s"], data["e2e_s"]])
            axis.set_ylabel("seconds per 256 px job")
            title = f"service: overhead {data['overhead_fraction']:.1%}"
        elif name == "throughput":
            rates = data["jobs_per_s"]
            axis.bar(list(rates), list(rates.values()))
            axis.tick_params(axis="x", labelsize=7, rotation=15)
            axis.set_ylabel("jobs / s")
            title = f"throughput: batching x{data['batching_speedup']:.2f}"
        elif name == "previews":
            labels = list(data["stages"])
            x = np.arange(len(labels))
            for offset, side in ((-0.2, "off"), (0.2, "on")):
                values = [data["stages"][label][f"{side}_s"] for label in labels]
                axis.bar(x + offset, values, 0.4, label=f"previews {side}")
            axis.set_xticks(x, labels)
            axis.set_ylabel("seconds per stage job")
            axis.legend(fontsize=7)
            title = f"previews: on / off x{data['ratio']:.3f}"
        elif name == "tiling":
            peaks = data["memory"] if "memory" in data else data["peak_rss_mb"]
            sizes = [int(size) for size in peaks]
            values = [
                peak["peak_rss_mb"] if isinstance(peak, dict) else peak for peak in peaks.values()
            ]
            axis.plot(sizes, values, marker="o")
            axis.set_xscale("log", base=2)
            axis.set_xticks(sizes, [str(size) for size in sizes])
            axis.minorticks_off()
            axis.set_xlabel("output side (px)")
            axis.set_ylabel("peak MB")
        axis.set_title(title, loc="left", fontsize=10)
    label = "" if results.get("comparable") else f" ({results['mode']} run: not comparable)"
    figure.suptitle(f"cascade bench on {results['machine']['device_name']}{label}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(results: dict, merged: list[dict], plot: Path, report: Path | None) -> None:
    """The plot, the run's own markdown beside it, and the whole report when one is named."""
    draw(results, plot)
    plot.with_suffix(".md").write_text(section(results, plot.name) + "\n")
    if report is None:
        log.info("wrote %s and %s", plot, plot.with_suffix(".md"))
        return
    try:
        link = str(plot.resolve().relative_to(report.resolve().parent))
    except ValueError:  # the plot lives outside the report's folder: no link
        link = None
    text = document([results, *merged], link) + "\n"
    if report.is_file() and KEEP_MARKER in (earlier := report.read_text()):
        text += "\n" + earlier[earlier.index(KEEP_MARKER) :]
    report.write_text(text)
    log.info("wrote %s, %s and %s", plot, plot.with_suffix(".md"), report)
