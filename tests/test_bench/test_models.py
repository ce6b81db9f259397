"""The bench's held-out photos: found in subfolders too, centre-cropped, small ones left out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.models import held_out_images


def test_held_out_images_come_from_subfolders_and_skip_the_small_ones(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for path, (h, w) in {
        tmp_path / "a.png": (40, 40),  # too small for 64 px crops
        tmp_path / "package" / "b.png": (80, 100),
        tmp_path / "package" / "c.jpg": (64, 64),
    }.items():
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (tmp_path / "notes.txt").write_text("not an image")
    crops = held_out_images(tmp_path, 64, 10)
    assert [tuple(crop.shape) for crop in crops] == [(1, 3, 64, 64), (1, 3, 64, 64)]
    assert len(held_out_images(tmp_path, 64, 2)) == 1  # the first two files by path: a, b
