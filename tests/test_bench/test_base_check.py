"""bench.base_check: the base's flat-image count, class recall and sample grid."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from bench.base_check import check_run
from cascade.checkpoints import load
from cascade.datasets import ImageBank
from cascade.pipeline import Stage
from cascade.recognition import CropBank
from cascade.stages import StageRun


def test_base_check_scores_a_real_stage_and_draws_its_grid(tmp_path: Path) -> None:
    """bench.base_check end to end on the tiny random base: std counts, recall over the
    classes asked, and the grid a row per class."""
    stage = Stage("base64", load("preset:base64-tiny"))
    size = stage.model.spec.image_size
    images = [torch.full((3, size, size + 3), v, dtype=torch.uint8) for v in (0, 255)]
    crops = CropBank.from_bank(ImageBank(images, [Path("a"), Path("b")], [1, 2]), size)
    grid = tmp_path / "grid.png"
    result = check_run(stage, [1, 2], 3, StageRun("ddim", 2), crops, grid)
    assert result["images"] == 6 and result["steps"] == 2
    recall = result["class_recall"]
    assert recall["samples"] == 6
    assert set(recall["classes"]) == {1, 2}
    assert all(row["samples"] == 3 for row in recall["classes"].values())
    with Image.open(grid) as sheet:
        assert sheet.size == (3 * size, 2 * size)
