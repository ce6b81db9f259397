"""Evaluation: analytic metric values for stand-in models, the summary, and the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from cascade import cli
from cascade.checkpoints import load
from cascade.degradations import bicubic_degrade, upsample_condition
from cascade.evaluation import evaluate, evaluate_image, format_table, grid
from cascade.metrics import image_metrics
from cascade.pipeline import Stage
from cascade.stages import DEFAULT_FIDELITY, StageRun

SAMPLER = StageRun("ddim", 2)


def targets(count: int = 2, size: int = 32) -> list[Tensor]:
    """Smooth uint8-exact images whose values stay clear of 0 and 255 (room for offsets)."""
    y, x = np.mgrid[0:size, 0:size]
    images = []
    for i in range(count):
        array = np.stack([40 + (x * 4 + 9 * i) % 150, 50 + y * 3, 60 + (x + y) * 2], 0)
        images.append(torch.from_numpy(array).float() / 127.5 - 1)
    return images


class Oracle:
    """A stand-in upscaler returning image `seed` of its targets plus `offset` grey levels."""

    scale = 4

    def __init__(self, images: Sequence[Tensor], offset: int = 0) -> None:
        self.images, self.offset = images, offset

    def run(
        self,
        *,
        seeds: Sequence[int],
        low_res: Tensor,
        run: StageRun | None = None,
    ) -> Tensor:
        assert low_res.shape[-1] * self.scale == self.images[seeds[0]].shape[-1]
        return self.images[seeds[0]][None] + 2 * self.offset / 255


def test_perfect_model_scores_infinite_psnr_unit_ssim_zero_inconsistency() -> None:
    images = targets()
    result = evaluate(Oracle(images), images, ["a", "b"], seed=0, run=SAMPLER)
    for item in result["images"]:
        model = item["model"]
        assert model["psnr"] == math.inf and model["psnr_y"] == math.inf
        assert model["ssim"] == pytest.approx(1.0) and model["ssim_y"] == pytest.approx(1.0)
        assert model["consistency"] == pytest.approx(0.0, abs=1e-12)
        assert math.isfinite(item["bicubic"]["psnr"])
    assert result["mean"]["model"]["psnr"] == math.inf


@pytest.mark.parametrize("offset", [1, 3, 8])
def test_constant_offset_gives_the_analytic_psnr_and_consistency(offset: int) -> None:
    images = targets()
    result = evaluate(Oracle(images, offset), images, ["a", "b"], seed=0, run=SAMPLER)
    for item in result["images"]:
        model = item["model"]
        assert model["psnr"] == pytest.approx(20 * math.log10(255 / offset), abs=1e-9)
        # BT.601 Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255: an offset d moves Y by 219d/255.
        assert model["psnr_y"] == pytest.approx(20 * math.log10(255 / (219 * offset / 255)))
        # Bicubic downsampling keeps a constant offset; [0, 1] units: (d / 255)^2.
        assert model["consistency"] == pytest.approx((offset / 255) ** 2, rel=1e-4)
        assert model["ssim"] < 1


def test_bicubic_metrics_and_means() -> None:
    images = targets(3)
    result = evaluate(Oracle(images, 2), images, ["a", "b", "c"], seed=0, run=SAMPLER)
    for image, item in zip(images, result["images"], strict=True):
        low = bicubic_degrade(image[None], 4)
        expected = image_metrics(upsample_condition(low, (32, 32)), image[None], low)
        assert item["bicubic"] == pytest.approx(expected)
    for method in ("model", "fidelity1", "bicubic"):
        for key, value in result["mean"][method].items():
            rows = [item[method][key] for item in result["images"]]
            assert value == pytest.approx(sum(rows) / len(rows))
    assert "MEAN" in format_table(result)


def test_grid_rows_are_input_bicubic_model_fidelity1_truth() -> None:
    images = targets(2)
    results = [evaluate_image(Oracle(images), images[i], str(i), i, SAMPLER) for i in range(2)]
    picture = grid(results)
    assert picture.shape == (3, 64, 160)
    torch.testing.assert_close(picture[:, 32:, 128:], images[1])
    torch.testing.assert_close(picture[:, 32:, 64:96], results[1].output)
    torch.testing.assert_close(picture[:, :32, 32:64], results[0].bicubic)


def test_evaluate_a_real_stage_runs_and_keeps_the_size() -> None:
    stage = Stage("sr256", load("preset:sr256-tiny"), SAMPLER)
    images = targets(1)
    result = evaluate(stage, images, ["a"], seed=0, run=SAMPLER)
    metrics = {"psnr", "ssim", "psnr_y", "ssim_y", "consistency", "hf_ratio"}
    assert set(result["images"][0]["model"]) == metrics
    assert set(result["images"][0]["fidelity1"]) == metrics


def test_cli_eval_writes_json_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    y, x = np.mgrid[0:260, 0:270]
    for i in range(2):
        array = np.stack([(x + 30 * i) % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(array).save(data / f"{i}.png")
    Image.new("RGB", (100, 100)).save(data / "small.png")  # skipped with a warning
    out = tmp_path / "out"
    args = ["eval", "--stage", "sr256", "--data", str(data), "--steps", "2", "--out", str(out)]
    cli.main([*args, "--checkpoint", "preset:sr256-tiny", "--sampler", "ddim"])
    report = json.loads((out / "eval.json").read_text())
    assert report["stage"] == "sr256" and report["steps"] == 2 and report["sampler"] == "ddim"
    assert [Path(item["name"]).name for item in report["images"]] == ["0.png", "1.png"]
    assert set(report["mean"]) == {"model", "fidelity1", "bicubic"}
    assert report["fidelity"] == DEFAULT_FIDELITY["sr256"]  # the default for a residual model
    with Image.open(out / "grid.png") as picture:
        assert picture.size == (5 * 256, 2 * 256)
    assert "MEAN" in capsys.readouterr().out


def test_cli_eval_without_usable_images_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    with pytest.raises(SystemExit):
        cli.main(["eval", "--stage", "sr256", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert "no usable ground-truth images" in capsys.readouterr().err
