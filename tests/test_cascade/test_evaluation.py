"""Evaluation: analytic metric values for stand-in models, degraded inputs, the summary, the
Lanczos baseline, and the CLI."""

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
from cascade.degradations import DEGRADATIONS, bicubic_degrade, upsample_condition
from cascade.evaluation import evaluate, evaluate_image, format_table, grid, lanczos_upsample
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
    """A stand-in upscaler returning image `seed` (modulo their number) of its targets plus
    `offset` grey levels."""

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
        image = self.images[seeds[0] % len(self.images)]
        assert low_res.shape[-1] * self.scale == image.shape[-1]
        return image[None] + 2 * self.offset / 255

    def prepare_input(self, low_res: Tensor, jpeg_quality: int | None) -> Tensor:
        return low_res


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
    for method in ("model", "fidelity1", "bicubic", "lanczos"):
        for key, value in result["mean"][method].items():
            rows = [item[method][key] for item in result["images"]]
            assert value == pytest.approx(sum(rows) / len(rows))
    assert "MEAN" in format_table(result)


def test_grid_rows_are_input_bicubic_lanczos_model_fidelity1_truth() -> None:
    images = targets(2)
    results = [evaluate_image(Oracle(images), images[i], str(i), i, SAMPLER) for i in range(2)]
    picture = grid(results)
    assert picture.shape == (3, 64, 192)
    torch.testing.assert_close(picture[:, 32:, 160:], images[1])
    torch.testing.assert_close(picture[:, 32:, 96:128], results[1].output)
    torch.testing.assert_close(picture[:, :32, 32:64], results[0].bicubic)
    torch.testing.assert_close(picture[:, :32, 64:96], results[0].outputs["lanczos"])


def test_evaluate_a_real_stage_runs_and_keeps_the_size() -> None:
    stage = Stage("sr256", load("preset:sr256-tiny"), SAMPLER)
    images = targets(1)
    result = evaluate(stage, images, ["a"], seed=0, run=SAMPLER)
    metrics = {"psnr", "ssim", "psnr_y", "ssim_y", "consistency", "hf_ratio", "flat_grain"}
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
    assert set(report["mean"]) == {"model", "fidelity1", "bicubic", "lanczos"}
    assert report["fidelity"] == DEFAULT_FIDELITY["sr256"]  # the default for a residual model
    assert report["degradation"] == "bicubic"
    with Image.open(out / "grid.png") as picture:
        assert picture.size == (6 * 256, 2 * 256)
    assert "MEAN" in capsys.readouterr().out


def test_cli_eval_without_usable_images_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    with pytest.raises(SystemExit):
        cli.main(["eval", "--stage", "sr256", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert "no usable ground-truth images" in capsys.readouterr().err


METHODS = {"bicubic", "lanczos", "model", "fidelity1"}
METRICS = {"psnr", "ssim", "psnr_y", "ssim_y", "consistency", "hf_ratio", "flat_grain"}


def test_lanczos_follows_a_ramp_and_keeps_a_constant() -> None:
    j = torch.arange(16.0)
    ramp = (0.05 * j - 0.4).expand(1, 3, 16, 16)
    up = lanczos_upsample(ramp, (64, 64))
    assert up.shape == (1, 3, 64, 64)
    # Output pixel i sits at (i + 0.5) / 4 - 0.5 in input pixels (centres aligned, as bicubic).
    x = (torch.arange(64.0) + 0.5) / 4 - 0.5
    torch.testing.assert_close(up[0, 0, 10, 12:52], 0.05 * x[12:52] - 0.4, atol=2e-3, rtol=0)
    flat = lanczos_upsample(torch.full((1, 3, 16, 16), 0.3), (64, 64))
    torch.testing.assert_close(flat, torch.full((1, 3, 64, 64), 0.3), atol=1e-5, rtol=0)


def test_degraded_inputs_are_scored_against_the_clean_truth() -> None:
    images = targets(2)
    clean = evaluate(Oracle(images), images, ["a", "b"], seed=0, run=SAMPLER)
    for name in ("jpeg50", "noise5", "realistic"):
        result = evaluate(Oracle(images), images, ["a", "b"], 0, SAMPLER, degradation=name)
        for item, reference in zip(result["images"], clean["images"], strict=True):
            # The oracle returns the truth itself: perfect against it, whatever its input.
            assert item["model"]["psnr"] == math.inf
            assert item["model"]["flat_grain"] == 1.0
            # The input is not the clean downsample: the truth no longer explains it exactly,
            # and the classical upscalers of it are further from the truth.
            assert item["model"]["consistency"] > 1e-6
            assert item["bicubic"]["psnr"] < reference["bicubic"]["psnr"]
            assert item["lanczos"]["psnr"] < reference["lanczos"]["psnr"]


def test_random_degradations_are_seeded_by_the_image_index() -> None:
    images = targets(3)
    first = evaluate(Oracle(images), images, "abc", 0, SAMPLER, degradation="realistic")
    other_seed = evaluate(Oracle(images), images, "abc", 3, SAMPLER, degradation="realistic")
    assert first == other_seed  # the sampler's seed does not change the inputs
    assert [item["degradation_seed"] for item in first["images"]] == [0, 1, 2]
    result = evaluate_image(Oracle(images), images[2], "c", 2, SAMPLER, "none", "realistic", 2)
    expected = DEGRADATIONS["realistic"](images[2][None], 4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(result.low_res, expected[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown degradation 'blur'; choose one of"):
        evaluate(Oracle(images), images, "abc", 0, SAMPLER, degradation="blur")


def test_cli_eval_degradation_writes_every_method_and_metric(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    y, x = np.mgrid[0:80, 0:90]
    for i in range(2):
        array = np.stack([(x * 3 + 30 * i) % 256, (y * 2) % 256, (x + y) % 256], -1)
        Image.fromarray(array.astype(np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "out"
    args = ["eval", "--stage", "sr256", "--data", str(data), "--out", str(out), "--crop", "64"]
    cli.main(
        [*args, "--checkpoint", "preset:sr256-tiny", "--steps", "2", "--degradation", "jpeg50"]
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["degradation"] == "jpeg50"
    assert set(report["mean"]) == METHODS
    for method in METHODS:
        assert set(report["mean"][method]) == METRICS
        for item in report["images"]:
            assert set(item[method]) == METRICS
    with Image.open(out / "grid.png") as picture:
        assert picture.size == (6 * 64, 2 * 64)
    with pytest.raises(SystemExit):  # argparse names the choices
        cli.main([*args, "--degradation", "blur"])


def test_cli_eval_runs_the_student_shipped_beside_the_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """As the service does, eval loads NAME.student.safetensors beside the checkpoint: the
    default run (or --sampler student) is the student's; other step counts fall back."""
    import dataclasses

    from cascade.checkpoints import model_from_preset, save_model
    from cascade.samplers import student_timesteps
    from cascade.stages import DEFAULT_RUNS, STUDENT_FALLBACK, STUDENT_STEPS

    teacher = model_from_preset("sr256-tiny")
    schedule = teacher.spec.schedule.build()
    restart = round((1 - DEFAULT_FIDELITY["sr256"]) * (len(schedule) - 1))
    few_step = tuple(student_timesteps(schedule, n, restart) for n in STUDENT_STEPS)
    weights = tmp_path / "sr256.safetensors"
    save_model(weights, teacher.spec, teacher.network.state_dict())
    student_spec = dataclasses.replace(teacher.spec, few_step=few_step)
    save_model(tmp_path / "sr256.student.safetensors", student_spec, teacher.network.state_dict())
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        data / "0.png"
    )
    base = ["eval", "--stage", "sr256", "--data", str(data), "--crop", "64"]
    base += ["--checkpoint", str(weights)]

    def report(*flags: str) -> dict:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        cli.main([*base, "--out", str(out), *flags])
        return json.loads((out / "eval.json").read_text())

    named = report("--sampler", "student", "--steps", "4")
    assert (named["sampler"], named["steps"]) == ("student", 4)
    assert named["fidelity1_views"] == 8  # fidelity 1 self-ensembles
    other = report("--steps", "2")  # a count the student was not distilled for
    assert other["sampler"] == (
        STUDENT_FALLBACK.sampler if DEFAULT_RUNS["sr256"].sampler == "student" else "dpmpp_2m"
    )
    default = report()
    assert (default["sampler"], default["steps"]) == (
        DEFAULT_RUNS["sr256"].sampler,
        DEFAULT_RUNS["sr256"].steps,
    )
    with pytest.raises(SystemExit):  # the CLI's error exit, its message on stderr
        report("--sampler", "student", "--steps", "3")
    assert "sampler student runs in 1 or 4 steps, not 3" in capsys.readouterr().err
