"""Model-card rows from `cascade eval` reports."""

from __future__ import annotations

import json
from pathlib import Path

from bench.eval_table import HEADER, rows

OLD_MEAN = {
    "psnr": 30.0,
    "ssim": 0.8,
    "psnr_y": 32.0,
    "ssim_y": 0.8,
    "consistency": 1e-4,
    "hf_ratio": 0.5,
}
METHODS = ("bicubic", "lanczos", "model", "fidelity1")


def report(tmp_path: Path, methods: tuple[str, ...] = METHODS, **extra: object) -> Path:
    path = tmp_path / "eval.json"
    body = {"sampler": "dpmpp_2m", "steps": 20, "fidelity": 0.5, "images": [{}, {}], **extra}
    mean = OLD_MEAN if "degradation" not in extra else {**OLD_MEAN, "flat_grain": 0.25}
    body["mean"] = {method: mean for method in methods}
    path.write_text(json.dumps(body))
    return path


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_rows_name_the_input_fidelity_and_low_band_and_the_grain(tmp_path: Path):
    columns = cells(HEADER.splitlines()[0])
    assert columns[1] == "input" and columns[-1] == "flat_grain"
    lines = rows(report(tmp_path, low_band="estimate", degradation="jpeg50"))
    assert [len(cells(line)) for line in lines] == [len(columns)] * 4
    table = [cells(line) for line in lines]
    assert [row[2] for row in table] == ["bicubic", "lanczos", "model", "fidelity1"]
    assert table[2][1:5] == ["jpeg50", "model", "0.5", "estimate"] and table[2][5] == "30.00"
    assert table[2][-1] == "0.250"
    assert table[0][3:5] == ["–", "–"] and table[1][3:5] == ["–", "–"]  # no fidelity, no band
    assert table[3][3:5] == ["1", "–"]


def test_rows_of_a_report_from_before_the_degradations(tmp_path: Path):
    # No degradation, no Lanczos, no flat_grain, no low band: clean bicubic input, three rows,
    # a dash for the grain, the sample as is.
    table = [cells(line) for line in rows(report(tmp_path, ("bicubic", "model", "fidelity1")))]
    assert [row[2] for row in table] == ["bicubic", "model", "fidelity1"]
    assert {row[1] for row in table} == {"bicubic"}
    assert {row[-1] for row in table} == {"–"}
    assert table[1][4] == "sample"


def test_a_self_ensembled_fidelity_one_says_how_many_views(tmp_path: Path):
    table = [
        cells(line) for line in rows(report(tmp_path, degradation="bicubic", fidelity1_views=8))
    ]
    assert table[3][2:4] == ["fidelity1", "1 (×8)"]
