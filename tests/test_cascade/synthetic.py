"""Synthetic test images shared by the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, count: int = 6, size: int | tuple[int, int] = 72) -> list[Path]:
    """Gradient RGB images with a per-image phase, saved as PNG (size: side or (h, w))."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = (size, size) if isinstance(size, int) else size
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        array = np.stack([(x * 3 + 20 * i) % 256, (y * 3) % 256, (x + y + 7 * i) % 256], -1)
        path = folder / f"img{i}.png"
        Image.fromarray(array.astype(np.uint8)).save(path)
        paths.append(path)
    return paths
