"""Markdown rows from `cascade eval` reports, for model cards and BENCHMARKS.md.

python -m bench.eval_table runs/eval/sr256-default/eval.json [more eval.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = (
    "| run | input | method | fidelity | low band | PSNR | SSIM | PSNR (Y) | consistency | "
    "hf_ratio | flat_grain |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _cell(mean: dict[str, float], key: str, spec: str) -> str:
    """One metric, or a dash where the report predates it."""
    return format(mean[key], spec) if key in mean else "–"


def rows(path: Path) -> list[str]:
    """bicubic, Lanczos, the model at the run's fidelity (and low band: reports from before it
    existed sampled as is) and at fidelity 1, as mean metrics. Reports from before the
    degradation, Lanczos and flat_grain existed read as bicubic input, no Lanczos row, a dash."""
    report = json.loads(path.read_text())
    run = f"{report['sampler']} {report['steps']}, {len(report['images'])} photos"
    if report.get("preclean"):  # the model's JPEG inputs were cleaned first
        run += ", pre-clean"
    degradation = report.get("degradation", "bicubic")
    fidelities = {"bicubic": "–", "lanczos": "–", "model": f"{report['fidelity']:g}"}
    views = report.get("fidelity1_views", 1)  # reports before the self-ensemble: one view
    fidelities["fidelity1"] = "1" if views == 1 else f"1 (×{views})"
    bands = {"model": report.get("low_band", "sample")}
    lines = []
    for method, fidelity in fidelities.items():
        if method not in report["mean"]:
            continue
        mean = report["mean"][method]
        cells = [
            run,
            degradation,
            method,
            fidelity,
            bands.get(method, "–"),
            _cell(mean, "psnr", ".2f"),
            _cell(mean, "ssim", ".3f"),
            _cell(mean, "psnr_y", ".2f"),
            _cell(mean, "consistency", ".1e"),
            _cell(mean, "hf_ratio", ".3f"),
            _cell(mean, "flat_grain", ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    print(HEADER)
    for name in sys.argv[1:]:
        print("\n".join(rows(Path(name))))


if __name__ == "__main__":
    main()
