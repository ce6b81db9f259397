"""Markdown rows from `cascade eval` reports, for model cards and BENCHMARKS.md.

python -m bench.eval_table runs/eval/sr256-default/eval.json [more eval.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = (
    "| run | method | fidelity | low band | PSNR | SSIM | PSNR (Y) | consistency | hf_ratio |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def rows(path: Path) -> list[str]:
    """bicubic, the model at the run's fidelity (and low band: reports from before it existed
    sampled as is) and at fidelity 1, as mean metrics."""
    report = json.loads(path.read_text())
    run = f"{report['sampler']} {report['steps']}, {len(report['images'])} photos"
    fidelities = {"bicubic": "–", "model": f"{report['fidelity']:g}", "fidelity1": "1"}
    bands = {"bicubic": "–", "model": report.get("low_band", "sample"), "fidelity1": "–"}
    lines = []
    for method, fidelity in fidelities.items():
        mean = report["mean"][method]
        lines.append(
            f"| {run} | {method} | {fidelity} | {bands[method]} | {mean['psnr']:.2f} | "
            f"{mean['ssim']:.3f} | "
            f"{mean['psnr_y']:.2f} | {mean['consistency']:.1e} | {mean['hf_ratio']:.3f} |"
        )
    return lines


def main() -> None:
    print(HEADER)
    for name in sys.argv[1:]:
        print("\n".join(rows(Path(name))))


if __name__ == "__main__":
    main()
