"""bench.card_grid: the model card's grid of clean and JPEG rows with a 3x zoom."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from bench.card_grid import COLUMNS, GAP, LABEL_HEIGHT, ZOOM, detail_window, main, zoom


def test_detail_window_finds_the_textured_patch() -> None:
    """A flat image with a noisy square: the window lands on the square."""
    image = torch.zeros(3, 96, 96)
    image[:, 50:80, 10:40] = torch.randn(1, 30, 30).clamp(-1, 1)
    # Windows step by a quarter of their side (8 px): (48, 8) is the one holding all of it.
    assert detail_window(image, 32) == (48, 8)


def test_zoom_enlarges_by_nearest_and_pads_white() -> None:
    image = torch.arange(16.0).reshape(1, 4, 4).expand(3, 4, 4) / 16
    out = zoom(image, 1, 2, 2, 7)
    assert out.shape == (3, 7, 7)
    assert torch.equal(out[:, :ZOOM, :ZOOM], image[:, 1:2, 2:3].expand(3, ZOOM, ZOOM))
    assert torch.equal(out[:, 3:6, 3:6], image[:, 2:3, 3:4].expand(3, 3, 3))
    assert (out[:, 6] == 1).all() and (out[:, :, 6] == 1).all()


def test_card_grid_end_to_end_on_the_tiny_upscaler(tmp_path: Path) -> None:
    """Two photos x two inputs: each block is a label, a full row and a zoom row of 5
    columns, blocks separated by a gap."""
    data = tmp_path / "photos"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        pixels = torch.randint(0, 256, (80, 90, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(data / f"{name}.png")
    out = tmp_path / "grid.png"
    main(
        [
            "preset:sr256-tiny",
            "--stage",
            "sr256",
            "--data",
            str(data),
            "--crop",
            "64",
            "--steps",
            "2",
            "--degradations",
            "bicubic",
            "jpeg50",
            "--out",
            str(out),
        ]
    )
    blocks = 4
    with Image.open(out) as grid:
        assert grid.size == (len(COLUMNS) * 64, blocks * (LABEL_HEIGHT + 2 * 64) + 3 * GAP)
