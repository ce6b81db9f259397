"""Model-card rows from `cascade eval` reports."""

from __future__ import annotations

import json
from pathlib import Path

from bench.eval_table import HEADER, rows

MEAN = {
    "psnr": 30.0,
    "ssim": 0.8,
    "psnr_y": 32.0,
    "ssim_y": 0.8,
    "consistency": 1e-4,
    "hf_ratio": 0.5,
}


def report(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "eval.json"
    body = {"sampler": "dpmpp_2m", "steps": 20, "fidelity": 0.5, "images": [{}, {}], **extra}
    body["mean"] = {method: MEAN for method in ("bicubic", "model", "fidelity1")}
    path.write_text(json.dumps(body))
    return path


def test_rows_name_the_fidelity_and_low_band_of_the_model_row(tmp_path: Path):
    columns = HEADER.splitlines()[0].count("|") - 1
    lines = rows(report(tmp_path, low_band="estimate"))
    assert [line.count("|") - 1 for line in lines] == [columns] * 3
    model = lines[1].split(" | ")
    assert model[1:4] == ["model", "0.5", "estimate"] and model[4] == "30.00"
    assert lines[0].split(" | ")[2:4] == ["–", "–"]  # bicubic has neither
    # A report from before the low band existed sampled as is.
    assert rows(report(tmp_path))[1].split(" | ")[3] == "sample"
