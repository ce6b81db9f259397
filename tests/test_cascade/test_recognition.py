"""The base's class recall: every training window and its mirror, the nearest by pixel MSE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cascade.datasets import ImageBank, to_float
from cascade.recognition import CropBank, class_recall


def bank() -> ImageBank:
    """Two classes: a 6x9 left-to-right ramp (class 3) and a 6x6 checkerboard (class 7)."""
    ramp = torch.linspace(0, 255, 9).round().to(torch.uint8).expand(3, 6, 9).clone()
    board = ((torch.arange(6)[:, None] + torch.arange(6)[None]) % 2 * 255).to(torch.uint8)
    return ImageBank([ramp, board.expand(3, 6, 6).clone()], [Path("a"), Path("b")], [3, 7])


def test_every_window_and_its_mirror() -> None:
    crops = CropBank.from_bank(bank(), size=4)
    # ramp 6x9: 3 x 6 windows; board 6x6: 3 x 3; each also mirrored
    assert crops.crops.shape == (2 * (18 + 9), 3, 4, 4)
    assert crops.labels.tolist() == [3] * 36 + [7] * 18
    ramp = to_float(bank().images[0])
    assert torch.equal(crops.crops[0], ramp[:, :4, :4])
    assert torch.equal(crops.crops[18], ramp[:, :4, :4].flip(-1))  # the mirrors follow


def test_nearest_finds_the_class_and_its_distance() -> None:
    crops = CropBank.from_bank(bank(), size=4)
    ramp_window = to_float(bank().images[0])[:, 1:5, 2:6]
    board_window = to_float(bank().images[1])[:, 2:6, 1:5]
    noisy = torch.stack([ramp_window, board_window]) + 0.1 * torch.randn(
        2, 3, 4, 4, generator=torch.Generator().manual_seed(0)
    )
    found, mse = crops.nearest(noisy, chunk=5)  # chunks smaller than the bank
    assert found.tolist() == [3, 7]
    exact, exact_mse = crops.nearest(torch.stack([ramp_window.flip(-1)]))
    assert exact.tolist() == [3] and float(exact_mse[0]) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < float(mse.max()) < 0.05


def test_class_recall_counts_hits_and_confusions() -> None:
    crops = CropBank.from_bank(bank(), size=4)
    ramp = to_float(bank().images[0])[:, :4, :4]
    board = to_float(bank().images[1])[:, :4, :4]
    # asked for 3 three times: two ramps and a board; asked for 7 once: a board
    images = torch.stack([ramp, ramp, board, board])
    result = class_recall([3, 3, 3, 7], images, crops)
    assert result["recall"] == pytest.approx(0.75)
    per_class = result["classes"]
    assert per_class[3]["recall"] == pytest.approx(2 / 3)
    assert per_class[3]["confused_with"] == {7: 1}
    assert per_class[7] == {"samples": 1, "recall": 1.0, "nearest_mse": 0.0, "confused_with": {}}


def test_shapes_must_match_and_labels_exist() -> None:
    crops = CropBank.from_bank(bank(), size=4)
    with pytest.raises(ValueError, match="the crops"):
        crops.nearest(torch.zeros(1, 3, 5, 5))
    unlabelled = ImageBank(bank().images, bank().paths)
    with pytest.raises(ValueError, match="no class labels"):
        CropBank.from_bank(unlabelled, size=4)
